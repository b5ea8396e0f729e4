"""The event contract: shipped Avro schemas, single-object encoding, registry and golden vectors."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import random
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

import schemas
from pacs_sync.errors import ErrorCode, FatalError, PoisonMessageError
from schemas import (
    HEARTBEAT_SCHEMA,
    KEY_FIELDS,
    MAGIC,
    OFFSET_SCHEMA,
    SOURCE_SCHEMA,
    TABLES,
    AvroCodec,
    DecodedRecord,
    SchemaMismatchError,
    SchemaRegistry,
    UndecodableEventError,
    crc64_avro,
    fingerprint,
    load_package_schemas,
    parsing_canonical_form,
    schema_for_table,
)
from schemas._encoder import compile_encoder

DEC = "decimal"
DATE = "date"
# The contract, written out independently of the .avsc files: (column, avro type, nullable).
# The avro type is a primitive name, ("decimal", precision, scale) or "date".
EXPECTED_COLUMNS: dict[str, list[tuple[str, Any, bool]]] = {
    "Property": [
        ("PropertyID", "int", False),
        ("ParcelNumber", "string", False),
        ("Address", "string", True),
        ("City", "string", True),
        ("State", "string", True),
        ("ZipCode", "string", True),
        ("LegalDescription", "string", True),
        ("Acreage", (DEC, 10, 4), True),
        ("YearBuilt", "int", True),
    ],
    "PropertyOwner": [
        ("PropertyOwnerID", "int", False),
        ("PropertyID", "int", False),
        ("OwnerName", "string", False),
        ("OwnerType", "string", True),
        ("OwnershipPercentage", (DEC, 5, 2), True),
        ("StartDate", DATE, True),
        ("EndDate", DATE, True),
    ],
    "PropertyValue": [
        ("PropertyValueID", "int", False),
        ("PropertyID", "int", False),
        ("TaxYear", "int", False),
        ("AssessedValue", (DEC, 14, 2), True),
        ("MarketValue", (DEC, 14, 2), True),
        ("LandValue", (DEC, 14, 2), True),
        ("ImprovementValue", (DEC, 14, 2), True),
    ],
    "Structure": [
        ("StructureID", "int", False),
        ("PropertyID", "int", False),
        ("StructureType", "string", True),
        ("SquareFootage", "int", True),
        ("Condition", "string", True),
        ("Bedrooms", "int", True),
        ("Bathrooms", (DEC, 3, 1), True),
        ("YearBuilt", "int", True),
    ],
}
TS_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
EXPECTED_SOURCE_FIELDS: list[tuple[str, Any]] = [
    ("connector", "string"),
    ("version", "string"),
    ("db", "string"),
    ("schema", "string"),
    ("table", "string"),
    ("capture_instance", ["null", "string"]),
    ("commit_lsn", ["null", "string"]),
    ("change_lsn", ["null", "string"]),
    ("event_serial_no", ["null", "long"]),
    ("commit_ts_ms", ["null", TS_MILLIS]),
    ("snapshot", "string"),
]

ROWS: dict[str, dict[str, Any]] = {
    "Property": {
        "PropertyID": 1001,
        "ParcelNumber": "181316-23456",
        "Address": "1207 N Front St",
        "City": "Yakima",
        "State": "WA",
        "ZipCode": "98901",
        "LegalDescription": "LOT 4 BLK 12 NOB HILL ADD " * 10,  # > 63 bytes: a multi-byte length
        "Acreage": Decimal("0.2475"),
        "YearBuilt": 1948,
    },
    "PropertyOwner": {
        "PropertyOwnerID": 5001,
        "PropertyID": 1001,
        "OwnerName": "Núñez Family Trust",
        "OwnerType": "TRUST",
        "OwnershipPercentage": Decimal("33.33"),
        "StartDate": date(2019, 3, 15),
        "EndDate": date(1969, 12, 31),  # before the epoch: a negative day count
    },
    "PropertyValue": {
        "PropertyValueID": 9001,
        "PropertyID": 1001,
        "TaxYear": 2024,
        "AssessedValue": Decimal("312450.00"),
        "MarketValue": Decimal("999999999999.99"),
        "LandValue": Decimal("-85000.10"),
        "ImprovementValue": None,
    },
    "Structure": {
        "StructureID": 7001,
        "PropertyID": 1001,
        "StructureType": "Single Family Residence",
        "SquareFootage": 1860,
        "Condition": None,
        "Bedrooms": 3,
        "Bathrooms": Decimal("2.5"),
        "YearBuilt": 1948,
    },
}
COMMIT_TS = datetime(2024, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)
PROCESSED_TS = datetime(2024, 6, 1, 12, 0, 0, 456000, tzinfo=UTC)  # whole milliseconds: round-trips exactly


def source(table: str, **overrides: Any) -> dict[str, Any]:
    block = {
        "connector": "pacs-sync",
        "version": "0.1.0",
        "db": "pacs",
        "schema": "dbo",
        "table": table,
        "capture_instance": f"dbo_{table}",
        "commit_lsn": "0000002a:00000104:0001",
        "change_lsn": "0000002a:00000104:0003",
        "event_serial_no": 2,
        "commit_ts_ms": COMMIT_TS,
        "snapshot": "false",
    }
    block.update(overrides)
    return block


def envelope(table: str, op: str) -> dict[str, Any]:
    row = ROWS[table]
    changed = dict(row)
    changed[KEY_FIELDS[table]] = row[KEY_FIELDS[table]]  # same key, other values
    first_nullable = next(name for name, _, nullable in EXPECTED_COLUMNS[table] if nullable)
    changed[first_nullable] = None
    before, after, src = {
        "c": (None, row, source(table)),
        "u": (row, changed, source(table, event_serial_no=2)),
        "d": (row, None, source(table, event_serial_no=1)),
        "r": (
            None,
            row,
            source(table, capture_instance=None, change_lsn=None, event_serial_no=None, snapshot="true"),
        ),
    }[op]
    return {"before": before, "after": after, "op": op, "source": src, "ts_ms": PROCESSED_TS}


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.from_package()


@pytest.fixture(scope="module")
def codec(registry: SchemaRegistry) -> AvroCodec:
    return AvroCodec(registry)


def fastavro_body(registry: SchemaRegistry, name: str, record: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, registry.by_name(name).parsed, record, strict_allow_default=True)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# The shipped schema files


def test_package_ships_every_schema_once(registry: SchemaRegistry) -> None:
    files = load_package_schemas()
    expected_files = {f"{t}.{kind}.avsc" for t in TABLES for kind in ("key", "row", "envelope")}
    models = ("Property", "Owner", "Valuation", "Structure")
    terrafusion_files = {f"TerraFusion.{model}{kind}.avsc" for model in models for kind in ("", ".key")}
    shared_files = {"Source.avsc", "Heartbeat.avsc", "Offset.avsc", "DeadLetter.avsc"}
    assert set(files) == expected_files | shared_files | terrafusion_files
    expected_names = {schema_for_table(t, k) for t in TABLES for k in ("key", "row", "envelope")}
    terrafusion_names = {f"io.terrafusion.model.{model}{kind}" for model in models for kind in ("", "Key")}
    shared_names = {SOURCE_SCHEMA, HEARTBEAT_SCHEMA, OFFSET_SCHEMA, "io.terrafusion.pacs.DeadLetter"}
    assert set(registry.names()) == expected_names | shared_names | terrafusion_names
    assert len(set(registry.fingerprints())) == len(files)


@pytest.mark.parametrize("file", sorted(load_package_schemas()))
def test_each_schema_file_parses_alone(file: str) -> None:
    text = (resources.files("schemas") / file).read_text(encoding="utf-8")
    parsed: Any = fastavro.parse_schema(json.loads(text), {})  # no named types from other files
    assert parsed["type"] == "record"


def _expected_avro_type(avro: Any) -> Any:
    if isinstance(avro, tuple):
        return {"type": "bytes", "logicalType": "decimal", "precision": avro[1], "scale": avro[2]}
    if avro == DATE:
        return {"type": "int", "logicalType": "date"}
    return avro


@pytest.mark.parametrize("table", TABLES)
def test_row_key_and_envelope_match_the_pacs_tables(table: str) -> None:
    files = load_package_schemas()
    row = files[f"{table}.row.avsc"]
    key = files[f"{table}.key.avsc"]
    env = files[f"{table}.envelope.avsc"]
    assert (row["namespace"], row["name"]) == ("pacs.dbo", table)
    actual = [(f["name"], f["type"], f.get("default", "<none>")) for f in row["fields"]]
    expected = [
        (name, ["null", _expected_avro_type(avro)] if nullable else _expected_avro_type(avro))
        + ((None,) if nullable else ("<none>",))
        for name, avro, nullable in EXPECTED_COLUMNS[table]
    ]
    assert actual == expected
    assert all(f.get("doc") for f in row["fields"] + key["fields"] + env["fields"])
    # The key is the primary-key column, non-null.
    assert (key["namespace"], key["name"]) == ("pacs.dbo", f"{table}Key")
    assert [(f["name"], f["type"]) for f in key["fields"]] == [(KEY_FIELDS[table], "int")]
    # The envelope inlines the very same row and Source definitions.
    assert (env["namespace"], env["name"]) == ("pacs.dbo", f"{table}Envelope")
    fields = {f["name"]: f for f in env["fields"]}
    assert list(fields) == ["before", "after", "op", "source", "ts_ms"]
    assert fields["before"]["type"] == ["null", row]
    assert fields["after"]["type"] == ["null", f"pacs.dbo.{table}"]
    assert fields["before"]["default"] is fields["after"]["default"] is None
    assert fields["op"]["type"] == "string"
    assert all(f"'{op}'" in fields["op"]["doc"] for op in "cudr")
    assert fields["source"]["type"] == files["Source.avsc"]
    assert fields["ts_ms"]["type"] == TS_MILLIS


def test_source_heartbeat_and_offset_fields() -> None:
    files = load_package_schemas()
    src = files["Source.avsc"]
    assert f"{src['namespace']}.{src['name']}" == SOURCE_SCHEMA
    assert [(f["name"], f["type"]) for f in src["fields"]] == EXPECTED_SOURCE_FIELDS
    assert all(f["default"] is None for f in src["fields"] if isinstance(f["type"], list))
    heartbeat = files["Heartbeat.avsc"]
    assert f"{heartbeat['namespace']}.{heartbeat['name']}" == HEARTBEAT_SCHEMA
    assert [(f["name"], f["type"]) for f in heartbeat["fields"]] == [
        ("db", "string"),
        ("commit_lsn", ["null", "string"]),
        ("ts_ms", TS_MILLIS),
    ]
    offset = files["Offset.avsc"]
    assert f"{offset['namespace']}.{offset['name']}" == OFFSET_SCHEMA
    assert [(f["name"], f["type"]) for f in offset["fields"]] == [
        ("version", "int"),
        ("commit_lsn", ["null", "string"]),
        ("change_lsn", ["null", "string"]),
        ("event_serial_no", ["null", "long"]),
        ("snapshot_completed", "boolean"),
        ("snapshot_lsn", ["null", "string"]),
        ("snapshot_table", ["null", "string"]),
        ("snapshot_last_key", ["null", "string"]),
        ("ts_ms", "long"),
    ]


@pytest.mark.parametrize(
    ("table", "kind", "name"),
    [
        ("Property", "key", "pacs.dbo.PropertyKey"),
        ("dbo.PropertyOwner", "row", "pacs.dbo.PropertyOwner"),
        ("dbo.propertyvalue", "envelope", "pacs.dbo.PropertyValueEnvelope"),
        (" STRUCTURE ", "envelope", "pacs.dbo.StructureEnvelope"),
    ],
)
def test_schema_for_table(table: str, kind: Any, name: str) -> None:
    assert schema_for_table(table, kind) == name


def test_schema_for_table_rejects_unknown_tables_and_kinds() -> None:
    with pytest.raises(SchemaMismatchError, match="not in the event contract"):
        schema_for_table("dbo.Parcel", "row")
    with pytest.raises(SchemaMismatchError):
        schema_for_table("sales.Property", "row")
    with pytest.raises(ValueError, match="schema kind"):
        schema_for_table("Property", "value")  # type: ignore[arg-type]


def test_public_api_is_exported() -> None:
    assert all(hasattr(schemas, name) for name in schemas.__all__)


# ------------------------------------------------------------------------------------------------
# Round trips and the wire format


@pytest.mark.parametrize("op", ["c", "u", "d", "r"])
@pytest.mark.parametrize("table", TABLES)
def test_envelope_round_trip(codec: AvroCodec, table: str, op: str) -> None:
    name = schema_for_table(table, "envelope")
    event = envelope(table, op)
    data = codec.encode(name, event)
    decoded = codec.decode(data)
    assert decoded == DecodedRecord(name, codec.registry.by_name(name).fingerprint, event)
    # Byte-identical to fastavro's own encoder.
    assert data[10:] == fastavro_body(codec.registry, name, event)


def test_decimals_keep_the_schema_scale(codec: AvroCodec) -> None:
    row = dict(ROWS["Structure"], Bathrooms=Decimal("2"))
    owner = dict(ROWS["PropertyOwner"], OwnershipPercentage=Decimal("50"))
    got_row = codec.decode(codec.encode("pacs.dbo.Structure", row)).value
    got_owner = codec.decode(codec.encode("pacs.dbo.PropertyOwner", owner)).value
    assert str(got_row["Bathrooms"]) == "2.0"
    assert str(got_owner["OwnershipPercentage"]) == "50.00"
    value = codec.decode(codec.encode("pacs.dbo.PropertyValue", ROWS["PropertyValue"])).value
    assert [str(value[c]) for c in ("AssessedValue", "MarketValue", "LandValue")] == [
        "312450.00",
        "999999999999.99",
        "-85000.10",
    ]
    acreage = codec.decode(codec.encode("pacs.dbo.Property", ROWS["Property"])).value["Acreage"]
    assert acreage.as_tuple().exponent == -4


def test_dates_and_timestamps(codec: AvroCodec) -> None:
    owner = dict(ROWS["PropertyOwner"], StartDate=date(1, 1, 1), EndDate=date(9999, 12, 31))
    value = codec.decode(codec.encode("pacs.dbo.PropertyOwner", owner)).value
    assert (value["StartDate"], value["EndDate"]) == (date(1, 1, 1), date(9999, 12, 31))
    # Epoch milliseconds and aware datetimes (any zone) are the same instant; reads are UTC.
    pacific = timezone(timedelta(hours=-7))
    for ts in (1717243200456, datetime(2024, 6, 1, 5, 0, 0, 456789, tzinfo=pacific)):
        got = codec.decode(codec.encode(HEARTBEAT_SCHEMA, {"db": "pacs", "ts_ms": ts})).value
        assert got == {
            "db": "pacs",
            "commit_lsn": None,
            "ts_ms": datetime(2024, 6, 1, 12, 0, 0, 456000, tzinfo=UTC),
        }
    before_epoch = codec.encode(
        HEARTBEAT_SCHEMA, {"db": "x", "ts_ms": datetime(1969, 12, 31, 23, 59, 59, 999500, UTC)}
    )
    assert codec.decode(before_epoch).value["ts_ms"] == datetime(1969, 12, 31, 23, 59, 59, 999000, UTC)
    assert before_epoch[10:] == fastavro_body(
        codec.registry,
        HEARTBEAT_SCHEMA,
        {"db": "x", "ts_ms": datetime(1969, 12, 31, 23, 59, 59, 999500, UTC)},
    )


def test_wire_format_is_single_object_encoding(codec: AvroCodec) -> None:
    for file, schema in load_package_schemas().items():
        entry = codec.registry.by_name(f"{schema['namespace']}.{schema['name']}")
        assert entry.fingerprint == fingerprint(schema), file
        assert entry.fingerprint.hex() == fastavro_fingerprint(
            to_parsing_canonical_form(schema), "CRC-64-AVRO"
        )
    name = "pacs.dbo.PropertyEnvelope"
    data = codec.encode(name, envelope("Property", "c"))
    assert data[:2] == MAGIC == b"\xc3\x01"
    assert data[2:10] == fingerprint(load_package_schemas()["Property.envelope.avsc"])
    key = codec.encode("pacs.dbo.PropertyKey", {"PropertyID": 1001})
    assert key == MAGIC + bytes.fromhex("6d1b5f313f4279c2") + b"\xd2\x0f"  # 1001 -> zigzag 2002 -> varint


# ------------------------------------------------------------------------------------------------
# CRC-64-AVRO, checked against an independent implementation and Apache Avro's test data

_EMPTY = 0xC15D213AA4D7A795


def crc64_bitwise(data: bytes) -> int:
    """The Avro spec's Rabin fingerprint, one bit at a time (no table)."""
    fp = _EMPTY
    for byte in data:
        fp ^= byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
    return fp


