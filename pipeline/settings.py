"""Settings of ``pacs-sync run`` and ``pacs-sync sync``."""

from __future__ import annotations

from pydantic import Field

from pacs_sync.settings import PacsSettings


class PipelineSettings(PacsSettings):
    """How many workers to run, where the supervisor reports, and how it restarts crashed stages."""

    processor_workers: int = Field(default=1, ge=1, le=16)
    """Stream-processor workers (one consumer group; each takes a share of the partitions)."""
    supervisor_metrics_port: int = Field(default=9100, ge=0, le=65535)
    """Prometheus /metrics port of the supervisor (stage up, restarts; 0: off)."""
    producer_metrics_port: int = Field(default=9101, ge=0, le=65535)
    processor_metrics_port: int = Field(default=9102, ge=0, le=65535)
    """Metrics port of the first processor worker; worker i uses this + 10·i."""
    sink_metrics_port: int = Field(default=9103, ge=0, le=65535)
    restart_backoff_initial_s: float = Field(default=1.0, gt=0, le=60)
    """First wait before restarting a crashed stage; doubles per crash in a row."""
    restart_backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    healthy_after_s: float = Field(default=30.0, gt=0, le=3600)
    """A stage that ran this long is healthy again: its next crash restarts after the initial wait."""
    stop_grace_s: float = Field(default=30.0, gt=0, le=600)
    """Time each stage gets to finish its batch after SIGTERM before SIGKILL."""
