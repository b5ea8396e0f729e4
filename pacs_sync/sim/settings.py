"""Settings of the ``pacs-sync sim`` commands and the emulated SQL Server Agent."""

from __future__ import annotations

from pydantic import Field

from pacs_sync.stack.settings import StackSettings


class SimSettings(StackSettings):
    """The emulated PACS database lives on the local stack's PostgreSQL (database ``PACS_DB_NAME``)."""

    sim_capture_interval_s: float = Field(default=1.0, gt=0, le=3600)
    """Capture job polling interval (SQL Server Agent's pollinginterval, tuned down to 1 s)."""
    sim_retention_minutes: int = Field(default=4320, ge=1, le=52494800)
    """Cleanup job retention in minutes (SQL Server's default: 3 days)."""
    sim_cleanup_interval_s: float = Field(default=60.0, gt=0)
    """How often the emulated Agent runs the cleanup job (SQL Server: daily at 2 AM)."""
    sim_idle_heartbeat_s: float = Field(default=5.0, ge=0)
    """While idle, at most one dummy lsn_time_mapping row (tran_id 0x00) per this many seconds."""