# From apache/avro share/test/data/schema-tests.txt (fingerprints are Java's signed longs).
# Case 026's default is "true" there, which fastavro rightly rejects; defaults are not canonical.
APACHE_VECTORS = [
    ('"null"', '"null"', 7195948357588979594),
    ('{"type":"boolean"}', '"boolean"', -6970731678124411036),
    ('"int"', '"int"', 8247732601305521295),
    ('{"type":"long"}', '"long"', -3434872931120570953),
    ('"string"', '"string"', -8142146995180207161),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    (
        '{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
        '{"name":"x.y.foo","type":"record","fields":[]}',
        5916914534497305771,
    ),
    (
        '{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}',
        '{"name":"a.b.foo","type":"record","fields":[]}',
        -4616218487480524110,
    ),
    (
        '{"fields":[], "type":"record", "name":"foo", "doc":"Useful info"}',
        '{"name":"foo","type":"record","fields":[]}',
        -4824392279771201922,
    ),
    (
        '{"fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":true},'
        '{"order":"descending","name":"f2","doc":"Hello","type":"int"}], "type":"record", "name":"foo"}',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}',
        -4860222112080293046,
    ),
    (
        '{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}',
        '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}',
        -4448647247586288245,
    ),
    (
        '{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
        '{"name":"x.y.z.foo","type":"fixed","size":32}',
        -3064184465700546786,
    ),
    ('{ "items":{"type":"null"}, "type":"array"}', '{"type":"array","items":"null"}', -589620603366471059),
    ('{ "values":"string", "type":"map"}', '{"type":"map","values":"string"}', -8732877298790414990),
    (
        '{"name":"PigValue","type":"record",'
        '"fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
        '{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
        -1759257747318642341,
    ),
]


