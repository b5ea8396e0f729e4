"""`pacs-sync verify`'s pure parts: canonical hashes, the merge diff, classification, dead letters, report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast

import pytest

from pacs_sync.errors import ConfigurationError
from pacs_sync.lsn import Lsn
from producer.mapping import SourceInfo, default_mappings, envelope
from reconcile.compare import (
    NULL_TEXT,
    Kind,
    SourceRow,
    TargetRow,
    UnorderedStreamError,
    canonical,
    canonical_row,
    classify,
    compare_rows,
    row_digest,
)
from reconcile.dlq import Attribution, LetterContext, attribute_letter, index_letters, letter_reason
from reconcile.report import VerifyReport, render_text
from reconcile.runner import checked_entities, run_verify
from reconcile.settings import ReconcileSettings
from reconcile.source import SourceReader
from reconcile.target import TargetReader
from schemas.codec import AvroCodec, SchemaRegistry
from sink.tables import ENTITIES

CODEC = AvroCodec(SchemaRegistry.from_package())
COLUMNS = ("id", "name", "amount")


def src(key: int, *values: Any) -> SourceRow:
    return SourceRow(key, canonical_row((key, *values)))


def tgt(key: int, *values: Any) -> TargetRow:
    return TargetRow(key, canonical_row((key, *values)))


# -- canonical text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (Decimal("1.50"), Decimal("1.5")),
        (Decimal("100.00"), Decimal("1E+2")),
        (Decimal("0.00"), Decimal("-0.0")),
        (Decimal("0.0000"), Decimal("0")),
        (datetime(2025, 1, 1, 12, tzinfo=UTC), datetime(2025, 1, 1, 4, tzinfo=timezone(timedelta(hours=-8)))),
    ],
)
def test_equal_values_have_one_canonical_text_whatever_their_representation(left: Any, right: Any) -> None:
    assert canonical(left) == canonical(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (Decimal("1.5"), Decimal("1.05")),
        (None, "\\N"),  # a text that spells the NULL marker is not NULL
        (None, ""),
        (True, 1),
        ("1", "1 "),
        (date(2025, 1, 2), date(2025, 2, 1)),
    ],
)
def test_different_values_never_share_a_canonical_text(left: Any, right: Any) -> None:
    assert canonical(left) != canonical(right)


def test_canonical_forms() -> None:
    assert canonical(None) == NULL_TEXT
    assert canonical(Decimal("12345.60")) == "12345.6"
    assert canonical(Decimal("-5.50")) == "-5.5"
    assert canonical(Decimal("1.000E-10")) == "0.0000000001"
    assert canonical(date(2024, 3, 1)) == "2024-03-01"
    assert canonical(b"\x01\xff") == "\\x01ff"
    assert canonical_row([1, "Kennewick", None, Decimal("2.0")]) == ("1", "Kennewick", NULL_TEXT, "2")


def test_row_digest_is_stable_and_separates_columns() -> None:
    assert row_digest(("1", "ab", "c")) == row_digest(("1", "ab", "c"))
    assert row_digest(("1", "ab", "c")) != row_digest(("1", "a", "bc"))
    # The separator inside a text is escaped, so it cannot forge a column boundary.
    assert row_digest(canonical_row([1, "a\x1fb"])) != row_digest(canonical_row([1, "a", "b"]))
    assert len(row_digest(("x",))) == 16


# -- the merge diff ----------------------------------------------------------------------------------


def test_identical_streams_match_with_counts_and_equal_range_digests() -> None:
    rows = [(k, f"name {k}", Decimal(f"{k}.50")) for k in range(1, 2500)]
    result = compare_rows(
        COLUMNS,
        [src(k, n, a) for k, n, a in rows],
        # The target holds the same values at the column's scale: not a difference.
        [tgt(k, n, a.quantize(Decimal("0.0001"))) for k, n, a in rows],
        range_width=1000,
    )
    assert result.discrepancies == []
    assert (result.source_count, result.target_count) == (2499, 2499)
    assert result.ranges_compared == 3
    assert result.differing_ranges() == []


def test_missing_extra_and_different_keys_are_found_in_key_order() -> None:
    source = [src(1, "a", Decimal(1)), src(2, "b", Decimal(2)), src(4, "d", Decimal(4)), src(6, "f", None)]
    target = [tgt(2, "b", Decimal(2)), tgt(3, "c", Decimal(3)), tgt(4, "D", Decimal(4)), tgt(6, "f", 0)]
    result = compare_rows(COLUMNS, source, target, range_width=2)
    found = [(d.key, d.kind) for d in result.discrepancies]
    assert found == [(1, Kind.MISSING), (3, Kind.EXTRA), (4, Kind.DIFFERENT), (6, Kind.DIFFERENT)]
    different = {d.key: d for d in result.discrepancies if d.kind is Kind.DIFFERENT}
    assert different[4].columns == ("name",)
    assert (different[4].source, different[4].target) == (("d",), ("D",))
    assert different[6].columns == ("amount",)
    assert different[6].as_dict()["columns"] == {"amount": {"source": None, "target": "0"}}
    assert (result.source_count, result.target_count) == (4, 4)
    # Ranges of width 2: [0,1] (1 missing), [2,3] (3 extra), [4,5] (4 differs), [6,7] (6 differs).
    assert [(r.low, r.high) for r in result.differing_ranges()] == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_either_stream_may_run_out_first() -> None:
    assert [d.kind for d in compare_rows(COLUMNS, [], [tgt(1, "a", 1)]).discrepancies] == [Kind.EXTRA]
    assert [d.kind for d in compare_rows(COLUMNS, [src(1, "a", 1)], []).discrepancies] == [Kind.MISSING]
    empty = compare_rows(COLUMNS, [], [])
    assert (empty.source_count, empty.target_count, empty.discrepancies) == (0, 0, [])


def test_an_untransformable_source_row_is_its_own_kind_whether_or_not_the_target_has_it() -> None:
    source = [SourceRow(1, None, "ParcelNumber: missing"), SourceRow(2, None, "bad"), src(3, "c", 3)]
    result = compare_rows(COLUMNS, source, [tgt(2, "b", 2), tgt(3, "c", 3)])
    assert [(d.key, d.kind, d.detail) for d in result.discrepancies] == [
        (1, Kind.UNTRANSFORMABLE, "ParcelNumber: missing"),
        (2, Kind.UNTRANSFORMABLE, "bad"),
    ]


def test_an_unordered_stream_is_refused_rather_than_misreported() -> None:
    with pytest.raises(UnorderedStreamError, match="target"):
        compare_rows(COLUMNS, [src(1, "a", 1), src(2, "b", 2)], [tgt(2, "b", 2), tgt(1, "a", 1)])
    with pytest.raises(UnorderedStreamError, match="source"):
        compare_rows(COLUMNS, [src(1, "a", 1), src(1, "a", 1)], [])


def test_a_row_with_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="3 columns"):
        compare_rows(COLUMNS, [SourceRow(1, ("1", "a"))], [])


def test_only_the_range_holding_a_difference_differs() -> None:
    source = [src(k, "x", k) for k in range(0, 5000)]
    target = [tgt(k, "y" if k == 3456 else "x", k) for k in range(0, 5000)]
    ranges = compare_rows(COLUMNS, source, target, range_width=1000).differing_ranges()
    assert [(r.low, r.high, r.source_count, r.target_count) for r in ranges] == [(3000, 3999, 1000, 1000)]


# -- classification ----------------------------------------------------------------------------------


def _comparison() -> Any:
    source = [src(k, "x", k) for k in range(1, 101) if k % 10]
    source += [SourceRow(1000, None, "bad row")]
    target = [tgt(k, "y" if k in (5, 7) else "x", k) for k in range(1, 101) if k not in (1, 2, 3)]
    return compare_rows(COLUMNS, source, target)


def test_dead_lettered_keys_are_explained_and_the_rest_is_not() -> None:
    comparison = _comparison()
    # The source lacks the multiples of 10 (extra in the target), the target lacks 1, 2 and 3
    # (missing), 5 and 7 differ, and 1000 is untransformable.
    report = classify(
        "owners", comparison, {2: "PACS-004 OWN-PCT", 7: "PACS-004 X", 20: "PACS-011 PG-23514"}, limit=3
    )
    assert report.missing.count == 2
    assert report.missing.first == (1, 3)
    assert report.extra.count == 9
    assert report.extra.first == (10, 30, 40)
    assert [d.key for d in report.different.first] == [5]
    assert [d.key for d in report.untransformable.first] == [1000]
    assert [(d.key, d.kind, d.reason) for d in report.dead_lettered.first] == [
        (2, Kind.MISSING, "PACS-004 OWN-PCT"),
        (7, Kind.DIFFERENT, "PACS-004 X"),
        (20, Kind.EXTRA, "PACS-011 PG-23514"),
    ]
    assert report.unexplained == 2 + 9 + 1 + 1
    assert not report.matched
    json.dumps(report.as_dict())


def test_everything_dead_lettered_is_a_match_and_limit_zero_lists_nothing() -> None:
    comparison = compare_rows(COLUMNS, [src(1, "a", 1), SourceRow(2, None, "bad")], [])
    report = classify("properties", comparison, {1: "PACS-004 PROP-ZIP", 2: "PACS-004 SCHEMA"}, limit=0)
    assert report.matched
    assert report.dead_lettered.count == 2
    assert report.dead_lettered.first == ()


# -- the source side: the producer's row images through the processors' transform -------------------


class FakeCdcSource:
    server = "PACS fake"

    def __init__(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.rows = sorted(rows)
        self.queries: list[tuple[Any, int]] = []
        self.ended = 0

    def snapshot_chunk(
        self, table: str, columns: Sequence[str], key: str, after_key: Any | None, limit: int
    ) -> list[tuple[Any, ...]]:
        self.queries.append((after_key, limit))
        rows = [r for r in self.rows if after_key is None or r[0] > after_key]
        return rows[:limit]

    def end_read(self) -> None:
        self.ended += 1

    def close(self) -> None:
        pass


def _property(pid: int, **changes: Any) -> tuple[Any, ...]:
    values = {
        "PropertyID": pid,
        "ParcelNumber": f"1-{pid}",
        "Address": "8903  W CLEARWATER AVENUE",
        "City": "KENNEWICK",
        "State": "wa",
        "ZipCode": "99336-1234",
        "LegalDescription": "LOT 1  BLOCK 2",
        "Acreage": Decimal("0.2500"),
        "YearBuilt": 0,
    }
    values.update(changes)
    return tuple(values.values())


def test_the_source_side_transforms_like_the_processors_and_reads_in_keyset_chunks() -> None:
    fake = FakeCdcSource(
        [_property(k) for k in range(100001, 100026)] + [_property(100026, ParcelNumber=None)]
    )
    reader = SourceReader(ReconcileSettings.load(), source=cast(Any, fake))
    spec = ENTITIES["properties"]
    columns = (spec.key_column, *spec.data_columns)
    rows = list(reader.rows("properties", columns, chunk_rows=10))
    assert [q[0] for q in fake.queries] == [None, 100010, 100020]
    assert fake.ended == 3
    assert len(rows) == 26
    first = dict(zip(columns, rows[0].tokens or (), strict=True))
    assert first == {
        "property_id": "100001",
        "parcel_number": "1-100001",
        "address": "8903 W Clearwater Ave",
        "city": "Kennewick",
        "state": "WA",
        "zip5": "99336",
        "zip4": "1234",
        "legal_description": "LOT 1 BLOCK 2",
        "acreage": "0.25",
        "year_built": NULL_TEXT,
    }
    # What PostgreSQL gives back for the stored record hashes the same.
    stored: tuple[Any, ...] = (100001, "1-100001", "8903 W Clearwater Ave", "Kennewick", "WA", "99336")
    stored += ("1234", "LOT 1 BLOCK 2", Decimal("0.2500"), None)
    assert row_digest(canonical_row(stored)) == row_digest(rows[0].tokens or ())
    assert rows[-1].tokens is None
    assert "ParcelNumber" in (rows[-1].problem or "")


# -- dead letters ------------------------------------------------------------------------------------

CONTEXT = LetterContext.build(default_mappings(), topic_prefix="pacs", db_name="pacs", db_schema="dbo")


def _event(table: str, after: dict[str, Any] | None, *, db: str = "pacs", op: str = "c") -> bytes:
    source = SourceInfo(db, "dbo", table, f"dbo_{table}", Lsn.zero(), Lsn.zero(), 0, None)
    return CODEC.encode(
        f"pacs.dbo.{table}Envelope", envelope(op, None, after, source, datetime(2026, 1, 1, tzinfo=UTC))
    )


def _letter(
    value: bytes | None, *, topic: str, key: bytes | None = None, code: str = "PACS-004"
) -> dict[str, Any]:
    return {
        "error_code": code,
        "topic": topic,
        "partition": 0,
        "offset": 7,
        "key": key,
        "value": value,
        "violations": [
            {"rule_id": "PROP-ZIP", "severity": "error", "field": "ZipCode", "message": "bad", "value": "x"},
            {
                "rule_id": "PROP-YEAR",
                "severity": "warning",
                "field": "YearBuilt",
                "message": "odd",
                "value": "1",
            },
            {"rule_id": "PROP-ZIP", "severity": "error", "field": "ZipCode", "message": "bad", "value": "x"},
        ],
        "source_commit_lsn": None,
        "source_change_lsn": None,
        "failed_at": datetime(2026, 1, 1, tzinfo=UTC),
    }


def _property_image(pid: int) -> dict[str, Any]:
    names = default_mappings()["Property"].fields
    return dict(zip(names, _property(pid), strict=True))


def test_a_processor_letter_names_its_entity_and_key_from_the_original_event() -> None:
    letter = _letter(_event("Property", _property_image(100007)), topic="pacs.pacs.dbo.Property")
    assert attribute_letter(CODEC, letter, CONTEXT) == Attribution("properties", 100007, "PACS-004 PROP-ZIP")
    # Owner letters come from the processors' re-key topic, keyed by PropertyID: the value decides.
    owner = dict(
        zip(
            default_mappings()["PropertyOwner"].fields,
            (2000001, 100007, "SMITH JOHN", "Individual", Decimal("150.00"), None, None),
            strict=True,
        )
    )
    letter = _letter(
        _event("PropertyOwner", owner), topic="pacs-sync-processors-owners-by-property-repartition"
    )
    letter["key"] = b"100007"
    assert attribute_letter(CODEC, letter, CONTEXT) == Attribution("owners", 2000001, "PACS-004 PROP-ZIP")


def test_letters_of_another_database_are_foreign() -> None:
    letter = _letter(_event("Property", _property_image(100007), db="other"), topic="pacs.other.dbo.Property")
    assert attribute_letter(CODEC, letter, CONTEXT) == "foreign"
    key = CODEC.encode("pacs.dbo.PropertyKey", {"PropertyID": 100007})
    letter = _letter(b"garbage", topic="pacs.other.dbo.Property", key=key, code="PACS-012")
    assert attribute_letter(CODEC, letter, CONTEXT) == "foreign"


def test_an_undecodable_event_is_attributed_by_its_avro_key_or_not_at_all() -> None:
    key = CODEC.encode("pacs.dbo.PropertyKey", {"PropertyID": 100009})
    letter = _letter(b"\xc3\x01garbage", topic="pacs.pacs.dbo.Property", key=key, code="PACS-012")
    letter["violations"] = []
    assert attribute_letter(CODEC, letter, CONTEXT) == Attribution("properties", 100009, "PACS-012")
    letter["key"] = b"100009"
    assert attribute_letter(CODEC, letter, CONTEXT) == "unattributed"


def test_a_sink_letter_names_the_clean_record_key() -> None:
    record = {
        "valuation_id": 5000003,
        "property_id": 100001,
        "tax_year": 2025,
        "assessed_value": Decimal("-5.00"),
        "market_value": None,
        "land_value": None,
        "improvement_value": None,
        "source_commit_lsn": "00000000:00000000:0001",
        "source_change_lsn": None,
        "source_serial": 0,
        "source_ts": None,
        "deleted": False,
    }
    value = CODEC.encode("io.terrafusion.model.Valuation", record)
    letter = _letter(value, topic="terrafusion.valuations", code="PACS-011")
    letter["violations"] = [
        {"rule_id": "PG-23514", "severity": "error", "field": "", "message": "check", "value": None}
    ]
    assert attribute_letter(CODEC, letter, CONTEXT) == Attribution("valuations", 5000003, "PACS-011 PG-23514")


def test_index_counts_letters_and_keeps_the_newest_reason_per_key() -> None:
    first = _letter(_event("Property", _property_image(100001)), topic="pacs.pacs.dbo.Property")
    second = dict(first, error_code="PACS-011", violations=[])
    foreign = _letter(_event("Property", _property_image(100002), db="x"), topic="pacs.x.dbo.Property")
    values: list[bytes | None] = [
        CODEC.encode("io.terrafusion.pacs.DeadLetter", first),
        CODEC.encode("io.terrafusion.pacs.DeadLetter", foreign),
        CODEC.encode("io.terrafusion.pacs.DeadLetter", second),
        b"not avro",
        None,
    ]
    index = index_letters(CODEC, values, CONTEXT)
    assert (index.read, index.attributed, index.foreign, index.unattributed, index.unreadable) == (
        3,
        2,
        1,
        0,
        1,
    )
    assert index.for_entity("properties") == {100001: "PACS-011"}
    assert index.for_entity("owners") == {}


def test_letter_reason_prefers_error_rules_once_each() -> None:
    assert letter_reason(_letter(None, topic="t")) == "PACS-004 PROP-ZIP"
    only_warning = _letter(None, topic="t")
    only_warning["violations"] = only_warning["violations"][1:2]
    assert letter_reason(only_warning) == "PACS-004 PROP-YEAR"


# -- the run and its report --------------------------------------------------------------------------


def test_entities_accept_repeats_and_commas_and_refuse_unknown_names() -> None:
    settings = ReconcileSettings.load()
    assert checked_entities(["structures,owners", "owners"], settings) == ["owners", "structures"]
    assert checked_entities(None, settings) == list(ENTITIES)
    with pytest.raises(ConfigurationError, match="parcels"):
        checked_entities(["parcels"], settings)


class FakeTarget(TargetReader):
    def __init__(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        super().__init__({"host": "h", "port": 1, "database": "fake"}, connection=object())
        self.data = rows
        self.recorded: list[dict[str, Any]] = []

    def rows(self, spec: Any, *, chunk_rows: int) -> Any:
        for values in self.data.get(spec.entity, []):
            yield TargetRow(values[0], canonical_row(values))

    def record_run(self, entities: Sequence[str], **kwargs: Any) -> int | None:
        self.recorded.append({"entities": list(entities), **kwargs})
        return 42


def test_run_verify_reports_differences_explains_dead_letters_and_records_the_run() -> None:
    settings = ReconcileSettings.load()
    fake = FakeCdcSource([_property(100001), _property(100002), _property(100003, ZipCode="9933")])
    source = SourceReader(settings, source=cast(Any, fake))
    stored = ("1-{}", "8903 W Clearwater Ave", "Kennewick", "WA", "99336", "1234", "LOT 1 BLOCK 2")
    target = FakeTarget(
        {
            "properties": [
                (100001, stored[0].format(100001), *stored[1:], Decimal("0.2500"), None),
                (100002, stored[0].format(100002), *stored[1:3], "OR", *stored[4:], Decimal("0.2500"), None),
            ]
        }
    )
    letter = _letter(_event("Property", _property_image(100003)), topic="pacs.pacs.dbo.Property")

    def letters(_settings: ReconcileSettings) -> list[bytes | None]:
        return [CODEC.encode("io.terrafusion.pacs.DeadLetter", letter)]

    report = run_verify(
        settings, ["properties"], limit=5, read_letters=letters, source_reader=source, target_reader=target
    )
    (entity,) = report.entities
    assert [d.key for d in entity.different.first] == [100002]
    assert entity.different.first[0].columns == ("state",)
    assert [(d.key, d.kind) for d in entity.dead_lettered.first] == [(100003, Kind.MISSING)]
    assert report.exit_code == 1
    assert report.run_id == 42
    assert target.recorded[0]["succeeded"] is False
    assert target.recorded[0]["detail"]["entities"]["properties"]["different"]["count"] == 1
    text = render_text(report)
    assert "100002: state" in text
    assert "100003: missing (PACS-004 PROP-ZIP)" in text
    assert text.splitlines()[-1].startswith("DIFFERENT: 1 unexplained")
    parsed = json.loads(json.dumps(report.as_dict()))
    assert parsed["entities"]["properties"]["different"]["rows"][0]["columns"] == {
        "state": {"source": "WA", "target": "OR"}
    }


def test_a_report_without_unexplained_differences_exits_0() -> None:
    comparison = compare_rows(COLUMNS, [src(1, "a", 1)], [tgt(1, "a", 1)])
    report = VerifyReport(
        [classify("owners", comparison, {}, limit=20)], index_letters(CODEC, [], CONTEXT), 20
    )
    assert report.matched
    assert report.exit_code == 0
    assert render_text(report).splitlines()[-1].startswith("MATCH: no unexplained difference")
