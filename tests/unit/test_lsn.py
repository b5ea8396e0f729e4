from __future__ import annotations

import itertools
import random

import pytest

from pacs_sync.lsn import LSN_SIZE, Lsn, SourcePosition

ALL_ONES = b"\xff" * LSN_SIZE


def lsn(number: int) -> Lsn:
    return Lsn(number.to_bytes(LSN_SIZE, "big"))


# ---- Lsn: text form ----


def test_parse_debezium_form() -> None:
    value = Lsn.parse("0000002a:00000104:0001")
    assert value.value == bytes.fromhex("0000002a000001040001")
    assert str(value) == "0000002a:00000104:0001"


def test_parse_plain_hex_digits() -> None:
    assert Lsn.parse("0000002a000001040001") == Lsn.parse("0000002a:00000104:0001")


def test_parse_accepts_upper_case_and_prints_lower_case() -> None:
    assert str(Lsn.parse("0000002A:0000010B:00FF")) == "0000002a:0000010b:00ff"


@pytest.mark.parametrize("seed", range(5))
def test_parse_str_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        value = Lsn(rng.randbytes(LSN_SIZE))
        text = str(value)
        assert len(text) == 22
        assert text[8] == ":"
        assert text[17] == ":"
        assert Lsn.parse(text) == value


def test_zero() -> None:
    assert Lsn.zero().value == bytes(LSN_SIZE)
    assert str(Lsn.zero()) == "00000000:00000000:0000"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0000002a:00000104:001",
        "0000002a:00000104:00001",
        "0000002a00000104000",
        "0000002a0000010400010",
        "0000002a:00000104:0001:00",
        "0000002a:0000010z:0001",
        "not an lsn at all!!!",
    ],
)
def test_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        Lsn.parse(text)


@pytest.mark.parametrize("size", [0, 1, 9, 11, 16])
def test_rejects_wrong_length(size: int) -> None:
    with pytest.raises(ValueError, match=f"an LSN has 10 bytes, got {size}"):
        Lsn(bytes(size))


# ---- Lsn: order ----


def test_orders_as_unsigned_bytes() -> None:
    low = Lsn(b"\x7f" + b"\xff" * 9)
    high = Lsn(b"\x80" + bytes(9))
    assert low < high
    assert high > low
    assert Lsn.zero() < low
    assert Lsn(ALL_ONES) > high
    assert max(low, high) is high


def test_vlf_outranks_block_and_slot() -> None:
    assert Lsn.parse("00000001:00000000:0000") > Lsn.parse("00000000:ffffffff:ffff")
    assert Lsn.parse("0000002a:00000105:0000") > Lsn.parse("0000002a:00000104:ffff")


@pytest.mark.parametrize("seed", range(3))
def test_byte_order_equals_text_order_and_integer_order(seed: int) -> None:
    rng = random.Random(seed)
    values = [Lsn(rng.randbytes(LSN_SIZE)) for _ in range(200)]
    values += [Lsn(bytes([b]) + rng.randbytes(LSN_SIZE - 1)) for b in (0x00, 0x7F, 0x80, 0xFF)]
    by_lsn = sorted(values)
    assert by_lsn == sorted(values, key=str)
    assert by_lsn == sorted(values, key=lambda v: int.from_bytes(v.value, "big"))


def test_equality_and_hash() -> None:
    a = Lsn.parse("0000002a:00000104:0001")
    b = Lsn(bytes.fromhex("0000002a000001040001"))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a <= b
    assert a >= b


def test_comparison_with_other_types_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        _ = Lsn.zero() < bytes(LSN_SIZE)
    other: object = bytes(LSN_SIZE)
    assert Lsn.zero() != other


# ---- Lsn: increment / decrement ----


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("00000000:00000000:0000", "00000000:00000000:0001"),
        ("0000002a:00000104:0001", "0000002a:00000104:0002"),
        ("0000002a:00000104:00ff", "0000002a:00000104:0100"),
        ("0000002a:00000104:ffff", "0000002a:00000105:0000"),
        ("0000002a:ffffffff:ffff", "0000002b:00000000:0000"),
        ("00ffffff:ffffffff:ffff", "01000000:00000000:0000"),
        ("fffffffe:ffffffff:ffff", "ffffffff:00000000:0000"),
        ("ffffffff:ffffffff:ffff", "00000000:00000000:0000"),
    ],
)
def test_increment_carries_and_wraps(before: str, after: str) -> None:
    assert str(Lsn.parse(before).increment()) == after
    assert str(Lsn.parse(after).decrement()) == before