@pytest.mark.parametrize(("text", "canonical", "signed_fp"), APACHE_VECTORS)
def test_fingerprint_matches_apache_avro_test_data(text: str, canonical: str, signed_fp: int) -> None:
    schema = json.loads(text)
    assert parsing_canonical_form(schema) == canonical
    unsigned = signed_fp % (1 << 64)
    assert crc64_avro(canonical.encode()) == unsigned == crc64_bitwise(canonical.encode())
    assert fingerprint(schema) == unsigned.to_bytes(8, "little")


def test_int_fingerprint_byte_order() -> None:
    # The integer is 0x7275d51a3f395c8f; the wire carries it little-endian.
    assert crc64_avro(b'"int"') == 0x7275D51A3F395C8F
    assert fingerprint("int") == bytes.fromhex("8f5c393f1ad57572")


def test_fingerprints_of_shipped_schemas_match_the_reference(registry: SchemaRegistry) -> None:
    for file, schema in load_package_schemas().items():
        canonical = to_parsing_canonical_form(schema)
        entry = registry.by_fingerprint(fingerprint(schema))
        assert entry.canonical_form == canonical, file
        assert int.from_bytes(entry.fingerprint, "little") == crc64_bitwise(canonical.encode()), file


# ------------------------------------------------------------------------------------------------
# Undecodable events


