"""Settings of the ``pacs-sync processor`` worker (Faust)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pacs_sync.settings import PacsSettings


class ProcessorSettings(PacsSettings):
    """Where the change events come from and where clean events and rejects go."""

    db_schema: str = "dbo"
    """Schema of the PACS tables (part of the change topic names)."""
    output_partitions: int = Field(default=3, ge=1, le=256)
    """Partitions of the clean topics (created, log-compacted, if missing)."""
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """at_least_once (the default, chosen by measurement; see :mod:`stream_processors.app`):
    re-emitted records are byte-identical with the same source position (the sink's position guard
    makes them harmless). exactly_once: Faust's transactional mode (read_committed input, offsets
    committed in Kafka transactions, outputs through Faust's own producer); measured 37-47 % slower,
    and in faust-streaming 0.15.3 the outputs are *not* inside those transactions and re-keyed owner
    events can be lost: for measurement only."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The worker's event loop: uvloop (faster, measured +14 %) or the standard asyncio loop. When
    uvloop cannot be imported the worker warns and falls back to asyncio."""
    batch_max_events: int = Field(default=1000, ge=1, le=100_000)
    """Events handed to one batch (stream.take)."""
    batch_within_s: float = Field(default=0.05, gt=0, le=10)
    """Longest wait to fill a batch."""
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    """Prometheus /metrics port of this worker (0: off)."""
    validation_as_of: str | None = None
    """ISO date that decides which owners are current (default: today)."""
