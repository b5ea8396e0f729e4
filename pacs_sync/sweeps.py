"""Re-snapshot sweeps: how a re-snapshot removes, from the target, rows the source no longer has.

A re-snapshot (``PACS_SNAPSHOT_MODE=when_needed`` after CDC retention loss, or an operator's
request) republishes every row a table has, but the changes it replaces may have included deletes
that nobody will ever publish. The producer cannot know which keys the target holds; the sink can.
So the producer describes, along with each snapshot chunk and in the same Kafka transaction, what
the source held over that chunk's key range: a **sweep** = ``(entity, key range (after, through],
the keys present, the snapshot position)``. The ranges of one re-snapshot tile the whole key space
(the first starts at -inf, the last ends at +inf), so together they say "these keys, and no others,
existed when the table was read".

The sink applies a sweep as delete markers, under the usual position guard: every row of the
entity in the range, not among the keys, not yet deleted and **older than the snapshot position**
becomes a delete marker at that position (the same marker a CDC delete leaves). Why this is safe
in any delivery order (sweeps travel on their own topic, not through the processors):

* a sweep never touches a key the source had when its chunk was read, so it cannot remove a row
  whose snapshot record is still in flight on another partition;
* a row changed after the snapshot LSN carries a later position and is left alone; a CDC delete
  of a swept key arrives later in position and is a no-op on the marker; an older change arriving
  after the marker loses against it (guard), so a swept row is never resurrected;
* applying a sweep twice changes nothing (the rows it marked are no longer older than it).

What it cannot do: a row the target does not hold yet when the sweep is applied (an insert made
before the lost window, still queued in the processors or the sink when the re-snapshot runs, and
deleted inside the window) is not marked, and lands afterwards. That needs the downstream stages to
be behind the producer by more than the CDC retention; ``verify`` reports such a row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from pacs_sync.lsn import Lsn, position_bytes

SWEEP_VERSION = 1
MAX_SWEEP_KEYS = 10_000
"""Keys per sweep record (~110 kB of JSON at most): a larger chunk is described by several sweeps."""


def sweeps_topic(topic_prefix: str, db_name: str) -> str:
    """The single-partition topic of a source database's re-snapshot sweeps."""
    return f"{topic_prefix}.{db_name}._snapshot_sweeps"


class InvalidSweepError(ValueError):
    """A sweep record that cannot be read (it is skipped, never half-applied)."""


@dataclass(frozen=True)
class Sweep:
    """The keys one re-snapshot found in ``(after_key, through_key]`` of an entity (None: unbounded)."""

    entity: str
    table: str
    commit_lsn: Lsn
    """The re-snapshot's LSN: its rows, and the markers this sweep writes, sit at this position."""
    after_key: int | None
    through_key: int | None
    keys: tuple[int, ...]

    @property
    def position(self) -> bytes:
        """The snapshot rows' ``source_position`` (after every change of the LSN)."""
        return position_bytes(str(self.commit_lsn), None, 0)

    def to_json(self) -> bytes:
        """The record's value."""
        return json.dumps(
            {
                "version": SWEEP_VERSION,
                "entity": self.entity,
                "table": self.table,
                "commit_lsn": str(self.commit_lsn),
                "after_key": self.after_key,
                "through_key": self.through_key,
                "keys": list(self.keys),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Sweep:
        """Parse and check a record (InvalidSweepError if it is not a sweep this version can apply)."""
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or record.get("version") != SWEEP_VERSION:
                raise InvalidSweepError(f"not a version {SWEEP_VERSION} sweep")
            keys = record["keys"]
            if not isinstance(keys, list):
                raise InvalidSweepError("keys is not a list")
            return cls(
                entity=_text(record["entity"]),
                table=_text(record["table"]),
                commit_lsn=Lsn.parse(_text(record["commit_lsn"])),
                after_key=_key_or_none(record["after_key"]),
                through_key=_key_or_none(record["through_key"]),
                keys=tuple(_key(k) for k in keys),
            )
        except InvalidSweepError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSweepError(f"unreadable sweep: {exc}") from exc


def chunk_sweeps(
    entity: str,
    table: str,
    commit_lsn: Lsn,
    after_key: int | None,
    keys: Sequence[int],
    *,
    last: bool,
    max_keys: int = MAX_SWEEP_KEYS,
) -> list[Sweep]:
    """The sweeps of one snapshot chunk: its keys (ascending) after ``after_key``.

    A chunk covers ``(after_key, its last key]``, and the last chunk of the table everything after
    ``after_key``. More than ``max_keys`` keys are split into consecutive sub-ranges.
    """
    if any(b <= a for a, b in pairwise(keys)) or (keys and after_key is not None and keys[0] <= after_key):
        raise ValueError("a chunk's keys must be ascending and after the previous chunk's")
    sweeps = []
    start = after_key
    parts = [tuple(keys[i : i + max_keys]) for i in range(0, len(keys), max_keys)] or [()]
    for index, part in enumerate(parts):
        final_part = index == len(parts) - 1
        through = None if final_part and last else (part[-1] if part else start)
        sweeps.append(Sweep(entity, table, commit_lsn, start, through, part))
        start = through
    return sweeps


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidSweepError(f"not a name: {value!r}")
    return value


def _key(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSweepError(f"not an integer key: {value!r}")
    return value


def _key_or_none(value: Any) -> int | None:
    return None if value is None else _key(value)