@pytest.fixture(scope="module")
def sample(codec: AvroCodec) -> bytes:
    return codec.encode("pacs.dbo.PropertyOwnerEnvelope", envelope("PropertyOwner", "u"))


def _undecodable(codec: AvroCodec, data: bytes, reason: str) -> UndecodableEventError:
    with pytest.raises(UndecodableEventError) as info:
        codec.decode(data)
    err = info.value
    assert err.code is ErrorCode.UNDECODABLE_EVENT
    assert isinstance(err, PoisonMessageError)
    assert err.context["reason"] == reason
    assert str(err).startswith("PACS-012: ")
    return err


def test_too_short_and_bad_magic(codec: AvroCodec, sample: bytes) -> None:
    _undecodable(codec, b"", "too_short")
    _undecodable(codec, sample[:9], "too_short")
    _undecodable(codec, b"\x00\x00" + sample[2:], "bad_magic")
    _undecodable(codec, b"\xc3\x02" + sample[2:], "bad_magic")
    _undecodable(codec, b'{"op": "c", "after": {}}', "bad_magic")


def test_unknown_fingerprint(codec: AvroCodec, sample: bytes) -> None:
    err = _undecodable(codec, MAGIC + b"\x01" * 8 + sample[10:], "unknown_fingerprint")
    assert err.context["fingerprint"] == "01" * 8


