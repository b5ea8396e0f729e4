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

from pacs_sync.lsn import Lsn
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
