"""The stream-processing stage: Faust agents that validate and transform change events."""
