"""Settings of the ``pacs-sync producer`` process."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field

from pacs_sync.settings import PacsSettings


class SnapshotMode(StrEnum):
    """When to take the initial snapshot (Debezium's names)."""

    INITIAL = "initial"
    """Snapshot once when there is no saved position, then stream."""
    NEVER = "never"
    """Never snapshot: stream everything the change tables still hold."""
    WHEN_NEEDED = "when_needed"
    """Snapshot when there is no saved position or it fell out of CDC retention."""


class ProducerSettings(PacsSettings):
    """The CDC source connection, the topics and the streaming loop."""

    db_driver: Literal["pg8000", "pyodbc"] = "pg8000"
    """DB-API driver: pyodbc for SQL Server, pg8000 for the CDC emulator (the local default)."""
    db_odbc_driver: str = "FreeTDS"
    """ODBC driver name for pyodbc (FreeTDS, or 'ODBC Driver 18 for SQL Server')."""
    db_encrypt: bool = True
    """TLS to SQL Server (on by default)."""
    db_trust_server_certificate: bool = False
    """Skip certificate validation (only for servers with self-signed certificates)."""
    db_login_timeout_s: int = Field(default=15, ge=1, le=300)
    """Seconds to wait for the PACS server to accept a login."""
    db_server_timezone: str = "UTC"
    """IANA time zone of the PACS server's clock (CDC commit times are server-local datetimes)."""
    column_mapping_file: Path | None = None
    """JSON file mapping event field names to this installation's PACS column names, per table."""

    topic_partitions: int = Field(default=3, ge=1, le=256)
    """Partitions of each change topic created by the producer."""
    snapshot_mode: SnapshotMode = SnapshotMode.INITIAL
    """initial | never | when_needed."""
    snapshot_chunk_rows: int = Field(default=5000, ge=10, le=100_000)
    """Rows per snapshot chunk (one Kafka transaction each; the resume point after a crash)."""
    max_transactions_per_poll: int = Field(default=500, ge=1, le=100_000)
    """At most this many source transactions per poll window."""
    page_rows: int = Field(default=5000, ge=2, le=100_000)
    """Rows fetched per capture instance per query (keyset paging)."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=300)
    """Longest wait between polls when idle (polling tightens while changes flow)."""
    min_poll_interval_s: float = Field(default=0.05, ge=0, le=10)
    """Shortest wait between polls while changes flow."""
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    """Publish a heartbeat this often while the source is idle."""
    cdc_retention_minutes: int = Field(default=4320, ge=1)
    """The SQL Server cleanup job's retention, for the retention-headroom gauge."""
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    """Prometheus /metrics port (0: off)."""
    poll_table_interval_s: float = Field(default=60.0, gt=0)
    """PACS_ENABLE_CDC=false: seconds between keyset scans of the tables (the high-latency mode)."""