def test_every_truncation_is_undecodable(codec: AvroCodec, sample: bytes) -> None:
    for cut in range(10, len(sample)):
        err = _undecodable(codec, sample[:cut], "corrupt_body")
        assert err.__cause__ is not None


def test_trailing_bytes(codec: AvroCodec, sample: bytes) -> None:
    err = _undecodable(codec, sample + b"\x00", "trailing_bytes")
    assert "1 unexpected byte" in err.message


def test_corrupt_bodies_fail_only_as_undecodable(codec: AvroCodec, sample: bytes) -> None:
    rng = random.Random(12)
    failures = 0
    for _ in range(300):
        data = bytearray(sample)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(10, len(data))] = rng.randrange(256)
        try:
            codec.decode(bytes(data))
        except UndecodableEventError:
            failures += 1
    assert failures > 0


def test_resolver_is_asked_for_unknown_fingerprints_once(sample: bytes) -> None:
    shipped = SchemaRegistry.from_package()
    envelope_schema = shipped.by_name("pacs.dbo.PropertyOwnerEnvelope").schema
    asked: list[bytes] = []

    def resolver(fp: bytes) -> Mapping[str, Any] | None:
        asked.append(fp)
        return envelope_schema if fp == sample[2:10] else None

    consumer = AvroCodec(SchemaRegistry(resolver=resolver))
    first = consumer.decode(sample)
    second = consumer.decode(sample)
    assert first == second == AvroCodec(shipped).decode(sample)
    assert asked == [sample[2:10]]
    assert consumer.registry.names() == []  # resolved schemas never become current
    assert consumer.registry.by_fingerprint(sample[2:10]).name == "pacs.dbo.PropertyOwnerEnvelope"
    _undecodable(consumer, MAGIC + b"\x02" * 8 + sample[10:], "unknown_fingerprint")
    assert asked[-1] == b"\x02" * 8


