"""The compiled Avro decoder (schemas._decoder) reads exactly what fastavro reads, and the codec uses it.

fastavro is the reference: every body is decoded by both, and the results must be the same types, the
same values and the same dict key order. Malformed bodies must fail with the reasons the codec gave
when it read with fastavro, except where the compiled decoder is stricter on purpose (documented in
schemas._decoder: over-long varints, an int beyond 32 bits, a negative union or enum index, a boolean
byte other than 0/1, a decimal wider than its precision); there fastavro returns garbage, and the
compiled decoder says ``corrupt_body``.
"""

from __future__ import annotations

import copy
import io
import json
import math
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from importlib import resources
from typing import Any

import fastavro
import pytest

from schemas import AvroCodec, DecodedRecord, SchemaRegistry, UndecodableEventError, load_package_schemas
from schemas import _decoder as decoder_module
from schemas._decoder import Decoder, compile_decoder
from schemas.codec import HEADER_SIZE, MAGIC

SEED = 20240601
EPOCH_DAY = date(1970, 1, 1).toordinal()
DATETIME_MIN_MS = (datetime.min.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    milliseconds=1
)
DATETIME_MAX_MS = (datetime.max.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    milliseconds=1
)
# What the compiled decoder refuses and fastavro reads (see the module docstring of schemas._decoder).
STRICTER = ("longer than an Avro", "index -", "boolean byte", "digits (decimal(")


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.from_package()


@pytest.fixture(scope="module")
def codec(registry: SchemaRegistry) -> AvroCodec:
    return AvroCodec(registry)


def package_names() -> list[str]:
    return sorted(f"{s['namespace']}.{s['name']}" for s in load_package_schemas().values())


# ------------------------------------------------------------------------------------------------
# Strict comparison and the two readers


def assert_identical(got: Any, expected: Any, path: str = "$") -> None:
    """Same type at every level, same value, same dict key order (and same Decimal exponent)."""
    assert type(got) is type(expected), f"{path}: {type(got).__name__} != {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), f"{path}: keys {list(got)} != {list(expected)}"
        for key in expected:
            assert_identical(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), f"{path}: {len(got)} items != {len(expected)}"
        for index, (left, right) in enumerate(zip(got, expected, strict=True)):
            assert_identical(left, right, f"{path}[{index}]")
    elif isinstance(expected, Decimal):
        assert got.as_tuple() == expected.as_tuple(), f"{path}: {got!r} != {expected!r}"
    elif isinstance(expected, float):
        assert struct.pack("<d", got) == struct.pack("<d", expected), f"{path}: {got!r} != {expected!r}"
    elif isinstance(expected, datetime):
        assert got.tzinfo is expected.tzinfo, f"{path}: tzinfo {got.tzinfo!r} != {expected.tzinfo!r}"
        assert got == expected, f"{path}: {got!r} != {expected!r}"
    else:
        assert got == expected, f"{path}: {got!r} != {expected!r}"


def fastavro_read(parsed: Any, body: bytes) -> tuple[Any, int]:
    stream = io.BytesIO(body)
    value = fastavro.schemaless_reader(stream, parsed, None)
    return value, stream.tell()


def fastavro_write(parsed: Any, datum: Any) -> bytes:
    stream = io.BytesIO()
    fastavro.schemaless_writer(stream, parsed, datum)
    return stream.getvalue()


_COMPILED: dict[str, Decoder] = {}


def compiled(parsed: Any) -> Decoder:
    """The compiled decoder of a schema, compiled once per test session."""
    key = json.dumps(parsed, sort_keys=True, default=str)
    if key not in _COMPILED:
        decoder = compile_decoder(parsed)
        assert decoder is not None
        _COMPILED[key] = decoder
    return _COMPILED[key]


def check_body(parsed: Any, body: bytes) -> Any:
    """Decode a well-formed body with both readers; they must agree exactly. Returns the value."""
    decode = compiled(parsed)
    expected, expected_end = fastavro_read(parsed, body)
    got, end = decode(body, 0)
    assert end == expected_end == len(body)
    assert_identical(got, expected)
    return got


