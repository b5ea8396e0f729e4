"""The producer stage: SQL Server CDC (or the emulator) -> Avro change events on Kafka."""
