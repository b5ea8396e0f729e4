from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from pacs_sync.lsn import LSN_SIZE, Lsn, SourcePosition
from producer.mapping import TABLES, default_mappings
from producer.source import ChangeRow
from producer.stream import START, FoldedChange, IdleCheck, Segment, check_idle, fold_updates, releasable

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def lsn(number: int) -> Lsn:
    return Lsn(number.to_bytes(LSN_SIZE, "big"))


def row(commit: int, seq: int, op: int, *values: object) -> ChangeRow:
    return ChangeRow(lsn(commit), lsn(seq), op, b"\x01", tuple(values) or (commit, seq, op), T0)


def segment(table: str = "Property", instance: str | None = None) -> Segment:
    return Segment(
        table, instance or f"dbo_{table}", default_mappings()[table], Lsn.zero(), Lsn(b"\xff" * LSN_SIZE)
    )


def drain(segments: list[Segment]) -> list[tuple[Segment, ChangeRow]]:
    return list(releasable(segments))


# ---- ChangeRow.position ----


def test_change_row_position_is_the_log_order_key() -> None:
    r = row(5, 3, 4)
    assert r.position == (lsn(5).value, lsn(3).value, 4)
    assert r.position > START
    assert row(5, 3, 3).position < r.position < row(5, 4, 1).position < row(6, 0, 1).position


def test_change_row_order_agrees_with_source_position_order() -> None:
    rng = random.Random(7)
    rows = [row(rng.randrange(1, 5), rng.randrange(1, 5), rng.randrange(1, 5)) for _ in range(80)]
    by_tuple = sorted(rows, key=lambda r: r.position)
    by_position = sorted(rows, key=lambda r: SourcePosition(r.commit_lsn, r.seqval, r.operation))
    assert [r.position for r in by_tuple] == [r.position for r in by_position]


# ---- Segment.accept_page ----


def test_full_page_ending_in_a_before_image_keeps_it_back() -> None:
    seg = segment()
    page = [row(1, 1, 2), row(1, 2, 4), row(2, 3, 3)]
    seg.accept_page(page, limit=3)
    assert list(seg.buffer) == page[:2]
    assert seg.cursor == page[1].position
    assert not seg.exhausted


def test_full_page_ending_in_an_after_image_is_kept_whole() -> None:
    seg = segment()
    page = [row(1, 1, 2), row(2, 3, 3), row(2, 3, 4)]
    seg.accept_page(page, limit=3)
    assert list(seg.buffer) == page
    assert seg.cursor == page[-1].position
    assert not seg.exhausted


@pytest.mark.parametrize("last_op", [1, 2, 4])
def test_full_page_not_ending_in_a_before_image(last_op: int) -> None:
    seg = segment()
    page = [row(1, 1, 2), row(1, 2, last_op)]
    seg.accept_page(page, limit=2)
    assert list(seg.buffer) == page
    assert seg.cursor == page[-1].position
    assert not seg.exhausted


def test_short_page_marks_the_segment_exhausted() -> None:
    seg = segment()
    page = [row(1, 1, 2), row(1, 2, 1)]
    seg.accept_page(page, limit=5)
    assert list(seg.buffer) == page
    assert seg.cursor == page[-1].position
    assert seg.exhausted


def test_empty_page_exhausts_and_keeps_the_cursor() -> None:
    seg = segment()
    seg.cursor = row(3, 3, 2).position
    seg.accept_page([], limit=5)
    assert seg.exhausted
    assert not seg.buffer
    assert seg.cursor == row(3, 3, 2).position


def test_pages_append_to_the_buffer() -> None:
    seg = segment()
    seg.accept_page([row(1, 1, 2), row(1, 2, 2), row(1, 3, 3)], limit=3)
    seg.accept_page([row(1, 3, 3), row(1, 3, 4)], limit=3)
    assert [r.position for r in seg.buffer] == [
        row(1, 1, 2).position,
        row(1, 2, 2).position,
        row(1, 3, 3).position,
        row(1, 3, 4).position,
    ]
    assert seg.cursor == row(1, 3, 4).position
    assert seg.exhausted