def test_resolver_answering_with_the_wrong_schema_is_unknown(sample: bytes) -> None:
    wrong = load_package_schemas()["Heartbeat.avsc"]
    consumer = AvroCodec(SchemaRegistry(resolver=lambda fp: wrong))
    _undecodable(consumer, sample, "unknown_fingerprint")
    invalid = AvroCodec(SchemaRegistry(resolver=lambda fp: {"type": "record", "name": "x", "fields": [{}]}))
    err = _undecodable(invalid, sample, "unknown_fingerprint")
    assert isinstance(err.__cause__, SchemaMismatchError)


# ------------------------------------------------------------------------------------------------
# Schema evolution


def evolved_row() -> dict[str, Any]:
    row = copy.deepcopy(load_package_schemas()["Property.row.avsc"])
    row["fields"].append(
        {"name": "ZoningCode", "type": ["null", "string"], "default": None, "doc": "Added at runtime."}
    )
    return row


def test_evolved_writer_read_with_the_shipped_reader() -> None:
    producer = AvroCodec(SchemaRegistry.from_package())
    shipped_fp = producer.registry.by_name("pacs.dbo.Property").fingerprint
    evolved_fp = producer.registry.register(evolved_row())
    assert producer.registry.register(evolved_row()) == evolved_fp  # idempotent
    assert evolved_fp != shipped_fp
    assert producer.registry.by_name("pacs.dbo.Property").fingerprint == evolved_fp  # now current
    data = producer.encode("pacs.dbo.Property", dict(ROWS["Property"], ZoningCode="R-1"))
    assert data[2:10] == evolved_fp

    def from_producer(fp: bytes) -> Mapping[str, Any] | None:  # stands in for the Kafka schema topic
        entry = producer.registry.resolve(fp)
        return None if entry is None else entry.schema

    consumer = AvroCodec(SchemaRegistry.from_package(resolver=from_producer))
    as_written = consumer.decode(data)
    assert as_written.value == dict(ROWS["Property"], ZoningCode="R-1")
    as_read = consumer.decode_as(data, "pacs.dbo.Property")
    assert as_read == DecodedRecord("pacs.dbo.Property", evolved_fp, ROWS["Property"])
    assert consumer.registry.by_name("pacs.dbo.Property").fingerprint == shipped_fp

    # And the other way: an old event read with the evolved reader gets the default.
    old = consumer.encode("pacs.dbo.Property", ROWS["Property"])
    assert producer.decode_as(old, "pacs.dbo.Property").value == dict(ROWS["Property"], ZoningCode=None)


def test_incompatible_reader_is_undecodable(codec: AvroCodec, sample: bytes) -> None:
    with pytest.raises(UndecodableEventError) as info:
        codec.decode_as(sample, HEARTBEAT_SCHEMA)
    assert info.value.context["reason"] == "incompatible_schema"
    with pytest.raises(SchemaMismatchError, match="no schema named"):
        codec.decode_as(sample, "pacs.dbo.Nope")


def test_registry_refuses_conflicting_and_invalid_schemas() -> None:
    registry = SchemaRegistry.from_package()
    rescaled = copy.deepcopy(load_package_schemas()["Property.row.avsc"])
    acreage = next(f for f in rescaled["fields"] if f["name"] == "Acreage")
    acreage["type"][1]["scale"] = 2  # same canonical form, same fingerprint, different meaning
    assert fingerprint(rescaled) == registry.by_name("pacs.dbo.Property").fingerprint
    with pytest.raises(SchemaMismatchError, match="other logical types"):
        registry.register(rescaled)
    redocumented = copy.deepcopy(load_package_schemas()["Property.row.avsc"])
    redocumented["doc"] = "Reworded."
    assert registry.register(redocumented) == registry.by_name("pacs.dbo.Property").fingerprint
    with pytest.raises(SchemaMismatchError, match="named Avro record"):
        registry.register({"type": "array", "items": "int"})
    with pytest.raises(SchemaMismatchError, match="not a valid Avro schema"):
        registry.register({"type": "record", "name": "Bad", "fields": [{"name": "x", "type": "nope"}]})
    with pytest.raises(KeyError):
        registry.by_name("pacs.dbo.Nope")
    with pytest.raises(KeyError):
        registry.by_fingerprint(b"\x00" * 8)


# ------------------------------------------------------------------------------------------------
# Records that do not fit


