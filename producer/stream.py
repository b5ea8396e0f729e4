"""Pure streaming logic: per-table read segments, the k-way merge in log order, op folding.

A poll window ``[from, to]`` covers at most N source transactions. Each PACS table is read from one
capture instance per LSN range (two around a capture-instance switch): a :class:`Segment`. Segments
are paged independently; rows are released only up to the smallest "last fetched" position among
segments that still have unread rows, so the merged output is in global log order
``(commit LSN, seqval, operation)`` without holding a whole window in memory.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from pacs_sync.lsn import Lsn, SourcePosition
from producer.mapping import OP_UPDATE_AFTER, OP_UPDATE_BEFORE, TableMapping
from producer.source import ChangeRow

START = (b"", b"", 0)
"""A position before every change."""


@dataclass
class Segment:
    """One capture instance of one table, read over ``[low, high]``."""

    table: str
    capture_instance: str
    mapping: TableMapping
    low: Lsn
    high: Lsn
    cursor: tuple[bytes, bytes, int] = START
    floor: tuple[bytes, bytes, int] = START
    """Nothing at or below this position is read (the table was re-snapshotted there)."""
    buffer: deque[ChangeRow] = field(default_factory=deque)
    exhausted: bool = False

    def accept_page(self, page: list[ChangeRow], limit: int) -> None:
        """Buffer a fetched page; a full page ending in a before-image keeps that row for the next page.

        An update's before (3) and after (4) rows must land in the same page to be folded into one event.
        """
        full = len(page) >= limit
        if full and page[-1].operation == OP_UPDATE_BEFORE:
            page = page[:-1]
        if page:
            self.buffer.extend(page)
            self.cursor = page[-1].position
        self.exhausted = not full


def releasable(segments: list[Segment]) -> Iterator[tuple[Segment, ChangeRow]]:
    """Pop, in log order, every buffered row that no unfetched row can precede.

    Callers fetch a page for every non-exhausted segment with an empty buffer before calling this.
    """
    open_cursors = [s.cursor for s in segments if not s.exhausted]
    horizon = min(open_cursors) if open_cursors else None
    heap: list[tuple[tuple[bytes, bytes, int], int]] = []
    for index, segment in enumerate(segments):
        if segment.buffer:
            heapq.heappush(heap, (segment.buffer[0].position, index))
    while heap:
        position, index = heapq.heappop(heap)
        if horizon is not None and position > horizon:
            return
        segment = segments[index]
        row = segment.buffer.popleft()
        yield segment, row
        if segment.buffer:
            heapq.heappush(heap, (segment.buffer[0].position, index))


@dataclass(frozen=True)
class FoldedChange:
    """One event's worth of change: op c/u/d with its row images."""

    segment: Segment
    row: ChangeRow
    op: str
    before: tuple[object, ...] | None
    after: tuple[object, ...] | None


def fold_updates(rows: Iterator[tuple[Segment, ChangeRow]]) -> Iterator[FoldedChange]:
    """Turn change rows into events: 2 → c, 1 → d, 3+4 → u (before from 3, after from 4)."""
    before: dict[str, ChangeRow] = {}
    for segment, row in rows:
        if row.operation == OP_UPDATE_BEFORE:
            before[segment.capture_instance] = row
            continue
        if row.operation == OP_UPDATE_AFTER:
            prior = before.pop(segment.capture_instance, None)
            yield FoldedChange(segment, row, "u", None if prior is None else prior.values, row.values)
        elif row.operation == 2:
            yield FoldedChange(segment, row, "c", None, row.values)
        elif row.operation == 1:
            yield FoldedChange(segment, row, "d", row.values, None)


@dataclass(frozen=True)
class IdleCheck:
    """What a poll found: nothing to read (``idle``), and how far the position may then move up."""

    idle: bool
    advance_to: SourcePosition | None = None


def check_idle(
    position: SourcePosition | None, high_water: Lsn | None, newest_transaction: Lsn | None
) -> IdleCheck:
    """Decide whether a poll is idle, and the position it may advance to without skipping anything.

    ``high_water`` (``sys.fn_cdc_get_max_lsn()``) must have been read *before* ``newest_transaction``
    (the newest real transaction in ``cdc.lsn_time_mapping``). The capture job commits in LSN order,
    so every transaction at or below ``high_water`` was visible to the second read: if that read
    found nothing after the position, nothing lies in ``(position, high_water]`` and the position
    may follow the high-water mark (CDC cleanup counts idle dummy rows too, so a caught-up producer
    must follow it). A transaction captured after ``high_water`` was read lies above it and is left
    for the next poll. Read in the other order, such a transaction would be jumped over.
    """
    if newest_transaction is not None and (
        position is None or not position.transaction_complete or newest_transaction > position.commit_lsn
    ):
        return IdleCheck(idle=False)
    if position is not None and high_water is not None and high_water > position.commit_lsn:
        return IdleCheck(idle=True, advance_to=SourcePosition(high_water))
    return IdleCheck(idle=True)