def test_over_full_page_counts_as_full() -> None:
    seg = segment()
    seg.accept_page([row(1, 1, 2), row(1, 2, 2), row(1, 3, 3)], limit=2)
    assert not seg.exhausted
    assert seg.cursor == row(1, 2, 2).position


# ---- releasable ----


def test_merges_exhausted_segments_in_log_order() -> None:
    a, b, c = segment("Property"), segment("PropertyOwner"), segment("Structure")
    a.accept_page([row(1, 1, 2), row(3, 1, 3), row(3, 1, 4)], limit=10)
    b.accept_page([row(1, 2, 2), row(2, 1, 1), row(4, 1, 2)], limit=10)
    c.accept_page([row(1, 0, 2), row(3, 2, 1), row(3, 2, 2)], limit=10)
    released = drain([a, b, c])
    assert [r.position for _, r in released] == sorted(r.position for _, r in released)
    assert [(s.table, r.commit_lsn, r.seqval) for s, r in released] == [
        ("Structure", lsn(1), lsn(0)),
        ("Property", lsn(1), lsn(1)),
        ("PropertyOwner", lsn(1), lsn(2)),
        ("PropertyOwner", lsn(2), lsn(1)),
        ("Property", lsn(3), lsn(1)),
        ("Property", lsn(3), lsn(1)),
        ("Structure", lsn(3), lsn(2)),
        ("Structure", lsn(3), lsn(2)),
        ("PropertyOwner", lsn(4), lsn(1)),
    ]
    assert not a.buffer
    assert not b.buffer
    assert not c.buffer
    assert drain([a, b, c]) == []


def test_nothing_beyond_the_smallest_open_cursor_is_released() -> None:
    a, b = segment("Property"), segment("PropertyOwner")
    a.accept_page([row(1, 1, 2), row(5, 1, 2)], limit=2)  # full: more may follow after (5, 1, 2)
    b.accept_page([row(2, 1, 2), row(3, 1, 2), row(6, 1, 2)], limit=10)  # exhausted
    released = drain([a, b])
    assert [r.position for _, r in released] == [
        row(1, 1, 2).position,
        row(2, 1, 2).position,
        row(3, 1, 2).position,
        row(5, 1, 2).position,  # equal to the horizon: released
    ]
    assert list(b.buffer) == [row(6, 1, 2)]
    assert not a.buffer
    a.accept_page([row(7, 1, 2)], limit=2)
    assert [r.position for _, r in drain([a, b])] == [row(6, 1, 2).position, row(7, 1, 2).position]


def test_the_horizon_is_the_minimum_over_open_segments() -> None:
    a, b, c = segment("Property"), segment("PropertyOwner"), segment("Structure")
    a.accept_page([row(1, 1, 2), row(8, 1, 2)], limit=2)
    b.accept_page([row(2, 1, 2), row(4, 1, 2)], limit=2)
    c.accept_page([row(3, 1, 2), row(9, 1, 2)], limit=5)
    released = drain([a, b, c])
    assert [r.commit_lsn for _, r in released] == [lsn(1), lsn(2), lsn(3), lsn(4)]
    assert [r.commit_lsn for r in a.buffer] == [lsn(8)]
    assert not b.buffer
    assert [r.commit_lsn for r in c.buffer] == [lsn(9)]


def test_an_open_segment_with_an_empty_buffer_holds_everything_after_its_cursor() -> None:
    a, b = segment("Property"), segment("PropertyOwner")
    a.cursor = row(2, 5, 4).position
    b.accept_page([row(2, 5, 1), row(2, 6, 2)], limit=10)
    assert [r.position for _, r in drain([a, b])] == [row(2, 5, 1).position]
    a.cursor = START
    b2 = segment("Structure")
    b2.accept_page([row(1, 1, 2)], limit=10)
    assert drain([a, b2]) == []


def test_nothing_buffered_releases_nothing() -> None:
    assert drain([]) == []
    assert drain([segment(), segment("Structure")]) == []