def outcome(read: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", read()
    except UndecodableEventError as exc:
        return str(exc.context["reason"]), exc


def compiled_outcome(codec: AvroCodec, data: bytes) -> tuple[str, Any]:
    return outcome(lambda: codec.decode(data).value)


def fastavro_outcome(codec: AvroCodec, data: bytes) -> tuple[str, Any]:
    """What the codec answered before the compiled decoder: its fastavro path."""
    entry = codec.registry.by_fingerprint(data[2:HEADER_SIZE])
    return outcome(lambda: AvroCodec._read(data, entry, None))


def assert_same_outcome(codec: AvroCodec, data: bytes) -> str:
    """The compiled path answers as the fastavro path did, or refuses on one of the stricter checks."""
    got_reason, got = compiled_outcome(codec, data)
    expected_reason, expected = fastavro_outcome(codec, data)
    if got_reason == "corrupt_body" and any(mark in got.message for mark in STRICTER):
        return "stricter"
    assert got_reason == expected_reason, (data.hex(), got, expected)
    if got_reason == "ok":
        assert_identical(got, expected)
    return got_reason


# ------------------------------------------------------------------------------------------------
# Random data for any schema, biased to the edges


STRING_ALPHABET = "aZ9 '\"\\\x00\x7fñ€𝄞中\u2028"
INT_EDGES = [0, 1, -1, 63, -64, 64, -65, 8191, -8192, 8192, 2**20, 2**31 - 1, -(2**31)]
LONG_EDGES = [*INT_EDGES, 2**31, -(2**31) - 1, 2**53, 2**62, 2**63 - 1, -(2**63)]


def random_string(rng: random.Random) -> str:
    # Lengths around the varint steps of the length (1 byte up to 63 bytes, 2 up to 8191, then 3).
    length = 8192 if rng.random() < 0.01 else rng.choice([0, 0, 1, 5, 21, 31, 32, 63, 64, 200])
    return "".join(rng.choice(STRING_ALPHABET) for _ in range(length))


def random_int(rng: random.Random, edges: list[int], bits: int) -> int:
    if rng.random() < 0.5:
        return rng.choice(edges)
    width = rng.randint(1, bits - 1)
    return rng.randint(-(2 ** (width - 1)), 2 ** (width - 1) - 1)


def random_decimal(rng: random.Random, precision: int, scale: int, size: int | None) -> Decimal:
    limit = 10**precision - 1
    if size is not None:  # a fixed decimal: the unscaled value must fit the bytes as well
        limit = min(limit, 2 ** (8 * size - 1) - 1)
    unscaled = rng.choice(
        [0, 1, -1, limit, -limit, rng.randint(-limit, limit), rng.randint(-min(limit, 999), min(limit, 999))]
    )
    return Decimal(unscaled).scaleb(-scale, Context(prec=precision + 1))  # exact


class RandomDatum:
    """Makes a random datum of a parsed schema, for fastavro's writer."""

    def __init__(self, parsed: Any, rng: random.Random) -> None:
        self.rng = rng
        self.named: dict[str, Any] = (
            dict(parsed.get("__named_schemas", {})) if isinstance(parsed, dict) else {}
        )
        self.depth = 0

    def __call__(self, schema: Any) -> Any:
        rng = self.rng
        if isinstance(schema, str) and schema in self.named:
            schema = self.named[schema]
        if isinstance(schema, list):
            branches = schema
            if self.depth > 4:  # keep recursive schemas finite: prefer null
                branches = [b for b in schema if b == "null"] or schema
            return self(rng.choice(branches))
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = None if isinstance(schema, str) else schema.get("logicalType")
        if isinstance(kind, dict | list):
            return self(kind)
        if kind in ("record", "error"):
            self.depth += 1
            try:
                return {f["name"]: self(f["type"]) for f in schema["fields"]}
            finally:
                self.depth -= 1
        if kind == "array":
            count = rng.choice([0, 1, 2, 3, 3, 70 if self.depth < 2 else 4]) if self.depth < 3 else 0
            return [self(schema["items"]) for _ in range(count)]
        if kind == "map":
            count = rng.choice([0, 1, 3]) if self.depth < 3 else 0
            return {random_string(rng): self(schema["values"]) for _ in range(count)}
        if logical == "decimal":
            size = schema.get("size") if kind == "fixed" else None
            return random_decimal(rng, schema["precision"], schema.get("scale", 0), size)
        if logical == "date":
            return date.fromordinal(
                rng.choice([1, EPOCH_DAY - 1, EPOCH_DAY, EPOCH_DAY + 1, date.max.toordinal()])
            )
        if logical in ("timestamp-millis", "local-timestamp-millis"):
            return rng.choice([0, -1, 1, DATETIME_MIN_MS, DATETIME_MAX_MS, rng.randint(-(2**45), 2**45)])
        if logical in ("timestamp-micros", "local-timestamp-micros"):
            return rng.choice(
                [0, -1, 1, DATETIME_MIN_MS * 1000, DATETIME_MAX_MS * 1000, rng.randint(-(2**55), 2**55)]
            )
        if logical == "time-millis":
            return rng.choice([0, 1, 86_399_999, rng.randrange(86_400_000)])
        if logical == "time-micros":
            return rng.choice([0, 1, 86_399_999_999, rng.randrange(86_400_000_000)])
        if logical == "uuid":
            return uuid.UUID(int=rng.getrandbits(128), version=4)
        if kind == "enum":
            return rng.choice(schema["symbols"])
        if kind == "fixed":
            return rng.randbytes(schema["size"])
        generators: dict[str, Callable[[], Any]] = {
            "null": lambda: None,
            "boolean": lambda: rng.random() < 0.5,
            "int": lambda: random_int(rng, INT_EDGES, 32),
            "long": lambda: random_int(rng, LONG_EDGES, 64),
            "float": lambda: rng.choice(
                [0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, rng.uniform(-1e30, 1e30)]
            ),
            "double": lambda: rng.choice([0.0, -0.0, 5e-324, math.inf, math.nan, rng.uniform(-1e300, 1e300)]),
            "bytes": lambda: rng.randbytes(rng.choice([0, 1, 63, 64, 300])),
            "string": lambda: random_string(rng),
        }
        return generators[kind]()


# ------------------------------------------------------------------------------------------------
# Every schema of the contract


@pytest.mark.parametrize("name", package_names())
def test_every_package_schema_compiles(registry: SchemaRegistry, name: str) -> None:
    assert compile_decoder(registry.by_name(name).parsed) is not None
    assert compile_decoder(registry.by_name(name).schema) is not None  # the JSON form too


def test_golden_vectors_decode_as_fastavro_does(codec: AvroCodec) -> None:
    text = (resources.files("schemas") / "vectors" / "golden.json").read_text(encoding="utf-8")
    vectors = json.loads(text)["events"]
    assert len(vectors) >= 10
    for vector in vectors:
        data = bytes.fromhex(vector["encoded"])
        entry = codec.registry.by_fingerprint(data[2:HEADER_SIZE])
        value = check_body(entry.parsed, data[HEADER_SIZE:])
        assert codec.decode(data) == DecodedRecord(entry.name, entry.fingerprint, value)


@pytest.mark.parametrize("name", package_names())
def test_random_records_decode_as_fastavro_does(codec: AvroCodec, name: str) -> None:
    rng = random.Random(f"{SEED}-{name}")
    entry = codec.registry.by_name(name)
    datum = RandomDatum(entry.parsed, rng)
    for _ in range(250):
        body = fastavro_write(entry.parsed, datum(entry.parsed))
        value = check_body(entry.parsed, body)
        assert_identical(codec.decode(MAGIC + entry.fingerprint + body).value, value)
        assert_identical(codec.decode_as(MAGIC + entry.fingerprint + body, name).value, value)


# ------------------------------------------------------------------------------------------------
# The rest of Avro, on schemas of our own

ALL_FEATURES: dict[str, Any] = {
    "type": "record",
    "name": "Everything",
    "namespace": "test.avro",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": {"type": "string"}},
        {"name": "fx", "type": {"type": "fixed", "name": "Hash", "size": 5}},
        {"name": "fx_again", "type": "Hash"},
        {"name": "fx_empty", "type": {"type": "fixed", "name": "Nothing", "size": 0}},
        {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "e_again", "type": ["null", "test.avro.Color"]},
        {"name": "wide", "type": ["null", "int", "string", "Color", {"type": "array", "items": "long"}]},
        {"name": "arr", "type": {"type": "array", "items": ["null", "double", "Hash"]}},
        {
            "name": "nested",
            "type": {"type": "array", "items": {"type": "map", "values": {"type": "array", "items": "int"}}},
        },
        {"name": "m", "type": {"type": "map", "values": "string"}},
        {
            "name": "child",
            "type": {
                "type": "record",
                "name": "Child",
                "namespace": "other.space",
                "fields": [
                    {"name": "x", "type": "int"},
                    {"name": "tag", "type": {"type": "enum", "name": "Tag", "symbols": ["A"]}},
                ],
            },
        },
        {"name": "children", "type": {"type": "array", "items": "other.space.Child"}},
        {"name": "empty", "type": {"type": "record", "name": "Empty", "fields": []}},
        {"name": "empties", "type": {"type": "array", "items": "Empty"}},
        {
            "name": "dec_bytes",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 9},
        },
        {"name": "dec_int", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4}},
        {"name": "dec_tiny", "type": {"type": "bytes", "logicalType": "decimal", "precision": 1, "scale": 1}},
        {
            "name": "dec_fixed",
            "type": {
                "type": "fixed",
                "name": "Money",
                "size": 6,
                "logicalType": "decimal",
                "precision": 12,
                "scale": 2,
            },
        },
        {"name": "dec_fixed_again", "type": ["null", "Money"]},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "tu", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tsu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "lts", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "ltsu", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "last", "type": ["null", "string"], "default": None},
    ],
}

