"""The whole pipeline on one machine: a supervisor for the stages and the until-caught-up sync."""