def test_releasable_is_lazy_and_leaves_unconsumed_rows() -> None:
    a = segment()
    a.accept_page([row(1, 1, 2), row(1, 2, 2), row(1, 3, 2)], limit=10)
    it = releasable([a])
    first = next(it)
    assert first[1].seqval == lsn(1)
    assert len(a.buffer) == 2


# ---- fold_updates ----


def test_fold_insert_delete_update() -> None:
    seg = segment()
    seg.accept_page(
        [
            row(1, 1, 2, 1, "new"),
            row(2, 1, 3, 1, "old"),
            row(2, 1, 4, 1, "newer"),
            row(3, 1, 1, 1, "newer"),
        ],
        limit=10,
    )
    folded = list(fold_updates(releasable([seg])))
    assert [(f.op, f.before, f.after) for f in folded] == [
        ("c", None, (1, "new")),
        ("u", (1, "old"), (1, "newer")),
        ("d", (1, "newer"), None),
    ]
    assert all(f.segment is seg for f in folded)
    assert folded[1].row.operation == 4
    assert folded[1].row.seqval == lsn(1)


def test_fold_primary_key_change_is_delete_then_insert() -> None:
    seg = segment()
    insert, delete = row(4, 9, 2, 200, "moved"), row(4, 9, 1, 100, "moved")
    seg.accept_page([delete, insert], limit=10)
    other = segment("Structure")
    other.accept_page([row(4, 10, 2, 7)], limit=10)
    folded = list(fold_updates(releasable([other, seg])))
    assert [(f.op, f.before, f.after) for f in folded] == [
        ("d", (100, "moved"), None),
        ("c", None, (200, "moved")),
        ("c", None, (7,)),
    ]
    assert folded[0].row.seqval == folded[1].row.seqval


def test_fold_keys_before_images_by_capture_instance() -> None:
    a, b = segment("Property"), segment("Structure")
    rows: list[tuple[Segment, ChangeRow]] = [
        (a, row(1, 1, 3, "a-old")),
        (b, row(1, 2, 3, "b-old")),
        (a, row(1, 1, 4, "a-new")),
        (b, row(1, 2, 4, "b-new")),
    ]
    folded = list(fold_updates(iter(rows)))
    assert [(f.segment.table, f.op, f.before, f.after) for f in folded] == [
        ("Property", "u", ("a-old",), ("a-new",)),
        ("Structure", "u", ("b-old",), ("b-new",)),
    ]


def test_fold_after_image_without_before_image() -> None:
    seg = segment()
    folded = list(fold_updates(iter([(seg, row(1, 1, 4, "x"))])))
    assert [(f.op, f.before, f.after) for f in folded] == [("u", None, ("x",))]


def test_fold_before_image_alone_yields_nothing() -> None:
    seg = segment()
    assert list(fold_updates(iter([(seg, row(1, 1, 3, "x"))]))) == []


def test_fold_ignores_unknown_operations() -> None:
    seg = segment()
    assert list(fold_updates(iter([(seg, row(1, 1, 5, "x")), (seg, row(1, 1, 0, "y"))]))) == []


def test_folded_change_is_frozen() -> None:
    seg = segment()
    change = FoldedChange(seg, row(1, 1, 2), "c", None, (1,))
    with pytest.raises(AttributeError):
        change.op = "u"  # type: ignore[misc]


# ---- property test: paging + merge, as producer/runner.py::_stream_segments drives them ----


def random_changes(rng: random.Random, tables: int) -> list[tuple[int, ChangeRow]]:
    """A globally ordered change log: (table index, row); seqvals unique per change."""
    log: list[tuple[int, ChangeRow]] = []
    commit = rng.randrange(1, 1 << 40)
    seq = rng.randrange(1, 1 << 40)
    key = 0
    for _ in range(rng.randrange(0, 25)):
        commit += rng.randrange(1, 1 << 20)
        seq = max(seq, commit - rng.randrange(0, 1 << 10))
        for _ in range(rng.randrange(1, 6)):
            seq += rng.randrange(1, 1 << 12)
            table = rng.randrange(tables)
            key += 1
            kind = rng.choice(["insert", "delete", "update", "update", "pk-change"])
            ops = {"insert": (2,), "delete": (1,), "update": (3, 4), "pk-change": (1, 2)}[kind]
            for op in ops:
                log.append((table, row(commit, seq, op, key, f"{kind}-{op}")))
    return log


