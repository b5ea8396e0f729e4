from __future__ import annotations

import json
import zlib
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pacs_sync import __version__
from pacs_sync.errors import ConfigurationError, ErrorCode
from pacs_sync.lsn import Lsn
from producer.errors import MappingError
from producer.mapping import (
    CONNECTOR,
    EVENT_OP,
    OP_DELETE,
    OP_INSERT,
    OP_UPDATE_AFTER,
    OP_UPDATE_BEFORE,
    TABLES,
    SourceInfo,
    TableMapping,
    default_mappings,
    envelope,
    extra_captured,
    load_mappings,
    mapping_problems,
    partition_of,
    utc_now,
)
from schemas.codec import KEY_FIELDS, AvroCodec, SchemaRegistry

PROPERTY_FIELDS = (
    "PropertyID",
    "ParcelNumber",
    "Address",
    "City",
    "State",
    "ZipCode",
    "LegalDescription",
    "Acreage",
    "YearBuilt",
)


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SchemaRegistry.from_package())


def write_json(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


# ---- constants ----


def test_operation_codes() -> None:
    assert (OP_DELETE, OP_INSERT, OP_UPDATE_BEFORE, OP_UPDATE_AFTER) == (1, 2, 3, 4)
    assert EVENT_OP == {1: "d", 2: "c", 4: "u"}


# ---- default_mappings ----


def test_default_mappings_tables_in_parent_first_order() -> None:
    mappings = default_mappings()
    assert TABLES == ("Property", "PropertyOwner", "PropertyValue", "Structure")
    assert tuple(mappings) == TABLES
    assert {t: m.entity for t, m in mappings.items()} == {
        "Property": "properties",
        "PropertyOwner": "owners",
        "PropertyValue": "valuations",
        "Structure": "structures",
    }


def test_default_mappings_fields() -> None:
    mappings = default_mappings()
    assert mappings["Property"].fields == PROPERTY_FIELDS
    assert mappings["PropertyOwner"].fields == (
        "PropertyOwnerID",
        "PropertyID",
        "OwnerName",
        "OwnerType",
        "OwnershipPercentage",
        "StartDate",
        "EndDate",
    )
    assert mappings["PropertyValue"].fields == (
        "PropertyValueID",
        "PropertyID",
        "TaxYear",
        "AssessedValue",
        "MarketValue",
        "LandValue",
        "ImprovementValue",
    )
    assert mappings["Structure"].fields == (
        "StructureID",
        "PropertyID",
        "StructureType",
        "SquareFootage",
        "Condition",
        "Bedrooms",
        "Bathrooms",
        "YearBuilt",
    )


@pytest.mark.parametrize("table", TABLES)
def test_default_mapping_is_identity_with_key_first(table: str) -> None:
    mapping = default_mappings()[table]
    assert mapping.table == table
    assert mapping.columns == mapping.fields
    assert mapping.extra_fields == ()
    assert mapping.key_field == mapping.fields[0] == f"{table}ID"
    assert mapping.key_column == mapping.key_field
    assert mapping.key_field == KEY_FIELDS[table]
    assert len(set(mapping.fields)) == len(mapping.fields)


@pytest.mark.parametrize("table", TABLES)
def test_default_fields_match_the_shipped_row_schema(table: str) -> None:
    registry = SchemaRegistry.from_package()
    row = registry.by_name(f"pacs.dbo.{table}").schema
    assert tuple(f["name"] for f in row["fields"]) == default_mappings()[table].fields
    key = registry.by_name(f"pacs.dbo.{table}Key").schema
    assert [f["name"] for f in key["fields"]] == [default_mappings()[table].key_field]


def test_default_mappings_are_fresh_copies() -> None:
    assert default_mappings() == default_mappings()
    assert default_mappings() is not default_mappings()


# ---- load_mappings ----


def test_load_mappings_without_a_file_is_the_default() -> None:
    assert load_mappings(None) == default_mappings()


def test_load_mappings_renames_a_column(tmp_path: Path) -> None:
    mappings = load_mappings(write_json(tmp_path, {"Property": {"ZipCode": "Zip5"}}))
    prop = mappings["Property"]
    assert prop.fields == PROPERTY_FIELDS
    assert prop.columns == tuple("Zip5" if f == "ZipCode" else f for f in PROPERTY_FIELDS)
    assert prop.entity == "properties"
    for table in TABLES[1:]:
        assert mappings[table] == default_mappings()[table]


def test_load_mappings_renames_the_key_column(tmp_path: Path) -> None:
    mappings = load_mappings(
        write_json(tmp_path, {"Structure": {"StructureID": "struct_id", "Bathrooms": "baths"}})
    )
    structure = mappings["Structure"]
    assert structure.key_field == "StructureID"
    assert structure.key_column == "struct_id"
    assert structure.columns[6] == "baths"
    assert structure.record([7, 1, None, None, None, None, Decimal("1.5"), None])["StructureID"] == 7


def test_load_mappings_empty_object_is_the_default(tmp_path: Path) -> None:
    assert load_mappings(write_json(tmp_path, {})) == default_mappings()
    assert load_mappings(write_json(tmp_path, {"Property": {}})) == default_mappings()


def _assert_mapping_error(path: Path, *fragments: str) -> None:
    with pytest.raises(MappingError) as caught:
        load_mappings(path)
    message = str(caught.value)
    assert f"PACS_COLUMN_MAPPING_FILE={path}" in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.code is ErrorCode.CONFIGURATION_INVALID


def test_unknown_table_is_an_error(tmp_path: Path) -> None:
    _assert_mapping_error(
        write_json(tmp_path, {"Parcel": {"ZipCode": "Zip5"}}),
        "unknown table 'Parcel'",
        "Property, PropertyOwner, PropertyValue, Structure",
    )


def test_table_names_are_case_sensitive(tmp_path: Path) -> None:
    _assert_mapping_error(write_json(tmp_path, {"property": {"ZipCode": "Zip5"}}), "unknown table 'property'")


def test_table_value_must_be_an_object(tmp_path: Path) -> None:
    _assert_mapping_error(write_json(tmp_path, {"Property": ["ZipCode", "Zip5"]}), "'Property'")


def test_unknown_field_is_an_error(tmp_path: Path) -> None:
    _assert_mapping_error(
        write_json(tmp_path, {"Property": {"ZipCode": "Zip5", "Zip": "z", "Colour": "c"}}),
        "Property has no field(s) ['Colour', 'Zip']",
    )


def test_invalid_json_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text('{"Property": {"ZipCode": ', encoding="utf-8")
    _assert_mapping_error(path, "cannot read it as JSON")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    _assert_mapping_error(tmp_path / "absent.json", "cannot read it as JSON")


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    _assert_mapping_error(write_json(tmp_path, [{"Property": {}}]), "expected an object of tables")


# ---- mapping_problems / extra_captured ----


def test_mapping_problems_is_case_insensitive() -> None:
    mapping = default_mappings()["Property"]
    captured = [c.upper() for c in PROPERTY_FIELDS]
    assert mapping_problems(mapping, captured) == []
    assert mapping_problems(mapping, (c.lower() for c in PROPERTY_FIELDS)) == []


def test_mapping_problems_lists_missing_columns_in_mapping_order() -> None:
    mapping = default_mappings()["Property"]
    captured = [c for c in PROPERTY_FIELDS if c not in {"City", "YearBuilt", "Address"}]
    assert mapping_problems(mapping, captured) == ["Address", "City", "YearBuilt"]
    assert mapping_problems(mapping, []) == list(PROPERTY_FIELDS)


def test_mapping_problems_uses_the_renamed_columns(tmp_path: Path) -> None:
    mapping = load_mappings(write_json(tmp_path, {"Property": {"ZipCode": "Zip5"}}))["Property"]
    assert mapping_problems(mapping, PROPERTY_FIELDS) == ["Zip5"]
    renamed = ["zip5" if c == "ZipCode" else c for c in PROPERTY_FIELDS]
    assert mapping_problems(mapping, renamed) == []


def test_extra_captured_keeps_capture_order_and_spelling() -> None:
    mapping = default_mappings()["Property"]
    captured = ["PropertyID", "Zeta", "parcelnumber", "alpha", *PROPERTY_FIELDS[2:], "Mid"]
    assert extra_captured(mapping, captured) == ["Zeta", "alpha", "Mid"]
    assert extra_captured(mapping, PROPERTY_FIELDS) == []
    assert extra_captured(mapping, [c.upper() for c in PROPERTY_FIELDS]) == []


# ---- TableMapping ----


def test_record_and_key() -> None:
    mapping = default_mappings()["PropertyValue"]
    values = (11, 1, 2024, Decimal("100.00"), None, Decimal("40.00"), Decimal("60.00"))
    record = mapping.record(values)
    assert record == dict(zip(mapping.fields, values, strict=True))
    assert list(record) == list(mapping.fields)
    assert mapping.key(record) == {"PropertyValueID": 11}


def test_record_rejects_the_wrong_number_of_values() -> None:
    mapping = default_mappings()["Property"]
    with pytest.raises(ValueError):
        mapping.record((1, "P-1"))
    with pytest.raises(ValueError):
        mapping.record(tuple(range(len(PROPERTY_FIELDS) + 1)))


def test_with_extra_adds_columns_after_the_contract(tmp_path: Path) -> None:
    base = load_mappings(write_json(tmp_path, {"Property": {"ZipCode": "Zip5"}}))["Property"]
    evolved = base.with_extra(["FloodZone", "Zoning"])
    assert base.extra_fields == ()
    assert evolved.extra_fields == ("FloodZone", "Zoning")
    assert evolved.fields == base.fields
    assert evolved.columns == base.columns
    assert evolved.all_columns == (*base.columns, "FloodZone", "Zoning")
    assert "Zip5" in evolved.all_columns
    values = (1, "P-1", None, None, None, "99336", None, None, None, "AE", "R1")
    record = evolved.record(values)
    assert list(record) == [*PROPERTY_FIELDS, "FloodZone", "Zoning"]
    assert record["ZipCode"] == "99336"
    assert record["FloodZone"] == "AE"
    assert evolved.key(record) == {"PropertyID": 1}
    with pytest.raises(ValueError):
        evolved.record(values[:-1])


def test_with_extra_replaces_rather_than_appends() -> None:
    mapping = default_mappings()["Structure"].with_extra(["A"]).with_extra(["B", "C"])
    assert mapping.extra_fields == ("B", "C")
    assert default_mappings()["Structure"].with_extra([]) == default_mappings()["Structure"]


def test_key_ignores_other_fields() -> None:
    mapping = TableMapping("T", "ts", ("Id", "Name"), ("id_col", "name_col"))
    assert mapping.key_field == "Id"
    assert mapping.key_column == "id_col"
    assert mapping.key({"Name": "x", "Id": 5}) == {"Id": 5}
    with pytest.raises(KeyError):
        mapping.key({"Name": "x"})


# ---- SourceInfo / envelope ----

COMMIT = Lsn.parse("0000002a:00000104:0001")
CHANGE = Lsn.parse("0000002a:00000100:0003")
COMMIT_TIME = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def streamed_source() -> SourceInfo:
    return SourceInfo(
        db="PACS_Benton",
        schema="dbo",
        table="Property",
        capture_instance="dbo_Property",
        commit_lsn=COMMIT,
        change_lsn=CHANGE,
        event_serial_no=2,
        commit_time=COMMIT_TIME,
    )


def test_source_info_as_record() -> None:
    assert streamed_source().as_record() == {
        "connector": CONNECTOR,
        "version": __version__,
        "db": "PACS_Benton",
        "schema": "dbo",
        "table": "Property",
        "capture_instance": "dbo_Property",
        "commit_lsn": "0000002a:00000104:0001",
        "change_lsn": "0000002a:00000100:0003",
        "event_serial_no": 2,
        "commit_ts_ms": COMMIT_TIME,
        "snapshot": "false",
    }
    assert CONNECTOR == "terrafusion-pacs-sync"


@pytest.mark.parametrize("snapshot", ["true", "last"])
def test_snapshot_source_info(snapshot: str) -> None:
    record = SourceInfo(
        db="pacs",
        schema="dbo",
        table="Structure",
        capture_instance=None,
        commit_lsn=COMMIT,
        change_lsn=None,
        event_serial_no=0,
        commit_time=None,
        snapshot=snapshot,
    ).as_record()
    assert record["snapshot"] == snapshot
    assert record["commit_lsn"] == "0000002a:00000104:0001"
    assert record["change_lsn"] is None
    assert record["capture_instance"] is None
    assert record["commit_ts_ms"] is None


def test_source_info_without_lsns() -> None:
    record = SourceInfo("pacs", "dbo", "Property", None, None, None, None, None).as_record()
    assert record["commit_lsn"] is None
    assert record["change_lsn"] is None
    assert record["event_serial_no"] is None


def test_envelope_shape() -> None:
    now = datetime(2024, 5, 1, 12, 31, tzinfo=UTC)
    before = {"PropertyID": 1, "City": "Kennewick"}
    after = {"PropertyID": 1, "City": "Richland"}
    event = envelope("u", before, after, streamed_source(), now)
    assert event == {
        "before": before,
        "after": after,
        "op": "u",
        "source": streamed_source().as_record(),
        "ts_ms": now,
    }


def _property_row(city: str) -> dict[str, Any]:
    mapping = default_mappings()["Property"]
    return mapping.record((1, "1-23-456", "1 Main St", city, "WA", "99336", None, Decimal("0.2500"), 1978))


@pytest.mark.parametrize("op", ["c", "u", "d"])
def test_envelope_encodes_with_the_shipped_schema(codec: AvroCodec, op: str) -> None:
    before = None if op == "c" else _property_row("Kennewick")
    after = None if op == "d" else _property_row("Richland")
    now = datetime(2024, 5, 1, 12, 31, tzinfo=UTC)
    data = codec.encode("pacs.dbo.PropertyEnvelope", envelope(op, before, after, streamed_source(), now))
    decoded = codec.decode(data).value
    assert decoded["op"] == op
    assert decoded["before"] == before
    assert decoded["after"] == after
    assert decoded["ts_ms"] == now
    assert decoded["source"] == streamed_source().as_record()
    key = default_mappings()["Property"].key(after or before or {})
    assert codec.decode(codec.encode("pacs.dbo.PropertyKey", key)).value == {"PropertyID": 1}


def test_owner_row_with_dates_encodes(codec: AvroCodec) -> None:
    mapping = default_mappings()["PropertyOwner"]
    row = mapping.record((5, 1, "Doe, J", "Individual", Decimal("50.00"), date(2020, 1, 1), None))
    source = SourceInfo("pacs", "dbo", "PropertyOwner", None, COMMIT, None, 0, None, snapshot="last")
    data = codec.encode("pacs.dbo.PropertyOwnerEnvelope", envelope("r", None, row, source, COMMIT_TIME))
    assert codec.decode(data).value["after"] == row


def test_utc_now_is_aware() -> None:
    assert utc_now().tzinfo is UTC


def test_owner_events_of_one_property_share_a_partition_whatever_the_owner() -> None:
    owners = default_mappings()["PropertyOwner"]
    partitions = {
        owners.partition({"PropertyOwnerID": owner_id, "PropertyID": 4711}, 12) for owner_id in range(1, 200)
    }
    assert partitions == {partition_of("4711", 12)}


def test_owner_partitions_spread_over_the_topic() -> None:
    owners = default_mappings()["PropertyOwner"]
    used = {owners.partition({"PropertyOwnerID": 1, "PropertyID": pid}, 6) for pid in range(1, 500)}
    assert used == set(range(6))


@pytest.mark.parametrize("table", ["Property", "PropertyValue", "Structure"])
def test_other_tables_are_partitioned_by_their_key(table: str) -> None:
    mapping = default_mappings()[table]
    assert mapping.partition({"PropertyID": 1, mapping.key_field: 2}, 6) is None


def test_an_owner_event_without_a_property_goes_by_its_key() -> None:
    owners = default_mappings()["PropertyOwner"]
    assert owners.partition(None, 6) is None
    assert owners.partition({"PropertyOwnerID": 1, "PropertyID": None}, 6) is None


def test_partition_routing_survives_column_overrides_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"PropertyOwner": {"PropertyID": "ParcelRef"}}))
    owners = load_mappings(path)["PropertyOwner"].with_extra(["Notes"])
    assert owners.partition({"PropertyOwnerID": 9, "PropertyID": 4711}, 12) == partition_of("4711", 12)


def test_partition_of_is_stable_across_processes() -> None:
    # CRC-32 of the text: a restarted producer routes a property's owners to the same partition.
    assert [partition_of(str(n), 3) for n in (1, 2, 3, 10, 4711)] == [
        zlib.crc32(str(n).encode()) % 3 for n in (1, 2, 3, 10, 4711)
    ]
    assert 0 <= partition_of("99", 1) == 0
