"""The event contract: Avro schemas (.avsc) and their single-object-encoding codec."""
