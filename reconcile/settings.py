"""Settings of ``pacs-sync verify``: the source connection (the producer's), the target and the DLQ."""

from __future__ import annotations

from pydantic import Field, field_validator

from producer.settings import ProducerSettings
from sink.tables import ENTITIES


class ReconcileSettings(ProducerSettings):
    """The PACS source as the producer reads it, plus where the processors and the sink dead-letter.

    The target is ``PACS_TARGET_DSN`` (shared); the dead-letter topic is ``<clean prefix>.dlq``, the
    topic both the processors and the sink write their rejects to.
    """

    entities: tuple[str, ...] = ("properties", "owners", "valuations", "structures")
    """Entities verified when ``--entity`` is not given (PACS_ENTITIES='["properties","owners"]')."""
    verify_chunk_rows: int = Field(default=10_000, ge=10, le=200_000)
    """Rows read per keyset query, from the source and from the target."""
    verify_range_width: int = Field(default=1_000, ge=1)
    """Width of the key ranges whose row hashes are compared (keys k // width share a range)."""
    verify_dlq_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """Longest time to read the dead-letter topic to its end."""

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in value if e not in ENTITIES]
        if unknown:
            raise ValueError(f"unknown entities {unknown} (known: {', '.join(ENTITIES)})")
        return value