def test_decrement_of_zero_wraps_to_all_ones() -> None:
    assert Lsn.zero().decrement() == Lsn(ALL_ONES)
    assert Lsn(ALL_ONES).increment() == Lsn.zero()


def test_increment_does_not_mutate() -> None:
    value = Lsn.parse("0000002a:00000104:0001")
    value.increment()
    value.decrement()
    assert str(value) == "0000002a:00000104:0001"


@pytest.mark.parametrize("seed", range(3))
def test_increment_and_decrement_are_inverse_and_ordered(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        value = Lsn(rng.randbytes(LSN_SIZE))
        assert value.increment().decrement() == value
        assert value.decrement().increment() == value
        number = int.from_bytes(value.value, "big")
        if value != Lsn(ALL_ONES):
            assert value < value.increment()
            assert value.increment() == lsn(number + 1)
        if value != Lsn.zero():
            assert value.decrement() < value
            assert value.decrement() == lsn(number - 1)


# ---- SourcePosition ----

C1 = Lsn.parse("0000002a:00000104:0001")
C2 = Lsn.parse("0000002a:00000104:0002")
S1 = Lsn.parse("0000002a:00000100:0003")
S2 = Lsn.parse("0000002a:00000101:0001")


def test_orders_by_commit_then_change_then_operation() -> None:
    assert SourcePosition(C1, S2, 4) < SourcePosition(C2, S1, 1)
    assert SourcePosition(C1, S1, 4) < SourcePosition(C1, S2, 1)
    assert SourcePosition(C1, S1, 3) < SourcePosition(C1, S1, 4)
    assert SourcePosition(C1, S1, 1) < SourcePosition(C1, S1, 2)
    assert SourcePosition(C1, S1, 4) == SourcePosition(C1, S1, 4)
    assert SourcePosition(C1, S1, 4) <= SourcePosition(C1, S1, 4)
    assert SourcePosition(C2, S1, 1) > SourcePosition(C1, S2, 4)


def test_whole_transaction_sorts_after_every_change_of_its_commit() -> None:
    whole = SourcePosition(C1)
    assert whole.change_lsn is None
    for change in (Lsn.zero(), S1, S2, C1, Lsn(ALL_ONES)):
        for op in (1, 2, 3, 4):
            assert SourcePosition(C1, change, op) < whole
            assert whole > SourcePosition(C1, change, op)
    assert SourcePosition(C1, Lsn(ALL_ONES), 99) < whole


def test_whole_transaction_sorts_before_every_change_of_the_next_commit() -> None:
    whole = SourcePosition(C1)
    assert whole < SourcePosition(C2, Lsn.zero(), 1)
    assert whole < SourcePosition(C1.increment(), Lsn.zero(), 1)
    assert whole < SourcePosition(C2)
    assert SourcePosition(C1.decrement()) < SourcePosition(C1, Lsn.zero(), 1)


def test_whole_transactions_compare_by_commit() -> None:
    assert SourcePosition(C1) == SourcePosition(C1)
    assert SourcePosition(C1) <= SourcePosition(C1)
    assert SourcePosition(C1) < SourcePosition(C2)
    assert hash(SourcePosition(C1)) == hash(SourcePosition(C1, None, None))


def test_transaction_complete() -> None:
    assert SourcePosition(C1).transaction_complete
    assert not SourcePosition(C1, S1, 4).transaction_complete
    assert not SourcePosition(C1, Lsn(ALL_ONES), 2).transaction_complete


def test_comparison_with_other_types_is_a_type_error_for_positions() -> None:
    with pytest.raises(TypeError):
        _ = SourcePosition(C1) < C1


@pytest.mark.parametrize("seed", range(4))
def test_total_order_matches_tuple_order(seed: int) -> None:
    rng = random.Random(seed)
    commits = [lsn(rng.randrange(1 << 80)) for _ in range(5)]
    changes = [lsn(rng.randrange(1 << 80)) for _ in range(5)] + [Lsn.zero(), Lsn(ALL_ONES)]
    positions = {SourcePosition(c) for c in commits}
    positions |= {SourcePosition(c, s, op) for c in commits for s in changes for op in (1, 2, 3, 4)}
    shuffled = list(positions)
    rng.shuffle(shuffled)

    def expected_key(p: SourcePosition) -> tuple[int, int, int]:
        commit = int.from_bytes(p.commit_lsn.value, "big")
        if p.change_lsn is None:
            return (commit, 1 << 80, 99)
        return (commit, int.from_bytes(p.change_lsn.value, "big"), p.operation or 0)

    ordered = sorted(shuffled)
    assert ordered == sorted(shuffled, key=expected_key)
    for a, b in itertools.pairwise(ordered):
        assert a < b
        assert not b < a
        assert a != b