def fetch(rows: Sequence[ChangeRow], seg: Segment, limit: int) -> list[ChangeRow]:
    """The changes query: rows of [low, high] strictly after the cursor, in log order, at most limit."""
    return [r for r in rows if seg.low <= r.commit_lsn <= seg.high and r.position > seg.cursor][:limit]


def run_window(
    rng: random.Random, segments: list[Segment], source: dict[str, list[ChangeRow]], max_limit: int
) -> tuple[list[list[tuple[Segment, ChangeRow]]], list[FoldedChange]]:
    batches: list[list[tuple[Segment, ChangeRow]]] = []
    folded: list[FoldedChange] = []
    for _ in range(10_000):
        for seg in segments:
            if not seg.exhausted and not seg.buffer:
                limit = rng.randint(2, max_limit)
                page = fetch(source[seg.capture_instance], seg, limit)
                seg.accept_page(page, limit)
        open_cursors = [s.cursor for s in segments if not s.exhausted]
        horizon = min(open_cursors) if open_cursors else None
        batch = list(releasable(segments))
        if horizon is not None:
            assert all(r.position <= horizon for _, r in batch)
        batches.append(batch)
        folded.extend(fold_updates(iter(batch)))  # the runner folds each batch on its own
        if all(s.exhausted and not s.buffer for s in segments):
            return batches, folded
    raise AssertionError("the paging loop did not terminate")


@pytest.mark.parametrize("seed", range(200))
def test_paged_merge_releases_every_row_once_in_global_order(seed: int) -> None:
    rng = random.Random(seed)
    tables = list(TABLES[: rng.randint(2, 4)])
    log = random_changes(rng, len(tables))
    expected = [r for _, r in log]
    assert [r.position for r in expected] == sorted(r.position for r in expected)
    assert len({r.position for r in expected}) == len(expected)

    source: dict[str, list[ChangeRow]] = {f"dbo_{t}": [] for t in tables}
    for index, r in log:
        source[f"dbo_{tables[index]}"].append(r)
    segments = [segment(t) for t in tables]
    rng.shuffle(segments)

    batches, folded = run_window(rng, segments, source, max_limit=rng.choice([2, 3, 5, 8, 40]))
    released = [pair for batch in batches for pair in batch]

    assert [r for _, r in released] == expected
    assert all(r in source[s.capture_instance] for s, r in released)
    assert all(not s.buffer and s.exhausted for s in segments)

    data_rows = [r for r in expected if r.operation != 3]
    assert [f.row for f in folded] == data_rows
    before_of = {(r.commit_lsn, r.seqval): r.values for r in expected if r.operation == 3}
    for change in folded:
        if change.row.operation == 4:
            assert change.op == "u"
            assert change.before == before_of[(change.row.commit_lsn, change.row.seqval)]
            assert change.after == change.row.values
        elif change.row.operation == 2:
            assert (change.op, change.before, change.after) == ("c", None, change.row.values)
        else:
            assert (change.op, change.before, change.after) == ("d", change.row.values, None)


@pytest.mark.parametrize("seed", range(20))
def test_paged_merge_with_a_resume_cursor(seed: int) -> None:
    rng = random.Random(1000 + seed)
    tables = list(TABLES)
    log = random_changes(rng, len(tables))
    if not log:
        return
    resume = rng.choice(log)[1].position
    source: dict[str, list[ChangeRow]] = {f"dbo_{t}": [] for t in tables}
    for index, r in log:
        source[f"dbo_{tables[index]}"].append(r)
    segments = [segment(t) for t in tables]
    for seg in segments:
        seg.cursor = resume
    batches, _ = run_window(rng, segments, source, max_limit=4)
    assert [r for batch in batches for _, r in batch] == [r for _, r in log if r.position > resume]


