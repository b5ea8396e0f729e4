"""The producer's saved position: a versioned, tolerant record in a compacted Kafka topic.

It is written inside the same Kafka transaction as the events it covers, so the committed log and
the position can never disagree: after a crash the producer resumes exactly after the last
committed event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pacs_sync.lsn import Lsn, SourcePosition

OFFSET_VERSION = 1


@dataclass(frozen=True)
class SourceOffset:
    """Where the producer is: streaming position, and the snapshot's progress while one runs."""

    position: SourcePosition | None = None
    """The last published change (None: nothing streamed yet)."""
    snapshot_completed: bool = False
    snapshot_lsn: Lsn | None = None
    """The LSN the snapshot was taken at; streaming starts strictly after it."""
    snapshot_table: str | None = None
    """The table being snapshotted (None before the first chunk or after the last)."""
    snapshot_last_key: Any = None
    """The last key published from ``snapshot_table`` (the resume point)."""
    table_floors: dict[str, Lsn] = field(default_factory=dict)
    """Per table: changes at or below this LSN are skipped (a table re-snapshotted at that LSN)."""

    def advanced(self, position: SourcePosition) -> SourceOffset:
        """The same offset at a later streaming position."""
        return replace(self, position=position)

    def to_record(self, now: datetime | None = None) -> dict[str, Any]:
        """The Avro ``SourceOffset`` record."""
        pos = self.position
        snapshot_key = {
            "table": self.snapshot_table,
            "last_key": self.snapshot_last_key,
            "floors": {t: str(lsn) for t, lsn in self.table_floors.items()},
        }
        return {
            "version": OFFSET_VERSION,
            "commit_lsn": None if pos is None else str(pos.commit_lsn),
            "change_lsn": None if pos is None or pos.change_lsn is None else str(pos.change_lsn),
            "event_serial_no": None if pos is None else pos.operation,
            "snapshot_completed": self.snapshot_completed,
            "snapshot_lsn": None if self.snapshot_lsn is None else str(self.snapshot_lsn),
            "snapshot_table": self.snapshot_table,
            "snapshot_last_key": json.dumps(snapshot_key, default=str),
            "ts_ms": int((now or datetime.now(tz=UTC)).timestamp() * 1000),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SourceOffset:
        """Read any version's record; missing keys take their defaults."""
        commit = record.get("commit_lsn")
        change = record.get("change_lsn")
        position = None
        if commit:
            position = SourcePosition(
                Lsn.parse(commit), Lsn.parse(change) if change else None, record.get("event_serial_no")
            )
        extra: dict[str, Any] = {}
        raw = record.get("snapshot_last_key")
        if raw:
            try:
                loaded = json.loads(raw)
            except ValueError:
                loaded = {}
            # Older writers stored the bare last key; keep it as such.
            extra = loaded if isinstance(loaded, dict) else {"last_key": loaded}
        snapshot_lsn = record.get("snapshot_lsn")
        return cls(
            position=position,
            snapshot_completed=bool(record.get("snapshot_completed", False)),
            snapshot_lsn=Lsn.parse(snapshot_lsn) if snapshot_lsn else None,
            snapshot_table=record.get("snapshot_table") or extra.get("table"),
            snapshot_last_key=extra.get("last_key"),
            table_floors={t: Lsn.parse(v) for t, v in (extra.get("floors") or {}).items()},
        )
