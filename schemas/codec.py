"""Avro single-object encoding of the event contract, with a schema registry keyed by fingerprint.

Every message value the connector writes to Kafka is one Avro datum in the Avro specification's
*single-object encoding*::

    C3 01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little-endian) | Avro binary body

The fingerprint is computed over the schema's Parsing Canonical Form, so a reader finds the writer's
schema without a schema-registry service: the shipped ``.avsc`` files are loaded by
:meth:`SchemaRegistry.from_package`, schemas evolved at runtime are added with
:meth:`SchemaRegistry.register`, and an optional resolver (later backed by a Kafka topic of schemas)
is asked about fingerprints nobody registered.

The Parsing Canonical Form drops documentation, defaults *and logical types*: two schemas that differ
only in a decimal's scale have the same fingerprint. The registry therefore refuses to register a
second schema under a fingerprint it already holds unless their logical types agree, and the golden
test vectors pin the full schemas, not just their fingerprints.

Encoding uses a compiled pure-Python encoder for the shapes the contract uses (see
:mod:`schemas._encoder`; identical bytes, stricter checks) and fastavro's ``schemaless_writer`` for
anything else. Decoding with the writer schema (``decode``, and ``decode_as`` the same schema) uses a
compiled pure-Python decoder (see :mod:`schemas._decoder`; identical values, two to three times
faster than fastavro, stricter about malformed bodies) and fastavro's ``schemaless_reader`` for
schemas it does not cover; schema resolution (``decode_as`` another schema) uses fastavro.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, cast

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException, UnknownType, to_parsing_canonical_form

from pacs_sync.errors import ErrorCode, FatalError, PoisonMessageError
from schemas._decoder import Decoder, compile_decoder
from schemas._encoder import Encoder, compile_encoder

logger = logging.getLogger(__name__)

MAGIC = b"\xc3\x01"
"""The two marker bytes that start every single-object-encoded event."""
FINGERPRINT_SIZE = 8
HEADER_SIZE = len(MAGIC) + FINGERPRINT_SIZE

TABLES: tuple[str, ...] = ("Property", "PropertyOwner", "PropertyValue", "Structure")
"""The PACS tables the contract covers, in their PascalCase names."""
KEY_FIELDS: Mapping[str, str] = {
    "Property": "PropertyID",
    "PropertyOwner": "PropertyOwnerID",
    "PropertyValue": "PropertyValueID",
    "Structure": "StructureID",
}
"""The primary-key column of each table: the only field of its ``<Table>Key`` record."""
ROW_NAMESPACE = "pacs.dbo"
SOURCE_SCHEMA = "io.terrafusion.pacs.Source"
HEARTBEAT_SCHEMA = "io.terrafusion.pacs.Heartbeat"
OFFSET_SCHEMA = "io.terrafusion.pacs.SourceOffset"

SchemaKind = Literal["key", "row", "envelope"]
SchemaResolver = Callable[[bytes], Mapping[str, Any] | None]
"""Looks up a schema by its 8-byte wire fingerprint; returns its JSON form, or None if unknown."""

_KIND_SUFFIX: Mapping[str, str] = {"key": "Key", "row": "", "envelope": "Envelope"}
_TABLES_BY_LOWER = {table.lower(): table for table in TABLES}

# What a corrupt body can make fastavro raise while reading (IndexError: union index out of range,
# UnicodeDecodeError is a ValueError, struct.error for floats, OverflowError for absurd dates).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    struct.error,
    SchemaResolutionError,
)
# What a record that does not fit its schema makes the encoders raise.
_WRITE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    OverflowError,
    ArithmeticError,
    struct.error,
)


class SchemaMismatchError(FatalError, ValueError):
    """A record does not fit its schema, a schema name is unknown, or a schema cannot be registered.

    This is a defect in the producer or its mapping, not in one event: retrying cannot fix it.
    """

    code = ErrorCode.SCHEMA_MISMATCH


class UndecodableEventError(PoisonMessageError):
    """An event's bytes are not a decodable single-object-encoded Avro datum: dead-letter it.

    ``context["reason"]`` says which check failed: ``too_short``, ``bad_magic``,
    ``unknown_fingerprint``, ``corrupt_body``, ``trailing_bytes`` or ``incompatible_schema``.
    """

    code = ErrorCode.UNDECODABLE_EVENT


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """One decoded event.

    Attributes:
        schema_name: full name of the schema the value is shaped by (the reader's, for ``decode_as``).
        fingerprint: the writer schema's 8-byte fingerprint, as found on the wire.
        value: the datum: decimals are ``Decimal``, dates ``date``, timestamps aware UTC ``datetime``.
    """

    schema_name: str
    fingerprint: bytes
    value: dict[str, Any]


@dataclass(frozen=True, slots=True, eq=False)
class RegisteredSchema:
    """A schema held by the registry.

    Attributes:
        name: the top-level record's full name, e.g. ``pacs.dbo.PropertyEnvelope``.
        fingerprint: CRC-64-AVRO of the Parsing Canonical Form, 8 bytes little-endian (wire order).
        canonical_form: the Parsing Canonical Form.
        schema: the schema's JSON form, as registered (treat as read-only).
        parsed: fastavro's parsed form, for ``schemaless_reader``/``schemaless_writer``.
        logical_types: the logical-type annotations (type, precision, scale) in traversal order,
            which the canonical form leaves out; two schemas may share a fingerprint only if equal.
    """

    name: str
    fingerprint: bytes
    canonical_form: str
    schema: Mapping[str, Any] = field(repr=False)
    parsed: Any = field(repr=False)
    logical_types: tuple[tuple[Any, ...], ...] = field(repr=False, default=())


# --------------------------------------------------------------------------------------------------
# CRC-64-AVRO (Rabin fingerprint), straight from the Avro specification.

_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """Return the CRC-64-AVRO (64-bit Rabin) fingerprint of some bytes, as an unsigned integer.

    Args:
        data: usually the UTF-8 bytes of a Parsing Canonical Form.

    Returns:
        The fingerprint; its wire form is ``value.to_bytes(8, "little")``.
    """
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


def parsing_canonical_form(schema: Any) -> str:
    """Return a schema's Avro Parsing Canonical Form.

    Args:
        schema: the schema's JSON form (dict, list or primitive type name), not a JSON text.

    Raises:
        SchemaMismatchError: the schema is not valid Avro.
    """
    try:
        return cast(str, to_parsing_canonical_form(schema))
    except (SchemaParseException, UnknownType, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SchemaMismatchError(f"not a valid Avro schema: {exc}") from exc


def fingerprint(schema: Any) -> bytes:
    """Return a schema's CRC-64-AVRO fingerprint in wire form (8 bytes, little-endian).

    Args:
        schema: the schema's JSON form (dict, list or primitive type name), not a JSON text.

    Raises:
        SchemaMismatchError: the schema is not valid Avro.
    """
    return crc64_avro(parsing_canonical_form(schema).encode()).to_bytes(FINGERPRINT_SIZE, "little")


def _logical_types(schema: Any) -> tuple[tuple[Any, ...], ...]:
    """The logical-type annotations in traversal order: what the canonical form leaves out."""
    found: list[tuple[Any, ...]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch)
        elif isinstance(node, Mapping):
            if "logicalType" in node:
                found.append((node["logicalType"], node.get("precision"), node.get("scale")))
            kind = node.get("type")
            if kind == "record" or kind == "error":
                for item in node.get("fields", ()):
                    walk(item.get("type"))
            elif kind == "array":
                walk(node.get("items"))
            elif kind == "map":
                walk(node.get("values"))
            elif isinstance(kind, list | Mapping):
                walk(kind)

    walk(schema)
    return tuple(found)


def schema_for_table(table: str, kind: SchemaKind) -> str:
    """Return the full name of a PACS table's key, row or envelope schema.

    Args:
        table: ``Property``, ``dbo.Property``, ``dbo.property``… (case-insensitive, ``dbo.`` optional).
        kind: ``"key"``, ``"row"`` or ``"envelope"``.

    Returns:
        E.g. ``pacs.dbo.PropertyKey``, ``pacs.dbo.Property`` or ``pacs.dbo.PropertyEnvelope``.

    Raises:
        SchemaMismatchError: the table is not in the contract.
        ValueError: the kind is not one of the three.
    """
    if kind not in _KIND_SUFFIX:
        raise ValueError(f"schema kind must be 'key', 'row' or 'envelope', not {kind!r}")
    schema, _, name = table.strip().rpartition(".")
    canonical = _TABLES_BY_LOWER.get(name.lower())
    if canonical is None or schema.lower() not in {"", "dbo"}:
        raise SchemaMismatchError(
            f"table {table!r} is not in the event contract (known: dbo.{', dbo.'.join(TABLES)})",
            table=table,
        )
    return f"{ROW_NAMESPACE}.{canonical}{_KIND_SUFFIX[kind]}"


# --------------------------------------------------------------------------------------------------


class SchemaRegistry:
    """The schemas this process knows, by full name and by fingerprint.

    ``by_name`` answers with the *current* schema of a name: the last one registered with
    ``current=True`` (the shipped one, until the producer registers an evolved version). Every
    registered schema stays reachable by its fingerprint, so old events still decode. Registration
    is thread-safe; lookups do not lock.
    """

    def __init__(self, resolver: SchemaResolver | None = None) -> None:
        """Create an empty registry.

        Args:
            resolver: called with the fingerprint of an event whose schema is not registered; the
                schema it returns is registered (not as current) and used. It may raise: its
                errors (a Kafka outage, say) propagate unchanged to the caller of ``decode``.
        """
        self.resolver = resolver
        self._by_name: dict[str, RegisteredSchema] = {}
        self._by_fingerprint: dict[bytes, RegisteredSchema] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_package(cls, resolver: SchemaResolver | None = None) -> SchemaRegistry:
        """Create a registry holding every ``.avsc`` file shipped in the ``schemas`` package.

        Args:
            resolver: see :meth:`__init__`.
        """
        registry = cls(resolver)
        for name, schema in load_package_schemas().items():
            registry.register(schema)
            logger.debug("loaded schema file %s", name)
        return registry

    def register(self, schema: Mapping[str, Any], *, current: bool = True) -> bytes:
        """Add a schema (idempotent) and return its fingerprint.

        Args:
            schema: the JSON form of a named record schema, e.g. a row with an added nullable column.
            current: make it the schema ``by_name`` (and so ``AvroCodec.encode``) uses for its name.

        Returns:
            The 8-byte wire fingerprint.

        Raises:
            SchemaMismatchError: the schema is not a valid Avro record schema, or a different schema
                with the same canonical form (differing in logical types) is already registered.
        """
        if not isinstance(schema, Mapping) or schema.get("type") != "record" or "name" not in schema:
            raise SchemaMismatchError("a registered schema must be a named Avro record")
        schema_json: dict[str, Any] = copy.deepcopy(dict(schema))
        canonical = parsing_canonical_form(schema_json)
        fp = crc64_avro(canonical.encode()).to_bytes(FINGERPRINT_SIZE, "little")
        logical = _logical_types(schema_json)
        with self._lock:
            known = self._by_fingerprint.get(fp)
            if known is not None:
                if known.logical_types != logical:
                    raise SchemaMismatchError(
                        f"schema {known.name} (fingerprint {fp.hex()}) is already registered with other "
                        "logical types (decimal precision/scale, dates, timestamps); give the new "
                        "version a different name or field layout",
                        schema=known.name,
                        fingerprint=fp.hex(),
                    )
                entry = known
            else:
                try:
                    parsed: Any = fastavro.parse_schema(schema_json)
                except (SchemaParseException, UnknownType, KeyError, TypeError, ValueError) as exc:
                    raise SchemaMismatchError(f"not a valid Avro schema: {exc}") from exc
                name = str(parsed["name"])
                entry = RegisteredSchema(name, fp, canonical, schema_json, parsed, logical)
                self._by_fingerprint[fp] = entry
                logger.debug("registered schema %s fingerprint %s", name, fp.hex())
            if current:
                self._by_name[entry.name] = entry
        return fp

    def by_name(self, full_name: str) -> RegisteredSchema:
        """Return the current schema registered under a full name.

        Raises:
            KeyError: no schema has that name.
        """
        return self._by_name[full_name]

    def by_fingerprint(self, fp: bytes) -> RegisteredSchema:
        """Return the registered schema with this 8-byte fingerprint (the resolver is not asked).

        Raises:
            KeyError: no registered schema has that fingerprint.
        """
        return self._by_fingerprint[bytes(fp)]

    def resolve(self, fp: bytes) -> RegisteredSchema | None:
        """Return the schema with this fingerprint, asking the resolver if it is not registered.

        A schema from the resolver is registered with ``current=False``, so it never changes what
        ``by_name`` answers. Returns None if neither knows the fingerprint.

        Raises:
            SchemaMismatchError: the resolver returned something that cannot be registered.
        """
        entry = self._by_fingerprint.get(fp)
        if entry is not None or self.resolver is None:
            return entry
        schema = self.resolver(fp)
        if schema is None:
            return None
        got = self.register(schema, current=False)
        if got != fp:
            logger.warning(
                "schema resolver answered fingerprint %s with a schema whose fingerprint is %s",
                fp.hex(),
                got.hex(),
            )
            return None
        return self._by_fingerprint[fp]

    def names(self) -> list[str]:
        """Return the full names that have a current schema, sorted."""
        return sorted(self._by_name)

    def fingerprints(self) -> list[bytes]:
        """Return the fingerprints of every registered schema."""
        return list(self._by_fingerprint)


def load_package_schemas() -> dict[str, dict[str, Any]]:
    """Load the JSON form of every ``.avsc`` file shipped in the ``schemas`` package.

    Returns:
        ``{file name: schema}``, sorted by file name.
    """
    package = resources.files(__package__ or "schemas")
    result: dict[str, dict[str, Any]] = {}
    for item in sorted(package.iterdir(), key=lambda entry: entry.name):
        if item.name.endswith(".avsc") and item.is_file():
            result[item.name] = json.loads(item.read_text(encoding="utf-8"))
    return result


# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Writer:
    header: bytes
    encoder: Encoder | None
    parsed: Any


@dataclass(frozen=True, slots=True)
class _Reader:
    entry: RegisteredSchema
    decoder: Decoder | None  # None: the schema uses features the compiled decoder lacks (fastavro)


# DecodedRecord's generated frozen __init__ sets each field with object.__setattr__, which costs
# about a tenth of decoding a small record; setting its slots directly is the same, at half the cost.
_new_record = object.__new__
_set_schema_name = DecodedRecord.__dict__["schema_name"].__set__
_set_fingerprint = DecodedRecord.__dict__["fingerprint"].__set__
_set_value = DecodedRecord.__dict__["value"].__set__


def _decoded(schema_name: str, fp: bytes, value: dict[str, Any]) -> DecodedRecord:
    record: DecodedRecord = _new_record(DecodedRecord)
    _set_schema_name(record, schema_name)
    _set_fingerprint(record, fp)
    _set_value(record, value)
    return record


def _corrupt_body(entry: RegisteredSchema, exc: BaseException) -> UndecodableEventError:
    return UndecodableEventError(
        f"corrupt or truncated {entry.name} body: {type(exc).__name__}: {exc}",
        reason="corrupt_body",
        schema=entry.name,
        fingerprint=entry.fingerprint.hex(),
    )


def _trailing_bytes(entry: RegisteredSchema, extra: int) -> UndecodableEventError:
    return UndecodableEventError(
        f"{extra} unexpected byte(s) after the {entry.name} body",
        reason="trailing_bytes",
        schema=entry.name,
        fingerprint=entry.fingerprint.hex(),
    )


class AvroCodec:
    """Encodes and decodes events in Avro single-object encoding against a :class:`SchemaRegistry`.

    Safe to share between threads: encoders and decoders are cached per fingerprint and each call
    uses its own buffer.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        """Create a codec over a registry (which may keep growing after this)."""
        self.registry = registry
        self._writers: dict[bytes, _Writer] = {}
        self._readers: dict[bytes, _Reader] = {}

    def _writer(self, entry: RegisteredSchema) -> _Writer:
        writer = self._writers.get(entry.fingerprint)
        if writer is None:
            encoder = compile_encoder(entry.schema)
            if encoder is None:
                logger.info("schema %s uses features the fast encoder lacks; using fastavro", entry.name)
            writer = _Writer(MAGIC + entry.fingerprint, encoder, entry.parsed)
            self._writers[entry.fingerprint] = writer
        return writer

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes:
        """Encode a record with the current schema of a name.

        Args:
            schema_name: full name, e.g. ``pacs.dbo.PropertyEnvelope`` (see :func:`schema_for_table`).
            record: the datum: decimals as ``Decimal`` with at most the schema's scale, dates as
                ``date``, timestamps as epoch milliseconds or aware ``datetime``. Fields with a null
                default may be left out; unknown keys are an error.

        Returns:
            ``C3 01`` + the schema's fingerprint + the Avro binary body.

        Raises:
            SchemaMismatchError: the schema name is unknown or the record does not fit the schema.
        """
        try:
            entry = self.registry.by_name(schema_name)
        except KeyError:
            raise SchemaMismatchError(f"no schema named {schema_name!r} is registered") from None
        writer = self._writers.get(entry.fingerprint) or self._writer(entry)
        try:
            if writer.encoder is not None:
                out = bytearray(writer.header)
                writer.encoder(out, record)
                return bytes(out)
            buffer = io.BytesIO()
            buffer.write(writer.header)
            fastavro.schemaless_writer(buffer, writer.parsed, record, strict_allow_default=True)
            return buffer.getvalue()
        except _WRITE_ERRORS as exc:
            raise SchemaMismatchError(
                f"record does not fit schema {schema_name}: {type(exc).__name__}: {exc}",
                schema=schema_name,
            ) from exc

    def decode(self, data: bytes) -> DecodedRecord:
        """Decode an event with its writer schema.

        Args:
            data: the whole message value.

        Raises:
            UndecodableEventError: the bytes are too short, lack the marker, name an unknown
                schema, or hold a corrupt, truncated or over-long body.
        """
        if type(data) is not bytes:
            data = bytes(data)
        # The hot path, inline: the marker and a known fingerprint (else _writer_schema says why not).
        reader = self._readers.get(data[:HEADER_SIZE])
        if reader is None:
            reader = self._reader(self._writer_schema(data))
        entry = reader.entry
        decoder = reader.decoder
        if decoder is None:
            return DecodedRecord(entry.name, entry.fingerprint, self._read(data, entry, None))
        try:
            value, end = decoder(data, HEADER_SIZE)
        except _READ_ERRORS as exc:
            raise _corrupt_body(entry, exc) from exc
        if end != len(data):
            raise _trailing_bytes(entry, len(data) - end)
        record: DecodedRecord = _new_record(DecodedRecord)  # _decoded(), inline
        _set_schema_name(record, entry.name)
        _set_fingerprint(record, entry.fingerprint)
        _set_value(record, value)
        return record

    def decode_as(self, data: bytes, reader_schema_name: str) -> DecodedRecord:
        """Decode an event and resolve it to a reader schema (Avro schema resolution).

        E.g. a row written with an added nullable column, read with the shipped row schema, comes
        back without that column; a column the writer lacks gets the reader's default.

        Args:
            data: the whole message value.
            reader_schema_name: the full name of the (current) schema to read as.

        Returns:
            The value shaped by the reader schema; ``fingerprint`` is still the writer's.

        Raises:
            UndecodableEventError: as for :meth:`decode`, or the writer schema cannot be resolved
                to the reader schema (``reason="incompatible_schema"``).
            SchemaMismatchError: no schema has the reader name.
        """
        try:
            reader = self.registry.by_name(reader_schema_name)
        except KeyError:
            raise SchemaMismatchError(f"no schema named {reader_schema_name!r} is registered") from None
        if type(data) is not bytes:
            data = bytes(data)
        if data[:HEADER_SIZE] == MAGIC + reader.fingerprint:
            # Written with the reader schema itself: nothing to resolve, decode as ``decode`` does.
            return _decoded(reader.name, reader.fingerprint, self.decode(data).value)
        entry = self._writer_schema(data)
        reader_parsed = None if reader.fingerprint == entry.fingerprint else reader.parsed
        return DecodedRecord(reader.name, entry.fingerprint, self._read(data, entry, reader_parsed))

    def _reader(self, entry: RegisteredSchema) -> _Reader:
        """The cached decoder of a writer schema, compiled on first use (None: use fastavro)."""
        reader = self._readers.get(MAGIC + entry.fingerprint)
        if reader is None:
            decoder = compile_decoder(entry.parsed)
            if decoder is None:
                logger.info("schema %s uses features the fast decoder lacks; using fastavro", entry.name)
            reader = _Reader(entry, decoder)
            self._readers[MAGIC + entry.fingerprint] = reader  # keyed by the whole header
        return reader

    def _writer_schema(self, data: bytes) -> RegisteredSchema:
        if len(data) < HEADER_SIZE:
            raise UndecodableEventError(
                f"event is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte single-object header",
                reason="too_short",
                length=len(data),
            )
        if data[:2] != MAGIC:
            raise UndecodableEventError(
                f"event starts with {bytes(data[:2]).hex()}, not the single-object marker c301",
                reason="bad_magic",
                length=len(data),
            )
        fp = bytes(data[2:HEADER_SIZE])
        try:
            entry = self.registry.resolve(fp)
        except SchemaMismatchError as exc:
            raise UndecodableEventError(
                f"the schema found for fingerprint {fp.hex()} cannot be used: {exc.message}",
                reason="unknown_fingerprint",
                fingerprint=fp.hex(),
            ) from exc
        if entry is None:
            raise UndecodableEventError(
                f"no schema is known with fingerprint {fp.hex()}",
                reason="unknown_fingerprint",
                fingerprint=fp.hex(),
            )
        return entry

    @staticmethod
    def _read(data: bytes, entry: RegisteredSchema, reader_parsed: Any) -> dict[str, Any]:
        stream = io.BytesIO(data)
        stream.seek(HEADER_SIZE)
        try:
            value = fastavro.schemaless_reader(stream, entry.parsed, reader_parsed)
        except SchemaResolutionError as exc:
            raise UndecodableEventError(
                f"event written with {entry.name} ({entry.fingerprint.hex()}) cannot be read as the "
                f"reader schema: {exc}",
                reason="incompatible_schema",
                schema=entry.name,
                fingerprint=entry.fingerprint.hex(),
            ) from exc
        except _READ_ERRORS as exc:
            raise _corrupt_body(entry, exc) from exc
        if stream.tell() != len(data):
            raise _trailing_bytes(entry, len(data) - stream.tell())
        if not isinstance(value, dict):
            raise UndecodableEventError(
                f"{entry.name} body decoded to a {type(value).__name__}, not a record",
                reason="corrupt_body",
                schema=entry.name,
            )
        return value
