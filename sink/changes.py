"""Pure batch logic: clean records to table rows, and reduction of a batch by key.

A batch may hold several records of one key (a row updated twice, a replay overlapping live data).
PostgreSQL's ``INSERT … ON CONFLICT`` may touch a row once per statement, so each batch is reduced
to the newest record per key first; the position guard in SQL then decides against the stored row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from operator import itemgetter
from typing import Any

from pacs_sync.errors import ErrorCode
from pacs_sync.lsn import position_bytes
from sink.tables import EntitySpec


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A decoded clean record and where it came from (for dead-lettering a rejected row)."""

    row: tuple[Any, ...]
    """Values in ``spec.table_columns`` order, ``source_position`` last."""
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    @property
    def position(self) -> bytes:
        """The row's ``source_position``."""
        return self.row[-1]  # type: ignore[no-any-return]

    # Sync columns sit at the end of the row: commit LSN, change LSN, serial, ts, deleted, position.
    @property
    def commit_lsn(self) -> str:
        """Commit LSN of the source change."""
        return self.row[-6]  # type: ignore[no-any-return]

    @property
    def change_lsn(self) -> str | None:
        """LSN of the source change (None for a snapshot read)."""
        return self.row[-5]  # type: ignore[no-any-return]

    @property
    def source_ts(self) -> datetime | None:
        """Commit time of the source change (None for a snapshot read)."""
        return self.row[-3]  # type: ignore[no-any-return]

    @property
    def deleted(self) -> bool:
        """A delete marker."""
        return bool(self.row[-2])

    @property
    def key_value(self) -> Any:
        """The primary key."""
        return self.row[0]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A clean record the sink cannot write: refused by PostgreSQL (PACS-011) or undecodable (PACS-012)."""

    code: ErrorCode
    rule_id: str
    """``PG-<SQLSTATE>`` for a database refusal, ``AVRO-DECODE`` for bytes the codec cannot read."""
    message: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    commit_lsn: str | None = None
    change_lsn: str | None = None

    @classmethod
    def rejected(cls, record: ConsumedRecord, sqlstate: str | None, message: str) -> DeadLetter:
        """The dead letter of a row PostgreSQL refused."""
        return cls(
            ErrorCode.TARGET_WRITE_REJECTED,
            f"PG-{sqlstate or 'ERROR'}",
            message,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            record.commit_lsn,
            record.change_lsn,
        )


@cache
def _record_values(spec: EntitySpec) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """Reads ``spec.record_columns`` out of a record as a tuple in one C call (KeyError if one is missing).

    Every spec has at least six record columns (key and sync columns), so the getter returns a tuple.
    """
    return itemgetter(*spec.record_columns)


def to_row(spec: EntitySpec, record: Mapping[str, Any]) -> tuple[Any, ...]:
    """A decoded clean record as a table row (``spec.table_columns`` order)."""
    values = _record_values(spec)(record)
    position = position_bytes(
        record["source_commit_lsn"], record["source_change_lsn"], record["source_serial"]
    )
    return (*values, position)


def reduce_by_key(records: Iterable[ConsumedRecord]) -> list[ConsumedRecord]:
    """The newest record (highest source position) of each key, in first-seen key order.

    Ties keep the later record: equal positions mean the same change delivered twice.
    """
    newest: dict[Any, ConsumedRecord] = {}
    for record in records:
        seen = newest.get(record.key_value)
        if seen is None or seen.position <= record.position:
            newest[record.key_value] = record
    return list(newest.values())