# ---- check_idle: the idle poll's decision ----


def done(commit: int) -> SourcePosition:
    return SourcePosition(lsn(commit))


def test_no_transaction_at_all_is_idle_without_a_position() -> None:
    assert check_idle(None, None, None) == IdleCheck(idle=True)
    assert check_idle(None, lsn(9), None) == IdleCheck(idle=True)


def test_a_transaction_and_no_position_is_not_idle() -> None:
    assert check_idle(None, lsn(9), lsn(9)) == IdleCheck(idle=False)


def test_a_newer_transaction_is_not_idle() -> None:
    assert check_idle(done(5), lsn(9), lsn(6)) == IdleCheck(idle=False)


def test_an_unfinished_transaction_is_not_idle() -> None:
    assert check_idle(SourcePosition(lsn(5), lsn(3), 2), lsn(9), lsn(5)) == IdleCheck(idle=False)


def test_idle_follows_the_high_water_mark() -> None:
    assert check_idle(done(5), lsn(9), lsn(5)) == IdleCheck(idle=True, advance_to=done(9))
    assert check_idle(done(5), lsn(9), None) == IdleCheck(idle=True, advance_to=done(9))


def test_idle_never_moves_back_or_to_nothing() -> None:
    assert check_idle(done(9), lsn(9), lsn(5)) == IdleCheck(idle=True)
    assert check_idle(done(9), lsn(7), lsn(5)) == IdleCheck(idle=True)
    assert check_idle(done(9), None, None) == IdleCheck(idle=True)


def poll_against(
    log: list[tuple[int, bool]], position: SourcePosition, captured_before: int, captured_between: int
) -> SourcePosition:
    """One poll of a capture log [(lsn, real transaction?)]: ``captured_before`` entries are committed
    when the high-water mark is read, ``captured_between`` more before the newest transaction is read."""
    visible = log[:captured_before]
    high_water = max((lsn(n) for n, _ in visible), default=None)
    visible = log[: captured_before + captured_between]
    newest = max((lsn(n) for n, real in visible if real), default=None)
    check = check_idle(position, high_water, newest)
    if not check.idle or check.advance_to is None:
        return position  # a streaming poll reads [position, newest]: nothing is skipped there
    return check.advance_to


@pytest.mark.parametrize("seed", range(30))
def test_an_idle_poll_never_passes_an_unread_transaction(seed: int) -> None:
    """Captures committing between the poll's two reads (the race of RELIABILITY.md problem 11)."""
    rng = random.Random(seed)
    log: list[tuple[int, bool]] = []
    number = 10
    for _ in range(rng.randrange(1, 12)):
        number += rng.randrange(1, 4)
        log.append((number, rng.random() < 0.4))  # idle dummy rows and real transactions
    published = max((n for n, real in log[:1] if real), default=log[0][0])
    position = done(published)
    committed = 1
    while committed < len(log):
        before = rng.randrange(committed, len(log) + 1)
        between = rng.randrange(0, len(log) - before + 1)
        moved = poll_against(log, position, before, between)
        for n, real in log:
            if real and lsn(n) > position.commit_lsn:
                assert moved.commit_lsn < lsn(n), f"skipped transaction {n} (position {moved})"
        position = moved
        committed = before + between
        if any(real and lsn(n) > position.commit_lsn for n, real in log[:committed]):
            break  # a streaming poll would publish it next


def test_reading_the_high_water_mark_last_would_skip_the_transaction() -> None:
    """The old order (newest transaction first, then the high-water mark) jumps over a capture."""
    position = done(10)
    newest = lsn(10)  # read first: nothing new
    high_water = lsn(11)  # transaction 11 was captured in between
    assert check_idle(position, high_water, newest).advance_to == done(11)  # what the old order did
    assert poll_against([(10, True), (11, True)], position, 1, 1) == position