LINKED_LIST: dict[str, Any] = {
    "type": "record",
    "name": "Node",
    "fields": [
        {"name": "value", "type": "long"},
        {"name": "next", "type": ["null", "Node"]},
        {"name": "children", "type": {"type": "array", "items": "Node"}},
    ],
}


@pytest.mark.parametrize("schema", [ALL_FEATURES, LINKED_LIST], ids=["all-features", "recursive"])
def test_other_avro_features_decode_as_fastavro_does(schema: dict[str, Any]) -> None:
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    assert compile_decoder(schema) is not None  # the JSON form compiles too
    rng = random.Random(SEED)
    datum = RandomDatum(parsed, rng)
    from_json = compiled(schema)
    for _ in range(200):
        body = fastavro_write(parsed, datum(parsed))
        check_body(parsed, body)
        got, end = from_json(body, 0)
        assert end == len(body)
        assert_identical(got, fastavro_read(parsed, body)[0])


@pytest.mark.parametrize(
    "schema",
    [
        "int",
        "string",
        ["null", "long"],
        {"type": "array", "items": "string"},
        {"type": "map", "values": {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}},
        {"type": "enum", "name": "E", "symbols": ["X", "Y"]},
    ],
)
def test_top_level_types_other_than_records(schema: Any) -> None:
    parsed = fastavro.parse_schema(schema)
    rng = random.Random(SEED)
    datum = RandomDatum(parsed if isinstance(parsed, dict) else {}, rng)
    for _ in range(50):
        check_body(parsed, fastavro_write(parsed, datum(parsed)))


