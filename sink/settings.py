"""Settings of the ``pacs-sync sink`` and ``pacs-sync resync`` processes."""

from __future__ import annotations

import socket

from pydantic import Field

from pacs_sync.settings import PacsSettings


class SinkSettings(PacsSettings):
    """Where clean records come from, how they are batched, and where rejects go."""

    entities: tuple[str, ...] = ("properties", "owners", "valuations", "structures")
    """Entities this sink writes (PACS_ENTITIES='["properties","owners"]')."""
    sink_instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-sink", min_length=1)
    """Kafka static group membership id: a restarted sink takes its partitions back at once instead of
    waiting for the session timeout. Give each sink of a group its own (two on one host need two)."""
    sink_batch_size: int | None = Field(default=None, ge=1, le=200_000)
    """Most records per PostgreSQL transaction (default: PACS_SYNC_BATCH_SIZE)."""
    sink_batch_max_wait_s: float = Field(default=0.2, gt=0, le=60)
    """Longest wait for a batch to fill before writing what has arrived."""
    sink_pool_size: int = Field(default=2, ge=1, le=32)
    """PostgreSQL connections of the sink (one writes at a time; one serves metrics and checks)."""
    marker_retention_days: int = Field(default=0, ge=0, le=3650)
    """Purge delete markers older than this many days (0: keep them; set it to the topics' retention)."""
    sink_stall_s: float = Field(default=60.0, ge=1, le=3600)
    """When the consumer has received nothing for this long although the broker holds records past
    its position on an assigned clean-topic partition, it is rebuilt (a rejoin, positioned again from
    PostgreSQL): the watchdog for a consumer that stopped fetching, e.g. after a broker restart."""
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    """Prometheus /metrics port of the sink (0: off)."""

    @property
    def batch_size(self) -> int:
        """Records per transaction."""
        return self.sink_batch_size or self.sync_batch_size
