"""Settings of the ``pacs-sync processor`` worker (Faust)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pacs_sync.settings import PacsSettings


class ProcessorSettings(PacsSettings):
    """Where the change events come from and where clean events and rejects go."""

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
    processor_commit_interval_s: float = Field(default=0.5, gt=0, le=60)
    """How often the worker commits the input offsets it has processed (Faust's
    ``broker_commit_interval``, whose own default is 2.8 s). The committed offsets are what a restarted
    worker resumes from and what ``sync --until-caught-up`` waits for: a worker killed re-processes
    what it handled since the last commit (byte-identical outputs, which the sink ignores)."""
    processor_commit_every: int = Field(default=10_000, ge=1, le=1_000_000)
    """Also commit after this many processed events, between two intervals (Faust's
    ``broker_commit_every``)."""
    processor_session_timeout_s: float = Field(default=60.0, ge=6, le=90)
    """How long the group waits for a worker that stopped heart-beating (killed, frozen) before its
    partitions go to another (Faust's ``broker_session_timeout``; the broker's minimum is 6 s and
    Faust's request timeout, 90 s, the maximum). Lower means faster recovery after a kill, but a
    worker blocked longer than this (a long flush) loses its partitions."""