def zigzag(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while raw > 0x7F:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def test_block_forms_writers_may_use() -> None:
    """Negative block counts (followed by a byte size), several blocks, non-minimal varints."""
    array = fastavro.parse_schema({"type": "array", "items": "string"})
    blocks = zigzag(-2) + zigzag(4) + b"\x02a\x02b" + zigzag(1) + b"\x02c" + zigzag(0)
    assert check_body(array, blocks) == ["a", "b", "c"]
    mapping = fastavro.parse_schema({"type": "map", "values": "int"})
    blocks = zigzag(-1) + zigzag(3) + b"\x02k\x04" + zigzag(2) + b"\x02k\x06\x02j\x08" + zigzag(0)
    assert check_body(mapping, blocks) == {"k": 3, "j": 4}  # a repeated key: the last value wins
    fields = [
        {"name": "u", "type": ["null", "int"]},
        {"name": "l", "type": "long"},
        {"name": "s", "type": "string"},
    ]
    record = fastavro.parse_schema({"type": "record", "name": "R", "fields": fields})
    # Union index 1 in 2 bytes, int 3 in 5 bytes, long 3 in 10 bytes, length 1 in 3 bytes: valid, if odd.
    body = b"\x82\x00" + b"\x86\x80\x80\x80\x00" + b"\x86" + b"\x80" * 8 + b"\x00" + b"\x82\x80\x00z"
    assert check_body(record, body) == {"u": 3, "l": 3, "s": "z"}


# ------------------------------------------------------------------------------------------------
# Fallback to fastavro


@pytest.mark.parametrize(
    ("field_type", "body"),
    [
        ({"type": "int", "logicalType": "my-own"}, b"\x0a"),  # unknown: fastavro returns the int
        ({"type": "int", "logicalType": "decimal", "precision": 4}, b"\x0a"),  # on int: ignored
        ({"type": "string", "logicalType": "date"}, b"\x142024-06-01"),
        ({"type": "fixed", "name": "U", "size": 16, "logicalType": "uuid"}, bytes(range(16))),
        ({"type": "bytes", "logicalType": "decimal", "precision": 0}, b"\x02\x01"),  # fastavro cannot read it
    ],
)
def test_schemas_the_compiled_decoder_lacks_fall_back_to_fastavro(field_type: Any, body: bytes) -> None:
    schema = {
        "type": "record",
        "name": "Odd",
        "namespace": "test",
        "fields": [{"name": "x", "type": field_type}],
    }
    assert compile_decoder(fastavro.parse_schema(copy.deepcopy(schema))) is None
    codec = AvroCodec(SchemaRegistry())
    fp = codec.registry.register(schema)
    data = MAGIC + fp + body
    got, expected = compiled_outcome(codec, data), fastavro_outcome(codec, data)
    assert got[0] == expected[0]
    if got[0] == "ok":
        assert_identical(got[1], expected[1])
    assert codec._readers[MAGIC + fp].decoder is None


def test_unusable_schemas_do_not_compile() -> None:
    assert compile_decoder({"type": "record", "name": "R", "fields": [{"name": "x", "type": "Nope"}]}) is None
    assert compile_decoder({"type": "record", "name": "R", "fields": "x"}) is None
    assert compile_decoder([]) is None
    assert compile_decoder({"type": "enum", "name": "E", "symbols": []}) is None
    assert compile_decoder(42) is None


# ------------------------------------------------------------------------------------------------
# Malformed bodies: the same reasons as before, or stricter


def field_bytes(field_type: Any, value: Any) -> bytes:
    return fastavro_write(fastavro.parse_schema(field_type), value)


VALUATION = "io.terrafusion.model.Valuation"
VALUATION_FIELDS: dict[str, Any] = {
    "valuation_id": 9001,
    "property_id": 1001,
    "tax_year": 2024,
    "assessed_value": Decimal("312450.00"),
    "market_value": Decimal("335000.00"),
    "land_value": Decimal("85000.00"),
    "improvement_value": None,
    "source_commit_lsn": "0000002a:00000104:0001",
    "source_change_lsn": "0000002a:00000104:0003",
    "source_serial": 4,
    "source_ts": datetime(2024, 6, 1, 12, 0, 0, 123000, tzinfo=UTC),
    "deleted": False,
}


def valuation(codec: AvroCodec, **replaced: bytes) -> bytes:
    """A Valuation event built field by field; ``replaced`` gives some fields' bytes as-is."""
    entry = codec.registry.by_name(VALUATION)
    body = b"".join(
        replaced.get(f["name"], field_bytes(f["type"], VALUATION_FIELDS[f["name"]]))
        for f in entry.schema["fields"]
    )
    return MAGIC + entry.fingerprint + body


def expect(
    codec: AvroCodec, data: bytes, reason: str, *, fastavro_reason: str | None = None
) -> UndecodableEventError:
    got_reason, err = compiled_outcome(codec, data)
    assert got_reason == reason, err
    assert isinstance(err, UndecodableEventError)
    assert err.context["schema"] == VALUATION
    assert err.__cause__ is not None or reason == "trailing_bytes"
    assert fastavro_outcome(codec, data)[0] == (fastavro_reason or reason)
    return err


def test_well_formed_valuation(codec: AvroCodec) -> None:
    assert codec.decode(valuation(codec)).value == VALUATION_FIELDS
    assert assert_same_outcome(codec, valuation(codec)) == "ok"


def test_every_truncation_is_corrupt_body(codec: AvroCodec) -> None:
    for name in package_names():
        rng = random.Random(f"{SEED}-truncate-{name}")
        entry = codec.registry.by_name(name)
        datum = RandomDatum(entry.parsed, rng)
        for _ in range(5):
            data = MAGIC + entry.fingerprint + fastavro_write(entry.parsed, datum(entry.parsed))
            cuts = range(HEADER_SIZE, len(data))
            if len(cuts) > 400:  # a long random string: every cut near the ends, a sample in between
                middle = range(cuts.start + 200, cuts.stop - 200)
                cuts = [*cuts[:200], *rng.sample(middle, min(200, len(middle))), *cuts[-200:]]  # type: ignore[assignment]
            for cut in cuts:
                assert compiled_outcome(codec, data[:cut])[0] == "corrupt_body", (name, cut)
                assert fastavro_outcome(codec, data[:cut])[0] == "corrupt_body", (name, cut)


def test_trailing_bytes(codec: AvroCodec) -> None:
    err = expect(codec, valuation(codec) + b"\x00\x01", "trailing_bytes")
    assert err.message.startswith("2 unexpected byte(s) after the io.terrafusion.model.Valuation body")


def test_invalid_utf8(codec: AvroCodec) -> None:
    err = expect(codec, valuation(codec, source_commit_lsn=b"\x04\xc3\x28"), "corrupt_body")
    assert "UnicodeDecodeError" in err.message
    expect(codec, valuation(codec, source_change_lsn=b"\x02\x04\xff\xfe"), "corrupt_body")


def test_union_index_out_of_range(codec: AvroCodec) -> None:
    err = expect(codec, valuation(codec, property_id=b"\x04\x02"), "corrupt_body")
    assert "union index 2 out of range" in err.message
    expect(codec, valuation(codec, source_ts=b"\x80\x01"), "corrupt_body")  # index 64, as a 2-byte varint


def test_negative_and_oversized_lengths(codec: AvroCodec) -> None:
    expect(codec, valuation(codec, source_commit_lsn=b"\x01"), "corrupt_body")  # length -1
    expect(codec, valuation(codec, source_commit_lsn=b"\x81\x01abc"), "corrupt_body")  # length -65
    expect(codec, valuation(codec, source_commit_lsn=zigzag(2**40) + b"abc"), "corrupt_body")
    expect(codec, valuation(codec, assessed_value=b"\x02" + zigzag(1000) + b"\x01"), "corrupt_body")


def test_array_count_beyond_the_data(codec: AvroCodec) -> None:
    entry = codec.registry.by_name("io.terrafusion.pacs.DeadLetter")
    body = b"\x02x\x02y\x02\x02" + b"\x00\x00" + zigzag(10**9) + b"\x02a" * 5 + b"\x00\x00\x02"
    data = MAGIC + entry.fingerprint + body
    reason, err = compiled_outcome(codec, data)
    assert reason == "corrupt_body"
    assert "a block of 1000000000 items" in err.message  # refused before reading a billion items
    assert fastavro_outcome(codec, data)[0] == "corrupt_body"


@pytest.mark.parametrize(
    ("field", "raw", "fastavro_reads", "message"),
    [
        # 11 bytes for a long: fastavro wraps it around to some 64-bit value.
        ("source_serial", b"\xff" * 10 + b"\x01", -(2**63), "longer than an Avro long"),
        # A 10th byte beyond bit 63.
        ("source_serial", b"\xfe" + b"\xff" * 8 + b"\x03", None, "longer than an Avro long"),
        # An int beyond 32 bits: fastavro returns the 64-bit value.
        ("valuation_id", zigzag(2**31), 2**31, "longer than an Avro int"),
        ("valuation_id", zigzag(-(2**40)), -(2**40), "longer than an Avro int"),
        # A negative union index: fastavro takes the last branch, as a Python list index.
        ("property_id", b"\x01\x02", 1, "union index -1"),
        # A boolean byte of 2: fastavro reads true.
        ("deleted", b"\x02", True, "boolean byte is 0x02"),
        # 10**14 in a decimal(14,2): fastavro rounds it to 14 digits (1.0000000000000E+12).
        (
            "market_value",
            b"\x02" + field_bytes("bytes", (10**14).to_bytes(7, "big", signed=True)),
            None,
            "digits",
        ),
    ],
)
def test_stricter_than_fastavro(
    codec: AvroCodec, field: str, raw: bytes, fastavro_reads: Any, message: str
) -> None:
    data = valuation(codec, **{field: raw})
    reason, value = fastavro_outcome(codec, data)
    assert reason == "ok"  # fastavro reads garbage where the compiled decoder refuses
    if fastavro_reads is not None:
        assert value[field] == fastavro_reads
    err = expect(codec, data, "corrupt_body", fastavro_reason="ok")
    assert message in err.message
    assert assert_same_outcome(codec, data) == "stricter"


def test_values_fastavro_writes_but_cannot_read(codec: AvroCodec) -> None:
    """A date or timestamp beyond Python's range: corrupt_body both ways."""
    schema = {
        "type": "record",
        "name": "Far",
        "fields": [
            {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]},
            {"name": "ts", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
            {"name": "tm", "type": ["null", {"type": "int", "logicalType": "time-millis"}]},
            {"name": "id", "type": ["null", {"type": "string", "logicalType": "uuid"}]},
        ],
    }
    local = AvroCodec(SchemaRegistry())
    fp = local.registry.register(schema)
    nulls = b"\x00\x00\x00\x00"
    for index, raw in [
        (0, b"\x02" + zigzag(date.max.toordinal() - EPOCH_DAY + 1)),
        (0, b"\x02" + zigzag(-EPOCH_DAY)),
        (1, b"\x02" + zigzag(DATETIME_MAX_MS + 1)),
        (1, b"\x02" + zigzag(DATETIME_MIN_MS - 1)),
        (1, b"\x02" + zigzag(2**63 - 1)),
        (2, b"\x02" + zigzag(-3_600_001)),
        (2, b"\x02" + zigzag(86_400_000)),
        (3, b"\x02\x06abc"),
    ]:
        data = MAGIC + fp + nulls[:index] + raw + nulls[index + 1 :]
        assert compiled_outcome(local, data)[0] == fastavro_outcome(local, data)[0] == "corrupt_body", raw


def mutations(data: bytes, rng: random.Random) -> Iterator[bytes]:
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(HEADER_SIZE, len(mutated) + 1)
            choice = rng.random() if position < len(mutated) else 1.0
            if choice < 0.6:
                mutated[position] = rng.randrange(256)
            elif choice < 0.8:
                del mutated[position]
            else:
                mutated.insert(position, rng.randrange(256))
        yield bytes(mutated)


@pytest.mark.parametrize("name", package_names())
def test_random_corruption_fails_as_fastavro_does_or_stricter(codec: AvroCodec, name: str) -> None:
    rng = random.Random(f"{SEED}-corrupt-{name}")
    entry = codec.registry.by_name(name)
    datum = RandomDatum(entry.parsed, rng)
    seen: set[str] = set()
    for _ in range(3):
        data = MAGIC + entry.fingerprint + fastavro_write(entry.parsed, datum(entry.parsed))
        for mutated in mutations(data, rng):
            seen.add(assert_same_outcome(codec, mutated))
    assert "corrupt_body" in seen


# ------------------------------------------------------------------------------------------------
# The codec's use of it


def test_codec_compiles_once_per_fingerprint(
    monkeypatch: pytest.MonkeyPatch, registry: SchemaRegistry
) -> None:
    compiled: list[Any] = []
    original = decoder_module.compile_decoder

    def counting(schema: Any) -> Any:
        compiled.append(schema)
        return original(schema)

    monkeypatch.setattr("schemas.codec.compile_decoder", counting)
    codec = AvroCodec(registry)
    data = valuation(codec)
    for _ in range(3):
        assert codec.decode(data).value == VALUATION_FIELDS
        assert codec.decode_as(data, VALUATION).value == VALUATION_FIELDS
    assert len(compiled) == 1


def test_decode_and_same_schema_decode_as_do_not_use_fastavro(
    monkeypatch: pytest.MonkeyPatch, codec: AvroCodec
) -> None:
    data = valuation(codec)
    expected = DecodedRecord(VALUATION, data[2:HEADER_SIZE], VALUATION_FIELDS)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("fastavro was asked")

    monkeypatch.setattr(fastavro, "schemaless_reader", refuse)
    assert codec.decode(data) == expected
    assert codec.decode_as(data, VALUATION) == expected
    assert codec.decode(bytearray(data)) == expected  # type: ignore[arg-type] # any bytes-like value
    assert codec.decode(memoryview(data)) == expected  # type: ignore[arg-type]
    assert codec.decode_as(memoryview(data), VALUATION) == expected  # type: ignore[arg-type]


def test_decode_as_another_schema_still_resolves_with_fastavro(codec: AvroCodec) -> None:
    evolved = copy.deepcopy(load_package_schemas()["TerraFusion.Valuation.avsc"])
    evolved["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    producer = AvroCodec(SchemaRegistry.from_package())
    producer.registry.register(evolved)
    data = producer.encode(VALUATION, dict(VALUATION_FIELDS, note="x"))
    consumer = AvroCodec(SchemaRegistry.from_package(resolver=lambda fp: evolved))
    assert consumer.decode(data).value == dict(VALUATION_FIELDS, note="x")  # compiled, writer schema
    resolved = consumer.decode_as(data, VALUATION)  # fastavro, resolved to the shipped reader
    assert resolved == DecodedRecord(VALUATION, data[2:HEADER_SIZE], VALUATION_FIELDS)
    assert_identical(resolved.value, VALUATION_FIELDS)


def test_header_errors_keep_their_reasons(codec: AvroCodec) -> None:
    data = valuation(codec)
    for bad, reason in [
        (b"", "too_short"),
        (data[:9], "too_short"),
        (b"\xc3\x02" + data[2:], "bad_magic"),
        (MAGIC + b"\x07" * 8 + data[10:], "unknown_fingerprint"),
    ]:
        assert compiled_outcome(codec, bad)[0] == reason
        with pytest.raises(UndecodableEventError) as info:
            codec.decode_as(bad, VALUATION)
        assert info.value.context["reason"] == reason


def test_decoded_records_are_ordinary_decoded_records(codec: AvroCodec) -> None:
    decoded = codec.decode(valuation(codec))
    built = DecodedRecord(VALUATION, decoded.fingerprint, VALUATION_FIELDS)
    assert decoded == built
    assert repr(decoded) == repr(built)
    assert type(decoded) is DecodedRecord
    with pytest.raises(AttributeError):
        decoded.value = {}  # type: ignore[misc]


def test_time_values() -> None:
    parsed = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Times",
            "fields": [
                {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
                {"name": "tu", "type": {"type": "long", "logicalType": "time-micros"}},
            ],
        }
    )
    value = check_body(parsed, zigzag(86_399_999) + zigzag(1))
    assert value == {"tm": time(23, 59, 59, 999000), "tu": time(0, 0, 0, 1)}


def test_decimal_edges() -> None:
    parsed = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Money",
            "fields": [
                {
                    "name": "b",
                    "type": {"type": "bytes", "logicalType": "decimal", "precision": 14, "scale": 2},
                },
                {
                    "name": "f",
                    "type": {
                        "type": "fixed",
                        "name": "F",
                        "size": 3,
                        "logicalType": "decimal",
                        "precision": 6,
                        "scale": 3,
                    },
                },
            ],
        }
    )
    # An empty unscaled value is zero, with the schema's scale; a fixed one is sign-extended.
    value = check_body(parsed, b"\x00" + b"\xff\xff\xfe")
    assert (str(value["b"]), str(value["f"])) == ("0.00", "-0.002")
    largest = (10**14 - 1).to_bytes(6, "big", signed=True)
    value = check_body(parsed, zigzag(6) + largest + (999_999).to_bytes(3, "big", signed=True))
    assert (str(value["b"]), str(value["f"])) == ("999999999999.99", "999.999")
