"""The SQL Server stand-in: CDC emulator, PACS data generator and change workload."""