@pytest.mark.parametrize(
    ("name", "record", "match"),
    [
        (
            "pacs.dbo.Property",
            {k: v for k, v in ROWS["Property"].items() if k != "ParcelNumber"},
            "ParcelNumber",
        ),
        ("pacs.dbo.Property", dict(ROWS["Property"], ParcelNumber=None), "str"),
        ("pacs.dbo.Property", dict(ROWS["Property"], Acerage=Decimal("1")), "Acerage"),
        ("pacs.dbo.Property", dict(ROWS["Property"], PropertyID="1001"), "str"),
        ("pacs.dbo.Property", dict(ROWS["Property"], PropertyID=2**31), "32 bits"),
        ("pacs.dbo.Property", dict(ROWS["Property"], YearBuilt=1948.0), "float"),
        ("pacs.dbo.Property", dict(ROWS["Property"], Acreage=Decimal("0.24751")), "decimal places"),
        ("pacs.dbo.Property", dict(ROWS["Property"], Acreage=Decimal("1234567.1")), "digits"),
        ("pacs.dbo.Property", dict(ROWS["Property"], Acreage=0.25), "Decimal"),
        ("pacs.dbo.Property", dict(ROWS["Property"], Acreage=Decimal("NaN")), "Decimal|NaN|nan"),
        ("pacs.dbo.PropertyOwner", dict(ROWS["PropertyOwner"], StartDate="2019-03-15"), "str"),
        (
            "pacs.dbo.PropertyOwner",
            dict(ROWS["PropertyOwner"], StartDate=datetime(2019, 3, 15, tzinfo=UTC)),
            "date",
        ),
        (HEARTBEAT_SCHEMA, {"db": "pacs", "ts_ms": datetime(2024, 6, 1)}, "naive"),  # noqa: DTZ001
        (OFFSET_SCHEMA, {"version": 1, "snapshot_completed": "false", "ts_ms": 0}, "bool"),
        ("pacs.dbo.PropertyEnvelope", dict(envelope("Property", "c"), source=None), "NoneType"),
    ],
)
def test_record_that_does_not_fit_is_a_schema_mismatch(
    codec: AvroCodec, name: str, record: dict[str, Any], match: str
) -> None:
    with pytest.raises(SchemaMismatchError, match=match) as info:
        codec.encode(name, record)
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, FatalError)
    assert err.code is ErrorCode.SCHEMA_MISMATCH
    assert err.context == {"schema": name}
    assert err.__cause__ is not None


def test_unknown_schema_name_is_a_schema_mismatch(codec: AvroCodec) -> None:
    with pytest.raises(SchemaMismatchError, match="no schema named"):
        codec.encode("pacs.dbo.Parcel", {})


def test_schemas_the_fast_encoder_lacks_fall_back_to_fastavro() -> None:
    schema = {
        "type": "record",
        "name": "Audit",
        "namespace": "io.terrafusion.pacs",
        "fields": [
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "note", "type": "string", "default": "none"},
        ],
    }
    assert compile_encoder(schema) is None
    codec = AvroCodec(SchemaRegistry())
    codec.registry.register(schema)
    data = codec.encode("io.terrafusion.pacs.Audit", {"kind": "B", "tags": ["x", "y"]})
    assert codec.decode(data).value == {"kind": "B", "tags": ["x", "y"], "note": "none"}
    with pytest.raises(SchemaMismatchError):
        codec.encode("io.terrafusion.pacs.Audit", {"tags": []})
    with pytest.raises(SchemaMismatchError):
        codec.encode("io.terrafusion.pacs.Audit", {"kind": "C", "tags": []})


# ------------------------------------------------------------------------------------------------
# The fast encoder writes exactly what fastavro writes


def random_datum(schema: Any, named: dict[str, Any], rng: random.Random) -> Any:
    if isinstance(schema, str) and schema in named:
        return random_datum(named[schema], named, rng)
    if isinstance(schema, list):
        branch = rng.choice(schema)
        return None if branch == "null" else random_datum(branch, named, rng)
    kind = schema if isinstance(schema, str) else schema["type"]
    logical = None if isinstance(schema, str) else schema.get("logicalType")
    if kind == "record":
        return {f["name"]: random_datum(f["type"], named, rng) for f in schema["fields"]}
    if kind == "array":
        return [random_datum(schema["items"], named, rng) for _ in range(rng.choice([0, 1, 3]))]
    if logical == "decimal":
        digits = rng.randint(0, schema["precision"])
        unscaled = rng.randint(-(10**digits) + 1, 10**digits - 1)
        return Decimal(unscaled).scaleb(-schema["scale"])
    if logical == "date":
        return date.fromordinal(rng.randint(1, date.max.toordinal()))
    if logical == "timestamp-millis":
        return rng.choice([rng.randint(-(2**45), 2**45), datetime.fromtimestamp(rng.randint(0, 2**33), UTC)])
    generators: dict[str, Callable[[], Any]] = {
        "int": lambda: rng.choice(
            [0, -1, 63, 64, -65, 2**31 - 1, -(2**31), rng.randint(-(2**31), 2**31 - 1)]
        ),
        "long": lambda: rng.choice([2**63 - 1, -(2**63), rng.randint(-(2**40), 2**40)]),
        "string": lambda: "".join(rng.choice("aZ9 ñ€𝄞'\"") for _ in range(rng.choice([0, 5, 63, 64, 200]))),
        "boolean": lambda: rng.random() < 0.5,
        "bytes": lambda: rng.randbytes(rng.choice([0, 5, 63, 64, 200])),
    }
    return generators[kind]()


