"""Pure reconciliation logic: canonical row hashes, key-range digests, the diff of two key-ordered streams.

Both sides are reduced to the same thing before they meet: a row is the tuple of its *canonical
tokens* – one text per sink column, in sink column order (key first) – and its hash is the hash of
those tokens. The source side gets there through the processors' own
:func:`~stream_processors.validation.transform_row`; the target side is read as stored. Canonical
text hides only representation, never value: ``Decimal("1.50")`` and ``Decimal("1.5")`` are both
``1.5`` (a numeric column's scale is the column's business), dates are ISO, timestamps ISO in UTC,
NULL is ``\\N`` (a text ``\\N`` is escaped, so it cannot pass for NULL).

:func:`compare_rows` merges a source and a target stream, both in ascending key order, in one pass
and constant memory (apart from what it reports): each key is missing (source only), extra (target
only), different (hashes differ; the differing columns are named) or, when the source row does not
fit its row schema, untransformable. It also folds the row hashes into one digest per key range
(``key // range_width``) per side, so a report says which ranges differ.

:func:`classify` then splits the discrepancies into the unexplained ones and those the dead-letter
topic explains (the processors or the sink rejected that key), keeping the first N of each list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Generic, NamedTuple, TypeVar

NULL_TEXT = "\\N"
"""Canonical text of NULL / None."""
SEPARATOR = "\x1f"
"""Between the tokens of a row when it is hashed (escaped inside text values)."""
_DIGEST_SIZE = 16
UNTRANSFORMABLE_DIGEST = hashlib.blake2b(b"\x00untransformable", digest_size=_DIGEST_SIZE).digest()
"""Stands in for the hash of a source row :func:`transform_row` refuses (it never equals a real row's)."""

_T = TypeVar("_T")


# -- Canonical text and row hashes -------------------------------------------------------------------


def _text(value: str) -> str:
    if "\\" in value or SEPARATOR in value:
        return value.replace("\\", "\\\\").replace(SEPARATOR, "\\x1f")
    return value


def _decimal(value: Decimal) -> str:
    text = str(value)
    if "E" in text or "N" in text or "n" in text:  # exponent notation, NaN, sNaN, Infinity
        if not value.is_finite():
            return text
        text = format(value.normalize(), "f")
    elif "." in text:
        text = text.rstrip("0").rstrip(".")  # the scale is the column's business, not the value's
    return "0" if text in ("0", "-0") else text  # no negative zero


def _datetime(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat()


def _bytes(value: bytes | bytearray | memoryview) -> str:
    return "\\x" + bytes(value).hex()


def _bool(value: bool) -> str:
    return "true" if value else "false"


_CANONICAL: dict[type, Callable[[Any], str]] = {
    str: _text,
    int: int.__str__,
    bool: _bool,
    Decimal: _decimal,
    date: date.isoformat,
    datetime: _datetime,
    float: float.__repr__,
    bytes: _bytes,
    bytearray: _bytes,
    memoryview: _bytes,
    type(None): lambda _value: NULL_TEXT,
}


def canonical(value: object) -> str:
    """The canonical text of one column value (identical for equal values, whichever driver read them).

    ``None`` → ``\\N``; text as is (``\\`` and the separator escaped); ints in decimal; booleans
    ``true``/``false``; decimals normalised (``1.50`` → ``1.5``, ``100.00`` → ``100``, zero → ``0``);
    dates ISO; aware timestamps ISO in UTC; bytes as ``\\x`` + hex; anything else ``str()``.
    """
    convert = _CANONICAL.get(type(value))
    if convert is not None:
        return convert(value)
    # Subclasses (an IntEnum, a StrEnum, a date subclass…): the nearest known base decides.
    for kind in (bool, int, str, Decimal, datetime, date, float):
        if isinstance(value, kind):
            return _CANONICAL[kind](value)
    return str(value)


def canonical_row(values: Iterable[object]) -> tuple[str, ...]:
    """The canonical tokens of a row's values (already in sink column order)."""
    get = _CANONICAL.get
    return tuple([get(type(value), canonical)(value) for value in values])


def row_digest(tokens: Sequence[str]) -> bytes:
    """The 16-byte hash of a row's canonical tokens."""
    return hashlib.blake2b(SEPARATOR.join(tokens).encode(), digest_size=_DIGEST_SIZE).digest()


# -- Streams -----------------------------------------------------------------------------------------


class SourceRow(NamedTuple):
    """One source row after the processors' transformation, or why it could not be transformed."""

    key: int
    tokens: tuple[str, ...] | None
    """Canonical tokens in sink column order; None when ``transform_row`` refused the row."""
    problem: str | None = None
    """Why the row is untransformable (the schema violations)."""


class TargetRow(NamedTuple):
    """One live target row, as canonical tokens in sink column order."""

    key: int
    tokens: tuple[str, ...]


class UnorderedStreamError(ValueError):
    """A stream handed to :func:`compare_rows` was not in strictly ascending key order."""


class Kind(StrEnum):
    """What is wrong with one key."""

    MISSING = "missing"
    """In the source, not in the target."""
    EXTRA = "extra"
    """In the target, not in the source."""
    DIFFERENT = "different"
    """On both sides with different values."""
    UNTRANSFORMABLE = "untransformable"
    """In the source, but the row does not fit its row schema: the processors must have dead-lettered it."""


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One key on which source and target disagree."""

    key: int
    kind: Kind
    columns: tuple[str, ...] = ()
    """``different``: the columns whose values differ, in sink column order."""
    source: tuple[str, ...] = ()
    """``different``: the canonical source values of those columns."""
    target: tuple[str, ...] = ()
    """``different``: the canonical target values of those columns."""
    detail: str | None = None
    """``untransformable``: why ``transform_row`` refused the row."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {"key": self.key}
        if self.kind is Kind.DIFFERENT:
            out["columns"] = {
                column: {"source": _shown(s), "target": _shown(t)}
                for column, s, t in zip(self.columns, self.source, self.target, strict=True)
            }
        if self.detail is not None:
            out["detail"] = self.detail
        return out


def _shown(token: str) -> str | None:
    return None if token == NULL_TEXT else token


class RangeDigest(NamedTuple):
    """One side's rows in one key range: how many, and the hash of their row hashes in key order."""

    rows: int
    digest: str


class _RangeTally:
    """Row hashes folded per key range, for one side."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._ranges: dict[int, tuple[list[int], Any]] = {}

    def add(self, key: int, digest: bytes) -> None:
        bucket = key // self.width
        entry = self._ranges.get(bucket)
        if entry is None:
            entry = self._ranges[bucket] = ([0], hashlib.blake2b(digest_size=_DIGEST_SIZE))
        entry[0][0] += 1
        entry[1].update(digest)

    def digests(self) -> dict[int, RangeDigest]:
        return {
            bucket: RangeDigest(count[0], hasher.hexdigest())
            for bucket, (count, hasher) in sorted(self._ranges.items())
        }


@dataclass(frozen=True, slots=True)
class RangeDifference:
    """A key range whose digests differ: ``[low, high]`` and each side's row count in it."""

    low: int
    high: int
    source_count: int
    target_count: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "low": self.low,
            "high": self.high,
            "source_count": self.source_count,
            "target_count": self.target_count,
        }


@dataclass
class Comparison:
    """Everything one merge found, before the dead-letter topic is consulted."""

    columns: tuple[str, ...]
    source_count: int = 0
    target_count: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    """In ascending key order."""
    range_width: int = 1
    source_ranges: dict[int, RangeDigest] = field(default_factory=dict)
    target_ranges: dict[int, RangeDigest] = field(default_factory=dict)

    def differing_ranges(self) -> list[RangeDifference]:
        """Key ranges whose row count or digest differs between the sides, in key order."""
        out = []
        empty = RangeDigest(0, "")
        for bucket in sorted(self.source_ranges.keys() | self.target_ranges.keys()):
            source = self.source_ranges.get(bucket, empty)
            target = self.target_ranges.get(bucket, empty)
            if source != target:
                low = bucket * self.range_width
                out.append(RangeDifference(low, low + self.range_width - 1, source.rows, target.rows))
        return out

    @property
    def ranges_compared(self) -> int:
        """Key ranges holding a row on either side."""
        return len(self.source_ranges.keys() | self.target_ranges.keys())


_RowT = TypeVar("_RowT", SourceRow, TargetRow)


def _ordered(rows: Iterable[_RowT], side: str) -> Iterator[_RowT]:
    previous: int | None = None
    for row in rows:
        if previous is not None and row.key <= previous:
            raise UnorderedStreamError(
                f"the {side} rows are not in strictly ascending key order: {row.key} after {previous}"
            )
        previous = row.key
        yield row


def _different(columns: Sequence[str], source: Sequence[str], target: Sequence[str], key: int) -> Discrepancy:
    at = [i for i, (s, t) in enumerate(zip(source, target, strict=True)) if s != t]
    return Discrepancy(
        key,
        Kind.DIFFERENT,
        tuple(columns[i] for i in at),
        tuple(source[i] for i in at),
        tuple(target[i] for i in at),
    )


def compare_rows(
    columns: Sequence[str],
    source: Iterable[SourceRow],
    target: Iterable[TargetRow],
    *,
    range_width: int = 1000,
) -> Comparison:
    """Merge two key-ordered streams of one entity and list every key on which they disagree.

    Args:
        columns: the sink columns the tokens stand for (key first), to name differing columns.
        source: source rows in strictly ascending key order.
        target: target rows in strictly ascending key order.
        range_width: keys ``k`` with equal ``k // range_width`` share a key range.

    Returns:
        Counts, the discrepancies in key order, and per-range digests of both sides.

    Raises:
        UnorderedStreamError: a stream is not in strictly ascending key order (comparing it would
            report rows as missing and extra that are neither).
        ValueError: a row does not have one token per column.
    """
    if range_width < 1:
        raise ValueError("range_width must be at least 1")
    width = len(columns)
    result = Comparison(tuple(columns), range_width=range_width)
    found = result.discrepancies
    source_tally, target_tally = _RangeTally(range_width), _RangeTally(range_width)
    source_rows, target_rows = _ordered(source, "source"), _ordered(target, "target")
    s = next(source_rows, None)
    t = next(target_rows, None)
    source_count = target_count = 0

    def source_digest(row: SourceRow) -> bytes | None:
        if row.tokens is None:
            source_tally.add(row.key, UNTRANSFORMABLE_DIGEST)
            return None
        if len(row.tokens) != width:
            raise ValueError(f"source row {row.key} has {len(row.tokens)} values for {width} columns")
        digest = row_digest(row.tokens)
        source_tally.add(row.key, digest)
        return digest

    def target_digest(row: TargetRow) -> bytes:
        if len(row.tokens) != width:
            raise ValueError(f"target row {row.key} has {len(row.tokens)} values for {width} columns")
        digest = row_digest(row.tokens)
        target_tally.add(row.key, digest)
        return digest

    while s is not None or t is not None:
        if s is not None and (t is None or s.key < t.key):
            source_count += 1
            if source_digest(s) is None:
                found.append(Discrepancy(s.key, Kind.UNTRANSFORMABLE, detail=s.problem))
            else:
                found.append(Discrepancy(s.key, Kind.MISSING))
            s = next(source_rows, None)
        elif t is not None and (s is None or t.key < s.key):
            target_count += 1
            target_digest(t)
            found.append(Discrepancy(t.key, Kind.EXTRA))
            t = next(target_rows, None)
        elif s is not None and t is not None:  # the same key on both sides
            source_count += 1
            target_count += 1
            ours, theirs = source_digest(s), target_digest(t)
            if ours is None or s.tokens is None:
                found.append(Discrepancy(s.key, Kind.UNTRANSFORMABLE, detail=s.problem))
            elif ours != theirs:
                found.append(_different(columns, s.tokens, t.tokens, s.key))
            s = next(source_rows, None)
            t = next(target_rows, None)
    result.source_count, result.target_count = source_count, target_count
    result.source_ranges, result.target_ranges = source_tally.digests(), target_tally.digests()
    return result


# -- Classification ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing(Generic[_T]):
    """How many there are, and the first few (in key order)."""

    count: int = 0
    first: tuple[_T, ...] = ()


def _listing(items: Sequence[_T], limit: int) -> Listing[_T]:
    return Listing(len(items), tuple(items[:limit]))


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A discrepancy the dead-letter topic explains."""

    key: int
    kind: Kind
    reason: str
    """The dead letter's error code and rule ids, e.g. ``PACS-004 PROP-ZIP``."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"key": self.key, "kind": str(self.kind), "reason": self.reason}


@dataclass(frozen=True)
class EntityReport:
    """The verdict on one entity."""

    entity: str
    source_count: int
    target_count: int
    missing: Listing[int]
    extra: Listing[int]
    different: Listing[Discrepancy]
    untransformable: Listing[Discrepancy]
    """Source rows ``transform_row`` refuses that the dead-letter topic does not explain."""
    dead_lettered: Listing[DeadLettered]
    """Discrepancies of keys the processors or the sink dead-lettered (explained, allowed)."""
    range_width: int
    ranges_compared: int
    differing_ranges: Listing[RangeDifference]
    seconds: float = 0.0

    @property
    def unexplained(self) -> int:
        """Discrepancies the dead-letter topic does not explain."""
        return self.missing.count + self.extra.count + self.different.count + self.untransformable.count

    @property
    def matched(self) -> bool:
        """Source and target agree, apart from dead-lettered keys."""
        return self.unexplained == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (first N of each list, with the full counts)."""
        return {
            "matched": self.matched,
            "source_count": self.source_count,
            "target_count": self.target_count,
            "missing": {"count": self.missing.count, "keys": list(self.missing.first)},
            "extra": {"count": self.extra.count, "keys": list(self.extra.first)},
            "different": {
                "count": self.different.count,
                "rows": [d.as_dict() for d in self.different.first],
            },
            "untransformable": {
                "count": self.untransformable.count,
                "rows": [d.as_dict() for d in self.untransformable.first],
            },
            "dead_lettered": {
                "count": self.dead_lettered.count,
                "rows": [d.as_dict() for d in self.dead_lettered.first],
            },
            "ranges": {
                "width": self.range_width,
                "compared": self.ranges_compared,
                "differing": self.differing_ranges.count,
                "first_differing": [r.as_dict() for r in self.differing_ranges.first],
            },
            "seconds": round(self.seconds, 3),
        }


def classify(
    entity: str, comparison: Comparison, dead_letters: Mapping[int, str], *, limit: int, seconds: float = 0.0
) -> EntityReport:
    """Split a comparison's discrepancies into unexplained ones and dead-lettered ones.

    Args:
        entity: the entity compared.
        comparison: what :func:`compare_rows` found.
        dead_letters: the entity's dead-lettered keys and why (from the dead-letter topic).
        limit: keep the first ``limit`` keys of each list (the counts are always complete).
        seconds: how long the comparison took (reported).
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    lists: dict[Kind, list[Discrepancy]] = {kind: [] for kind in Kind}
    explained: list[DeadLettered] = []
    for item in comparison.discrepancies:
        reason = dead_letters.get(item.key)
        if reason is not None:
            explained.append(DeadLettered(item.key, item.kind, reason))
        else:
            lists[item.kind].append(item)
    return EntityReport(
        entity=entity,
        source_count=comparison.source_count,
        target_count=comparison.target_count,
        missing=_listing([d.key for d in lists[Kind.MISSING]], limit),
        extra=_listing([d.key for d in lists[Kind.EXTRA]], limit),
        different=_listing(lists[Kind.DIFFERENT], limit),
        untransformable=_listing(lists[Kind.UNTRANSFORMABLE], limit),
        dead_lettered=_listing(explained, limit),
        range_width=comparison.range_width,
        ranges_compared=comparison.ranges_compared,
        differing_ranges=_listing(comparison.differing_ranges(), limit),
        seconds=seconds,
    )
