"""process_event: verdicts, records, deletes, schema problems, the ledger, the clean-topic Avro schemas."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from pacs_sync.errors import ErrorCode
from pacs_sync.sim.generator import generate, scale_for
from producer.mapping import default_mappings
from schemas.codec import AvroCodec, SchemaRegistry, load_package_schemas, schema_for_table
from stream_processors.models import (
    DEAD_LETTER_SCHEMA,
    INPUT_KEY_FIELDS,
    INPUT_MODELS,
    OUTPUT_FIELDS,
    OUTPUT_KEY_FIELDS,
    OUTPUT_KEY_SCHEMAS,
    OUTPUT_MODELS,
    OUTPUT_TOPICS,
    OUTPUT_VALUE_SCHEMAS,
    POSITION_FIELDS,
)
from stream_processors.rules import OwnerShareLedger
from stream_processors.validation import (
    ROW_FIELDS,
    InvalidRowError,
    ProcessResult,
    dead_letter_record,
    process_event,
    transform_row,
    validate_row,
)

TABLES = {
    "properties": "Property",
    "owners": "PropertyOwner",
    "valuations": "PropertyValue",
    "structures": "Structure",
}
COMMIT_TIME = datetime(2025, 6, 30, 17, 45, 12, 345000, tzinfo=UTC)
COMMIT_LSN = "0000002a:00000104:0001"
CHANGE_LSN = "0000002a:00000104:0003"

ROWS: dict[str, dict[str, Any]] = {
    "properties": {
        "PropertyID": 100001,
        "ParcelNumber": "1-0289-101-0021-000",
        "Address": "8903 W CLEARWATER AVE",
        "City": "KENNEWICK",
        "State": "WA",
        "ZipCode": "99336-1234",
        "LegalDescription": "LOT 5 BLK 3 DESERT HILLS PH 2",
        "Acreage": Decimal("0.2200"),
        "YearBuilt": 1998,
    },
    "owners": {
        "PropertyOwnerID": 2000001,
        "PropertyID": 100001,
        "OwnerName": "SMITH JOHN A",
        "OwnerType": "Individual",
        "OwnershipPercentage": Decimal("100.00"),
        "StartDate": date(2010, 5, 1),
        "EndDate": None,
    },
    "valuations": {
        "PropertyValueID": 5000001,
        "PropertyID": 100001,
        "TaxYear": 2025,
        "AssessedValue": Decimal("350000.00"),
        "MarketValue": Decimal("362000.00"),
        "LandValue": Decimal("90000.00"),
        "ImprovementValue": Decimal("260000.00"),
    },
    "structures": {
        "StructureID": 30000001,
        "PropertyID": 100001,
        "StructureType": "Single Family Residence",
        "SquareFootage": 1850,
        "Condition": "Good",
        "Bedrooms": 3,
        "Bathrooms": Decimal("2.5"),
        "YearBuilt": 0,
    },
}


def source(**changes: Any) -> dict[str, Any]:
    block = {
        "connector": "terrafusion-pacs-sync",
        "version": "0.1.0",
        "db": "pacs",
        "schema": "dbo",
        "table": "Property",
        "capture_instance": "dbo_Property",
        "commit_lsn": COMMIT_LSN,
        "change_lsn": CHANGE_LSN,
        "event_serial_no": 4,
        "commit_ts_ms": COMMIT_TIME,
        "snapshot": "false",
    }
    block.update(changes)
    return block


def event(
    op: str, after: dict[str, Any] | None, before: dict[str, Any] | None = None, **src: Any
) -> dict[str, Any]:
    return {"before": before, "after": after, "op": op, "source": source(**src), "ts_ms": COMMIT_TIME}


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SchemaRegistry.from_package())


def decoded(codec: AvroCodec, entity: str, envelope: dict[str, Any]) -> dict[str, Any]:
    """The event as the processors see it: encoded with the input envelope schema and decoded again."""
    return codec.decode(codec.encode(schema_for_table(TABLES[entity], "envelope"), envelope)).value


# ------------------------------------------------------------------------------------------------
# Valid events


@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_valid_property_event(codec: AvroCodec, op: str) -> None:
    before = {**ROWS["properties"], "YearBuilt": 1997} if op == "u" else None
    result = process_event("properties", decoded(codec, "properties", event(op, ROWS["properties"], before)))
    assert result == ProcessResult(
        ok=True,
        key={"property_id": 100001},
        record={
            "property_id": 100001,
            "parcel_number": "1-0289-101-0021-000",
            "address": "8903 W Clearwater Ave",
            "city": "Kennewick",
            "state": "WA",
            "zip5": "99336",
            "zip4": "1234",
            "legal_description": "LOT 5 BLK 3 DESERT HILLS PH 2",
            "acreage": Decimal("0.2200"),
            "year_built": 1998,
            "source_commit_lsn": COMMIT_LSN,
            "source_change_lsn": CHANGE_LSN,
            "source_serial": 4,
            "source_ts": COMMIT_TIME,
            "deleted": False,
        },
        violations=(),
    )
    assert result.errors == () == result.warnings


def test_snapshot_read_position(codec: AvroCodec) -> None:
    snapshot = event(
        "r", ROWS["valuations"], change_lsn=None, event_serial_no=0, commit_ts_ms=None, snapshot="true"
    )
    result = process_event("valuations", decoded(codec, "valuations", snapshot))
    assert result.ok
    assert result.record is not None
    assert {name: result.record[name] for name in POSITION_FIELDS} == {
        "source_commit_lsn": COMMIT_LSN,
        "source_change_lsn": None,
        "source_serial": 0,
        "source_ts": None,
        "deleted": False,
    }


def test_commit_time_as_epoch_milliseconds_and_naive_datetime() -> None:
    millis = int(COMMIT_TIME.timestamp() * 1000)
    by_millis = process_event("structures", event("c", ROWS["structures"], commit_ts_ms=millis))
    naive = process_event(
        "structures", event("c", ROWS["structures"], commit_ts_ms=COMMIT_TIME.replace(tzinfo=None))
    )
    assert by_millis.record is not None
    assert naive.record is not None
    assert by_millis.record["source_ts"] == COMMIT_TIME == naive.record["source_ts"]
    assert by_millis.record["source_serial"] == 4
    broken = process_event("structures", event("c", ROWS["structures"], commit_ts_ms="yesterday"))
    assert not broken.ok
    assert broken.violations[0].field == "source.commit_ts_ms"


def test_warnings_are_reported_but_pass() -> None:
    result = process_event("structures", event("u", {**ROWS["structures"], "Condition": "Splendid"}))
    assert result.ok
    assert result.record is not None
    assert result.record["condition"] == "unknown"
    assert [(v.rule_id, v.severity) for v in result.warnings] == [("STR-CONDITION", "warning")]
    assert result.errors == ()


def test_errors_reject_the_event_with_every_violation() -> None:
    bad = {**ROWS["properties"], "State": "XX", "ZipCode": "9933", "Acreage": Decimal("-1.0000")}
    result = process_event("properties", event("u", bad))
    assert not result.ok
    assert result.record is None
    assert result.key == {"property_id": 100001}
    assert [v.rule_id for v in result.violations] == ["PROP-STATE", "PROP-ZIP", "PROP-ACREAGE"]
    assert result.errors == result.violations


def test_as_of_defaults_to_the_commit_date() -> None:
    row = {**ROWS["properties"], "YearBuilt": 2026}  # next year, seen from the 2025 commit
    assert process_event("properties", event("u", row)).ok
    assert not process_event("properties", event("u", {**row, "YearBuilt": 2027})).ok
    assert process_event("properties", event("u", {**row, "YearBuilt": 2027}), as_of=date(2026, 1, 1)).ok
    old_commit = COMMIT_TIME - timedelta(days=3650)
    assert not process_event("properties", event("u", row, commit_ts_ms=old_commit)).ok


def test_extra_fields_of_an_evolved_schema_are_ignored() -> None:
    result = process_event("properties", event("u", {**ROWS["properties"], "Zoning": "R-1"}))
    assert result.ok
    assert result.record is not None
    assert "Zoning" not in result.record
    assert "zoning" not in result.record


def test_unknown_entity() -> None:
    with pytest.raises(ValueError, match="unknown entity"):
        process_event("parcels", event("u", ROWS["properties"]))


# ------------------------------------------------------------------------------------------------
# Deletes


@pytest.mark.parametrize("entity", sorted(TABLES))
def test_delete_with_before_image(codec: AvroCodec, entity: str) -> None:
    result = process_event(entity, decoded(codec, entity, event("d", None, ROWS[entity])))
    key_field = OUTPUT_KEY_FIELDS[entity]
    key_value = ROWS[entity][INPUT_KEY_FIELDS[entity]]
    assert result.ok
    assert result.key == {key_field: key_value}
    assert result.violations == ()
    record = result.record
    assert record is not None
    assert record["deleted"] is True
    assert record[key_field] == key_value
    assert all(record[name] is None for name in OUTPUT_FIELDS[entity][1:])
    assert (record["source_commit_lsn"], record["source_change_lsn"], record["source_serial"]) == (
        COMMIT_LSN,
        CHANGE_LSN,
        4,
    )


def test_delete_of_a_bad_row_is_never_rejected() -> None:
    before = {**ROWS["properties"], "State": "XX", "ParcelNumber": "junk", "Acreage": "not even a decimal"}
    result = process_event("properties", event("d", None, before))
    assert result.ok
    assert result.record is not None
    assert result.record["deleted"] is True


def test_delete_without_before_takes_the_message_key() -> None:
    result = process_event("properties", event("d", None), key={"PropertyID": 100001})
    assert result.ok
    assert result.key == {"property_id": 100001}
    rejected = process_event("properties", event("d", None))
    assert not rejected.ok
    assert rejected.key == {}
    assert [(v.rule_id, v.field) for v in rejected.violations] == [("SCHEMA", "PropertyID")]


# ------------------------------------------------------------------------------------------------
# Shape problems: SCHEMA violations


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("PropertyID", "100001"),
        ("PropertyID", True),
        ("PropertyID", 2**31),
        ("ParcelNumber", None),
        ("ParcelNumber", 12),
        ("Acreage", 0.22),
        ("Acreage", Decimal("0.12345")),
        ("Acreage", Decimal("1234567.0")),
        ("Acreage", Decimal("NaN")),
        ("YearBuilt", "1998"),
    ],
)
def test_schema_violations(field_name: str, value: Any) -> None:
    row = {**ROWS["properties"], field_name: value}
    result = process_event("properties", event("u", row))
    assert not result.ok
    assert result.record is None
    assert {v.rule_id for v in result.violations} == {"SCHEMA"}
    assert [v.field for v in result.violations] == [field_name]
    assert result.violations[0].message


def test_schema_violation_for_a_datetime_date_and_a_missing_field() -> None:
    owner = {**ROWS["owners"], "StartDate": datetime(2010, 5, 1, tzinfo=UTC)}
    del owner["OwnerName"]
    result = process_event("owners", event("u", owner))
    assert not result.ok
    assert sorted((v.field, v.value is None) for v in result.violations) == [
        ("OwnerName", True),
        ("StartDate", False),
    ]
    assert result.key == {"owner_id": 2000001}


def test_forms_pydantic_accepts_are_normalised() -> None:
    # Trailing zeros beyond the scale: the fast check refuses, the model accepts, the value is exact.
    result = process_event(
        "owners", event("u", {**ROWS["owners"], "OwnershipPercentage": Decimal("100.000")})
    )
    assert result.ok
    assert result.record is not None
    assert str(result.record["ownership_pct"]) == "100.00"


@pytest.mark.parametrize(
    ("envelope", "field_name"),
    [
        ({"op": "u", "after": None, "before": None}, "after"),
        ({"op": "x", "after": ROWS["properties"], "before": None}, "op"),
        ({"op": "u", "after": ["not", "a", "row"], "before": None}, "after"),
    ],
)
def test_malformed_envelopes(envelope: dict[str, Any], field_name: str) -> None:
    result = process_event("properties", {**envelope, "source": source()})
    assert not result.ok
    assert [(v.rule_id, v.field) for v in result.violations] == [("SCHEMA", field_name)]


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        ({"commit_lsn": None}, "source.commit_lsn"),
        ({"commit_lsn": ""}, "source.commit_lsn"),
        ({"change_lsn": 5}, "source.change_lsn"),
        ({"event_serial_no": "4"}, "source.event_serial_no"),
    ],
)
def test_events_without_a_readable_position_are_rejected(changes: dict[str, Any], field_name: str) -> None:
    result = process_event("properties", event("d", None, ROWS["properties"], **changes))
    assert not result.ok
    assert result.key == {"property_id": 100001}
    assert [v.field for v in result.violations] == [field_name]
    missing = process_event("properties", {"op": "u", "after": ROWS["properties"]})
    assert [v.field for v in missing.violations] == ["source"]


# ------------------------------------------------------------------------------------------------
# Owners and the ledger


def owner_row(owner_id: int, share: str, *, property_id: int = 100001, **changes: Any) -> dict[str, Any]:
    return {
        **ROWS["owners"],
        "PropertyOwnerID": owner_id,
        "PropertyID": property_id,
        "OwnershipPercentage": Decimal(share),
        **changes,
    }


def at(n: int) -> dict[str, Any]:
    """Source fields of the n-th change of a run (positions increase with n)."""
    return {"change_lsn": f"0000002a:00000104:{n:04x}", "event_serial_no": 2}


def owners_of(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k.isdigit()}


def test_owner_events_update_the_ledger() -> None:
    ledger = OwnerShareLedger()
    assert process_event("owners", event("c", owner_row(1, "60.00"), **at(1)), ledger=ledger).ok
    over = process_event("owners", event("c", owner_row(2, "60.00"), **at(2)), ledger=ledger)
    assert not over.ok
    assert [v.rule_id for v in over.violations] == ["OWN-SET-OVER-100"]
    fixed = process_event(
        "owners", event("u", owner_row(1, "40.00"), owner_row(1, "60.00"), **at(3)), ledger=ledger
    )
    assert fixed.ok
    assert owners_of(ledger.to_state(100001)) == {"1": "40.00", "2": "60.00"}
    deleted = process_event("owners", event("d", None, owner_row(2, "60.00"), **at(4)), ledger=ledger)
    assert deleted.ok
    assert owners_of(ledger.to_state(100001)) == {"1": "40.00"}
    moved = event("u", owner_row(1, "40.00", property_id=100002), owner_row(1, "40.00"))
    assert process_event("owners", moved, ledger=OwnerShareLedger.from_state({100001: {"1": "40.00"}})).ok


def test_owner_rows_with_rule_errors_are_still_recorded() -> None:
    ledger = OwnerShareLedger()
    result = process_event("owners", event("c", owner_row(1, "150.00")), ledger=ledger)
    assert [v.rule_id for v in result.violations] == ["OWN-PERCENT-RANGE", "OWN-SET-OVER-100"]
    assert owners_of(ledger.to_state(100001)) == {"1": "150.00"}


def _sale_history() -> list[dict[str, Any]]:
    """Two sales of one property: seller, then buyer 2, then buyer 3 (each 100 %)."""
    sale1, sale2 = "2025-03-01", "2025-05-01"
    return [
        event("c", owner_row(1, "100.00"), **at(1)),
        event(
            "u", owner_row(1, "100.00", EndDate=date.fromisoformat(sale1)), owner_row(1, "100.00"), **at(2)
        ),
        event("c", owner_row(2, "100.00", StartDate=date.fromisoformat(sale1)), **at(3)),
        event(
            "u", owner_row(2, "100.00", EndDate=date.fromisoformat(sale2)), owner_row(2, "100.00"), **at(4)
        ),
        event("c", owner_row(3, "100.00", StartDate=date.fromisoformat(sale2)), **at(5)),
    ]


def test_a_replay_after_later_sales_gets_its_first_verdicts_and_changes_nothing() -> None:
    # At-least-once: after a restart the events since the last committed offset come again while
    # the ledger (saved per event) already holds them. Buyer 2's insert must not be checked against
    # buyer 3, who bought later.
    ledger = OwnerShareLedger()
    history = _sale_history()
    first = [process_event("owners", e, ledger=ledger) for e in history]
    assert all(r.ok for r in first)
    state = json.loads(json.dumps(ledger.to_state(100001)))  # as the Faust table stores it
    restarted = OwnerShareLedger.from_state({100001: state})
    replayed = [process_event("owners", e, ledger=restarted) for e in history[1:]]
    assert replayed == first[1:]
    assert restarted.to_state(100001) == state
    # Without positions the replay of buyer 2 is checked against buyer 3: the false rejection.
    blind = OwnerShareLedger.from_state({100001: owners_of(state)})
    assert blind.apply(owner_row(2, "100.00"), 2, as_of=date(2025, 6, 30)) is not None


def test_a_replayed_rejection_is_rejected_again_and_a_newer_change_is_checked() -> None:
    ledger = OwnerShareLedger()
    assert process_event("owners", event("c", owner_row(1, "60.00"), **at(1)), ledger=ledger).ok
    over = process_event("owners", event("c", owner_row(2, "60.00"), **at(2)), ledger=ledger)
    restarted = OwnerShareLedger.from_state({100001: json.loads(json.dumps(ledger.to_state(100001)))})
    again = process_event("owners", event("c", owner_row(2, "60.00"), **at(2)), ledger=restarted)
    assert again == over
    assert not again.ok
    assert process_event("owners", event("c", owner_row(1, "60.00"), **at(1)), ledger=restarted).ok
    # A newer change of owner 2 is checked as usual, and its acceptance clears the rejection.
    fixed = process_event(
        "owners", event("u", owner_row(2, "40.00"), owner_row(2, "60.00"), **at(3)), ledger=restarted
    )
    assert fixed.ok
    assert "rejected" not in restarted.to_state(100001)
    assert restarted.to_state(100001)["seen"] == {
        "1": ledger.to_state(100001)["seen"]["1"],
        "2": restarted.to_state(100001)["seen"]["2"],
    }


def test_without_a_ledger_the_cross_row_rule_is_skipped() -> None:
    assert process_event("owners", event("c", owner_row(1, "100.00"))).ok
    assert process_event("owners", event("c", owner_row(2, "100.00"))).ok


def test_ended_owners_do_not_count_as_of_the_commit() -> None:
    ledger = OwnerShareLedger()
    sale = date(2025, 6, 1)
    assert process_event("owners", event("c", owner_row(1, "100.00", EndDate=sale)), ledger=ledger).ok
    assert process_event("owners", event("c", owner_row(2, "100.00", StartDate=sale)), ledger=ledger).ok


# ------------------------------------------------------------------------------------------------
# Bare rows: validate_row and transform_row (the sink's reconciliation)


def test_transform_row_has_no_position() -> None:
    record = transform_row("properties", ROWS["properties"])
    assert tuple(record) == OUTPUT_FIELDS["properties"]
    processed = process_event("properties", event("u", ROWS["properties"])).record
    assert processed is not None
    assert {name: processed[name] for name in OUTPUT_FIELDS["properties"]} == record


def test_transform_row_rejects_a_row_of_the_wrong_shape() -> None:
    with pytest.raises(InvalidRowError) as caught:
        transform_row("valuations", {**ROWS["valuations"], "TaxYear": "2025"})
    assert caught.value.code is ErrorCode.DATA_VALIDATION
    assert [v.field for v in caught.value.violations] == ["TaxYear"]
    assert "TaxYear" in str(caught.value)
    with pytest.raises(ValueError, match="unknown entity"):
        transform_row("parcels", ROWS["properties"])


def test_validate_row() -> None:
    assert validate_row("valuations", ROWS["valuations"]) == ()
    bad = {**ROWS["valuations"], "AssessedValue": Decimal("1.00")}
    assert [v.rule_id for v in validate_row("valuations", bad)] == ["VAL-SUM"]
    assert [v.rule_id for v in validate_row("valuations", {**bad, "TaxYear": None})] == ["SCHEMA"]
    with pytest.raises(ValueError, match="unknown entity"):
        validate_row("parcels", ROWS["properties"])


# ------------------------------------------------------------------------------------------------
# The generator's whole data set through process_event


def test_clean_data_set_passes_process_event_and_dirty_rows_are_rejected() -> None:
    mappings = default_mappings()
    scale = scale_for("1000")
    for dirty_rate in (0.0, 0.3):
        dataset = generate(scale, seed=11, dirty_rate=dirty_rate)
        ledger = OwnerShareLedger()
        rejected: Counter[str] = Counter()
        for entity, table in TABLES.items():
            fields = mappings[table].fields
            for values in getattr(dataset, entity):
                result = process_event(
                    entity, event("r", dict(zip(fields, values, strict=True))), ledger=ledger
                )
                assert result.ok == (result.record is not None)
                assert all(v.rule_id != "SCHEMA" for v in result.violations)
                if not result.ok:
                    rejected[entity] += 1
        if dirty_rate == 0:
            assert rejected == Counter()
        else:
            planted = sum(dataset.dirty.values())
            assert sum(rejected.values()) >= planted - dataset.dirty.get("owner_set_over_100", 0)


# ------------------------------------------------------------------------------------------------
# Clean-topic and dead-letter Avro schemas


def test_registry_ships_the_output_schemas(codec: AvroCodec) -> None:
    names = set(codec.registry.names())
    assert set(OUTPUT_VALUE_SCHEMAS.values()) <= names
    assert set(OUTPUT_KEY_SCHEMAS.values()) <= names
    assert DEAD_LETTER_SCHEMA in names
    assert OUTPUT_VALUE_SCHEMAS["properties"] == "io.terrafusion.model.Property"
    assert OUTPUT_KEY_SCHEMAS["owners"] == "io.terrafusion.model.OwnerKey"
    assert {entity: f"terrafusion.{entity}" for entity in TABLES} == OUTPUT_TOPICS


def _decimal_types(schema: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    found = {}
    for field in schema["fields"]:
        for branch in field["type"] if isinstance(field["type"], list) else [field["type"]]:
            if isinstance(branch, dict) and branch.get("logicalType") == "decimal":
                found[field["name"]] = (branch["precision"], branch["scale"])
    return found


@pytest.mark.parametrize("entity", sorted(TABLES))
def test_output_schemas_match_the_records_and_the_input_decimals(codec: AvroCodec, entity: str) -> None:
    value = codec.registry.by_name(OUTPUT_VALUE_SCHEMAS[entity]).schema
    key = codec.registry.by_name(OUTPUT_KEY_SCHEMAS[entity]).schema
    assert [f["name"] for f in value["fields"]] == [*OUTPUT_FIELDS[entity], *POSITION_FIELDS]
    assert [f["name"] for f in key["fields"]] == [OUTPUT_KEY_FIELDS[entity]]
    assert value["fields"][0]["type"] == "int"  # the key is never null; everything else may be (deletes)
    assert all(isinstance(f["type"], list) for f in value["fields"][1 : len(OUTPUT_FIELDS[entity])])
    row_schema = codec.registry.by_name(schema_for_table(TABLES[entity], "row")).schema
    assert sorted(_decimal_types(value).values()) == sorted(_decimal_types(row_schema).values())


@pytest.mark.parametrize("entity", sorted(TABLES))
def test_row_shapes_agree_with_the_row_schemas_and_models(codec: AvroCodec, entity: str) -> None:
    row_schema = codec.registry.by_name(schema_for_table(TABLES[entity], "row")).schema
    assert [spec[0] for spec in ROW_FIELDS[entity]] == [f["name"] for f in row_schema["fields"]]
    assert [spec[0] for spec in ROW_FIELDS[entity]] == list(INPUT_MODELS[entity].model_fields)
    for name, _kind, nullable, _precision, _scale in ROW_FIELDS[entity]:
        avro = next(f["type"] for f in row_schema["fields"] if f["name"] == name)
        assert nullable == isinstance(avro, list), name
    decimals = {spec[0]: (spec[3], spec[4]) for spec in ROW_FIELDS[entity] if spec[1] is Decimal}
    assert decimals == _decimal_types(row_schema)


@pytest.mark.parametrize("entity", sorted(TABLES))
@pytest.mark.parametrize("op", ["u", "d"])
def test_process_event_records_encode_with_the_output_schemas(codec: AvroCodec, entity: str, op: str) -> None:
    envelope = event("u", ROWS[entity], ROWS[entity]) if op == "u" else event("d", None, ROWS[entity])
    result = process_event(entity, decoded(codec, entity, envelope))
    assert result.ok
    assert result.record is not None
    value_bytes = codec.encode(OUTPUT_VALUE_SCHEMAS[entity], result.record)
    key_bytes = codec.encode(OUTPUT_KEY_SCHEMAS[entity], result.key)
    assert codec.decode(value_bytes).value == result.record
    assert codec.decode(key_bytes).value == result.key
    OUTPUT_MODELS[entity].model_validate(result.record)  # the output model agrees


def test_dead_letter_record_encodes(codec: AvroCodec) -> None:
    bad = {**ROWS["valuations"], "AssessedValue": Decimal("-1.00")}
    envelope = event("u", bad, ROWS["valuations"])
    value = codec.encode(schema_for_table("PropertyValue", "envelope"), envelope)
    key = codec.encode(schema_for_table("PropertyValue", "key"), {"PropertyValueID": 5000001})
    decoded_event = codec.decode(value).value
    result = process_event("valuations", decoded_event)
    assert not result.ok
    failed_at = datetime(2025, 7, 1, 8, 0, tzinfo=UTC)
    letter = dead_letter_record(
        result.violations,
        topic="pacs.dbo.PropertyValue",
        partition=2,
        offset=41,
        key=key,
        value=value,
        failed_at=failed_at,
        event=decoded_event,
    )
    round_trip = codec.decode(codec.encode(DEAD_LETTER_SCHEMA, letter)).value
    assert round_trip == {**letter, "failed_at": failed_at}
    assert round_trip["error_code"] == "PACS-004"
    assert [v["rule_id"] for v in round_trip["violations"]] == ["VAL-NON-NEGATIVE", "VAL-SUM"]
    assert round_trip["source_commit_lsn"] == COMMIT_LSN
    undecodable = dead_letter_record(
        (),
        topic="t",
        partition=0,
        offset=0,
        key=None,
        value=b"\x00",
        failed_at=failed_at,
        error_code=ErrorCode.UNDECODABLE_EVENT,
    )
    assert codec.decode(codec.encode(DEAD_LETTER_SCHEMA, undecodable)).value["source_commit_lsn"] is None


def test_schema_files_are_named_after_their_records() -> None:
    files = load_package_schemas()
    for entity, name in OUTPUT_VALUE_SCHEMAS.items():
        short = name.rpartition(".")[2]
        assert files[f"TerraFusion.{short}.avsc"]["name"] == short, entity
        assert files[f"TerraFusion.{short}.key.avsc"]["name"] == f"{short}Key", entity
    assert files["DeadLetter.avsc"]["namespace"] == "io.terrafusion.pacs"


def test_process_event_does_not_modify_the_event() -> None:
    original = event("u", {**ROWS["owners"], "OwnershipPercentage": Decimal("100.000")}, ROWS["owners"])
    snapshot = copy.deepcopy(original)
    process_event("owners", original, ledger=OwnerShareLedger())
    assert original == snapshot