def test_fast_encoder_is_byte_identical_to_fastavro(registry: SchemaRegistry, codec: AvroCodec) -> None:
    rng = random.Random(2024)
    for schema in load_package_schemas().values():
        name = f"{schema['namespace']}.{schema['name']}"
        for _ in range(25):
            record = random_datum(schema, _named_records(schema, {}), rng)
            data = codec.encode(name, record)
            assert data[10:] == fastavro_body(registry, name, record), record
            assert codec.decode(data).value == json_to_python(
                registry.by_name(name).schema, python_to_json(record)
            )


# ------------------------------------------------------------------------------------------------
# Golden vectors


def strip_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_docs(v) for k, v in node.items() if k != "doc"}
    if isinstance(node, list):
        return [strip_docs(v) for v in node]
    return node


def contract_sha256(schema: Any) -> str:
    text = json.dumps(strip_docs(schema), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _named_records(node: Any, named: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, list):
        for branch in node:
            _named_records(branch, named)
    elif isinstance(node, dict) and node.get("type") == "record":
        named[f"{node['namespace']}.{node['name']}"] = node
        for item in node["fields"]:
            _named_records(item["type"], named)
    return named


def json_to_python(schema: Any, value: Any, named: dict[str, Any] | None = None) -> Any:
    """Golden-vector JSON (decimal strings, ISO dates, epoch ms) to codec values, by schema."""
    named = _named_records(schema, {}) if named is None else named
    if isinstance(schema, str):
        return json_to_python(named[schema], value, named) if schema in named else value
    if isinstance(schema, list):
        if value is None:
            return None
        (branch,) = [b for b in schema if b != "null"]
        return json_to_python(branch, value, named)
    if schema["type"] == "record":
        return {f["name"]: json_to_python(f["type"], value.get(f["name"]), named) for f in schema["fields"]}
    logical = schema.get("logicalType")
    if logical == "decimal":
        return Decimal(value).quantize(Decimal(1).scaleb(-schema["scale"]))
    if logical == "date":
        return date.fromisoformat(value)
    if logical == "timestamp-millis":
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
    return value


def python_to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: python_to_json(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    if isinstance(value, date):
        return value.isoformat()
    return value


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    text = (resources.files("schemas") / "vectors" / "golden.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def test_golden_schemas_are_unchanged(registry: SchemaRegistry, golden: dict[str, Any]) -> None:
    files = load_package_schemas()
    assert sorted(v["file"] for v in golden["schemas"]) == sorted(files), "a schema file was added or removed"
    for vector in golden["schemas"]:
        schema = files[vector["file"]]
        entry = registry.by_name(vector["name"])
        assert entry.canonical_form == vector["canonical_form"], vector["file"]
        assert entry.fingerprint.hex() == vector["fingerprint"], vector["file"]
        assert f"0x{crc64_bitwise(vector['canonical_form'].encode()):016x}" == vector["crc64_avro"]
        # Logical types and defaults are not in the canonical form: pin them too.
        assert contract_sha256(schema) == vector["contract_sha256"], f"{vector['file']} changed"


def test_golden_events_reproduce_exactly(codec: AvroCodec, golden: dict[str, Any]) -> None:
    ops = {v["record"]["op"] for v in golden["events"] if "op" in v["record"]}
    assert ops == {"c", "u", "d", "r"}
    covered = {v["schema"] for v in golden["events"]}
    assert {schema_for_table(t, "envelope") for t in TABLES} <= covered
    for vector in golden["events"]:
        name, expected = vector["schema"], bytes.fromhex(vector["encoded"])
        entry = codec.registry.by_name(name)
        record = json_to_python(entry.schema, vector["record"])
        assert codec.encode(name, record) == expected, vector["description"]
        assert expected[:10] == MAGIC + entry.fingerprint
        decoded = codec.decode(expected)
        assert decoded.schema_name == name
        assert python_to_json(decoded.value) == vector["record"], vector["description"]
