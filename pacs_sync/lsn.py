"""SQL Server log sequence numbers and source positions, as comparable value objects.

An LSN is ``binary(10)``: VLF sequence (4 bytes), log block (4) and slot (2), big-endian, compared
as unsigned bytes. Debezium prints it as ``0000002a:00000104:0001``; so do our events, and that text
sorts like the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import total_ordering
from typing import Self

LSN_SIZE = 10


@total_ordering
@dataclass(frozen=True, slots=True)
class Lsn:
    """A 10-byte log sequence number."""

    value: bytes

    def __post_init__(self) -> None:
        """Reject anything that is not exactly 10 bytes."""
        if len(self.value) != LSN_SIZE:
            raise ValueError(f"an LSN has {LSN_SIZE} bytes, got {len(self.value)}: {self.value.hex()}")

    @classmethod
    def zero(cls) -> Self:
        """``0x00000000000000000000``: before every real LSN."""
        return cls(bytes(LSN_SIZE))

    @classmethod
    def parse(cls, text: str) -> Self:
        """From Debezium's ``0000002a:00000104:0001`` form or 20 plain hex digits."""
        digits = text.replace(":", "")
        if len(digits) != 2 * LSN_SIZE:
            raise ValueError(f"not an LSN: {text!r}")
        return cls(bytes.fromhex(digits))

    def __str__(self) -> str:
        """Debezium's text form."""
        h = self.value.hex()
        return f"{h[:8]}:{h[8:16]}:{h[16:]}"

    def __lt__(self, other: object) -> bool:
        """Unsigned byte order, as SQL Server compares binary(10)."""
        if not isinstance(other, Lsn):
            return NotImplemented
        return self.value < other.value

    def increment(self) -> Lsn:
        """The next LSN (80-bit +1 with carry), like ``sys.fn_cdc_increment_lsn``."""
        number = int.from_bytes(self.value, "big") + 1
        return Lsn((number % (1 << 80)).to_bytes(LSN_SIZE, "big"))

    def decrement(self) -> Lsn:
        """The previous LSN (80-bit -1 with borrow), like ``sys.fn_cdc_decrement_lsn``."""
        number = int.from_bytes(self.value, "big") - 1
        return Lsn((number % (1 << 80)).to_bytes(LSN_SIZE, "big"))


@total_ordering
@dataclass(frozen=True, slots=True, eq=False)
class SourcePosition:
    """Where a change sits in the source log: (commit LSN, change LSN = ``__$seqval``, operation).

    ``change_lsn`` None means "after every change of ``commit_lsn``" (a whole transaction, or a
    snapshot taken at that LSN). Events are totally ordered by this triple, which is what the
    sink's position guard compares.
    """

    commit_lsn: Lsn
    change_lsn: Lsn | None = None
    operation: int | None = None

    def _key(self) -> tuple[bytes, bytes, int]:
        if self.change_lsn is None:
            return (self.commit_lsn.value, b"\xff" * (LSN_SIZE + 1), 99)
        return (self.commit_lsn.value, self.change_lsn.value, self.operation or 0)

    def __lt__(self, other: object) -> bool:
        """Log order."""
        if not isinstance(other, SourcePosition):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        """Same place in the log (equality agrees with the order)."""
        if not isinstance(other, SourcePosition):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        """Hash of the log-order key."""
        return hash(self._key())

    @property
    def transaction_complete(self) -> bool:
        """True when every change of ``commit_lsn`` is at or before this position."""
        return self.change_lsn is None


_AFTER_EVERY_CHANGE = b"\xff" * LSN_SIZE


def position_bytes(commit_lsn: str, change_lsn: str | None, serial: int) -> bytes:
    """A source position as bytes whose byte order is log order (the sink's ``source_position``).

    ``commit (10) + change (10, or ff… for a snapshot read) + serial (1, or ff for a snapshot read)``:
    the same order as :class:`SourcePosition`, so PostgreSQL can guard upserts with a plain
    ``bytea`` comparison.
    """
    # Hot path of the sink (once per record): parse the hex text directly, no Lsn objects.
    commit = _lsn_bytes(commit_lsn)
    if change_lsn is None:
        return commit + _AFTER_EVERY_CHANGE + b"\xff"
    if not 0 <= serial < 0xFF:
        raise ValueError(f"event serial out of range: {serial}")
    return commit + _lsn_bytes(change_lsn) + bytes((serial,))


def _lsn_bytes(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != LSN_SIZE:
        raise ValueError(f"not an LSN: {text!r}")
    return raw
