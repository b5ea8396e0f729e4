"""A compiled, pure-Python Avro binary encoder for the schema shapes the contract uses.

fastavro's ``schemaless_writer`` spends most of an envelope's encode time validating union branches
(a ``["null", record]`` union validates the whole row before writing it) and converting decimals.
Our schemas only use a small part of Avro, so :func:`compile_encoder` turns a schema into a tree of
closures that write straight into a ``bytearray`` – about 2.5 times faster on a change envelope.

Supported: null, boolean, int, long, float, double, bytes, string, records, two-branch unions with
``"null"``, and the logical types decimal (on bytes), date and timestamp-millis. Anything else
(enums, arrays, maps, fixed, wider unions, other logical types, non-null field defaults, recursive
records) makes :func:`compile_encoder` return ``None`` and the codec falls back to fastavro.

The bytes are identical to fastavro's (the unit tests compare them). The checks are stricter than
fastavro's, on purpose, because every one of these would otherwise be silent data loss:

* a key that is not a field of the record, and a missing field without a default, are errors
  (fastavro's ``strict_allow_default=True``);
* ``int`` must fit in 32 bits and ``long`` in 64 (fastavro writes an over-long varint);
* a decimal must be a finite :class:`~decimal.Decimal` whose digits fit the schema's precision and
  scale: it is never rounded (fastavro only checks the digit count, so ``100`` passes ``decimal(3,1)``);
* ``date`` takes a :class:`~datetime.date` or days since the epoch, not a ``datetime`` (its time of
  day would be dropped);
* ``timestamp-millis`` takes epoch milliseconds or a timezone-aware ``datetime``: a naive one is an
  error (fastavro reads it as the machine's local time);
* ``boolean`` takes only ``True`` or ``False``.

Errors are raised as ``TypeError``/``ValueError``/``KeyError`` (and friends); the codec wraps them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation
from typing import Any

Encoder = Callable[[bytearray, Any], None]
"""Appends the Avro binary encoding of a value to the buffer."""

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# Scaling a decimal must never round: trap Inexact so a value with too many digits is an error.
_DECIMAL_CONTEXT = Context(prec=100, traps=[InvalidOperation, Inexact])
_MISSING = object()
_pack_float = struct.Struct("<f").pack
_pack_double = struct.Struct("<d").pack


class UnsupportedSchemaError(Exception):
    """The schema uses a feature the compiled encoder does not cover; use fastavro instead."""


def compile_encoder(schema: Any) -> Encoder | None:
    """Compile a schema (its JSON form) into an encoder, or return None if it is not covered.

    Args:
        schema: the schema as loaded from JSON (a dict, list or type name), not fastavro's parsed form.

    Returns:
        A function appending the Avro binary encoding of a datum to a bytearray, or None.
    """
    try:
        return _compile(schema, "", {})
    except UnsupportedSchemaError:
        return None


def _full_name(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _compile(schema: Any, namespace: str, named: dict[str, Encoder | None]) -> Encoder:
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _compile_primitive(schema)
        full = _full_name(schema, namespace)
        encoder = named.get(full, named.get(schema))
        if encoder is None:  # unknown, or a reference to a record still being compiled (recursion)
            raise UnsupportedSchemaError(schema)
        return encoder
    if isinstance(schema, list):
        return _compile_union(schema, namespace, named)
    if not isinstance(schema, Mapping):
        raise UnsupportedSchemaError(repr(schema))
    kind = schema.get("type")
    logical = schema.get("logicalType")
    if kind == "record":
        return _compile_record(schema, namespace, named)
    if logical is not None:
        return _compile_logical(kind, logical, schema)
    if isinstance(kind, str) and kind in _PRIMITIVES:
        return _compile_primitive(kind)
    raise UnsupportedSchemaError(repr(kind))


def _compile_record(schema: Mapping[str, Any], namespace: str, named: dict[str, Encoder | None]) -> Encoder:
    full = _full_name(schema["name"], schema.get("namespace", namespace))
    inner_namespace = full.rpartition(".")[0]
    named[full] = None  # being compiled: a self-reference is a recursive type, which we do not cover
    required: list[tuple[str, Encoder]] = []
    fields: list[tuple[str, Encoder, bool]] = []
    for field in schema["fields"]:
        encoder = _compile(field["type"], inner_namespace, named)
        if "default" in field:
            if field["default"] is not None:
                raise UnsupportedSchemaError(f"non-null default on {full}.{field['name']}")
            fields.append((field["name"], encoder, True))
        else:
            fields.append((field["name"], encoder, False))
            required.append((field["name"], encoder))
    field_count = len(fields)
    names = frozenset(name for name, _, _ in fields)

    def encode_record(out: bytearray, value: Any) -> None:
        missing = 0
        for name, encoder, optional in fields:
            if optional:
                item = value.get(name, _MISSING)
                if item is _MISSING:
                    missing += 1
                    item = None
                encoder(out, item)
            else:
                encoder(out, value[name])
        if len(value) + missing != field_count:
            extra = sorted(set(value) - names)
            raise ValueError(f"{full} has no field(s) {extra}")

    named[full] = encode_record
    return encode_record


def _compile_union(branches: list[Any], namespace: str, named: dict[str, Encoder | None]) -> Encoder:
    nulls = [i for i, branch in enumerate(branches) if branch == "null" or branch == {"type": "null"}]
    if len(branches) != 2 or len(nulls) != 1:
        raise UnsupportedSchemaError(f"union {branches!r}")
    null_index = nulls[0]
    value_index = 1 - null_index
    value_encoder = _compile(branches[value_index], namespace, named)
    null_tag = null_index << 1  # zigzag of 0 or 1: a one-byte varint
    value_tag = value_index << 1

    def encode_optional(out: bytearray, value: Any) -> None:
        if value is None:
            out.append(null_tag)
        else:
            out.append(value_tag)
            value_encoder(out, value)

    return encode_optional


def _write_varint(out: bytearray, zigzagged: int) -> None:
    while zigzagged > 0x7F:
        out.append((zigzagged & 0x7F) | 0x80)
        zigzagged >>= 7
    out.append(zigzagged)


def encode_int(out: bytearray, value: Any) -> None:
    """Append an Avro ``int`` (zigzag varint), checking it fits in 32 bits."""
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"{value!r} does not fit an Avro int (32 bits)")
    _write_varint(out, (value << 1) ^ (value >> 63))


def encode_long(out: bytearray, value: Any) -> None:
    """Append an Avro ``long`` (zigzag varint), checking it fits in 64 bits."""
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise ValueError(f"{value!r} does not fit an Avro long (64 bits)")
    _write_varint(out, (value << 1) ^ (value >> 63))


def _encode_bytes(out: bytearray, value: Any) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    length = len(value)
    if length < 64:
        out.append(length << 1)
    else:
        _write_varint(out, length << 1)
    out += value


def _encode_string(out: bytearray, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    data = value.encode()
    length = len(data)
    if length < 64:
        out.append(length << 1)
    else:
        _write_varint(out, length << 1)
    out += data


def _encode_null(out: bytearray, value: Any) -> None:
    if value is not None:
        raise TypeError(f"expected None, got {type(value).__name__}")


def _encode_boolean(out: bytearray, value: Any) -> None:
    if value is True:
        out.append(1)
    elif value is False:
        out.append(0)
    else:
        raise TypeError(f"expected a bool, got {type(value).__name__}")


def _encode_float(out: bytearray, value: Any) -> None:
    out += _pack_float(value)


def _encode_double(out: bytearray, value: Any) -> None:
    out += _pack_double(value)


_PRIMITIVE_ENCODERS: dict[str, Encoder] = {
    "null": _encode_null,
    "boolean": _encode_boolean,
    "int": encode_int,
    "long": encode_long,
    "float": _encode_float,
    "double": _encode_double,
    "bytes": _encode_bytes,
    "string": _encode_string,
}


def _compile_primitive(kind: str) -> Encoder:
    return _PRIMITIVE_ENCODERS[kind]


def _compile_logical(kind: Any, logical: Any, schema: Mapping[str, Any]) -> Encoder:
    if logical == "decimal" and kind == "bytes":
        return _decimal_encoder(int(schema["precision"]), int(schema.get("scale", 0)))
    if logical == "date" and kind == "int":
        return _encode_date
    if logical == "timestamp-millis" and kind == "long":
        return _encode_timestamp_millis
    raise UnsupportedSchemaError(f"{kind}/{logical}")


def _decimal_encoder(precision: int, scale: int) -> Encoder:
    limit = 10**precision

    def encode_decimal(out: bytearray, value: Any) -> None:
        if not isinstance(value, Decimal):
            raise TypeError(
                f"expected a Decimal for decimal({precision},{scale}), got {type(value).__name__}"
            )
        scaled = value.scaleb(scale, _DECIMAL_CONTEXT)
        unscaled = int(scaled)  # ValueError for NaN, OverflowError for Infinity
        if unscaled != scaled:
            raise ValueError(f"{value} has more than {scale} decimal places (decimal({precision},{scale}))")
        if not -limit < unscaled < limit:
            raise ValueError(f"{value} has more than {precision} digits (decimal({precision},{scale}))")
        # Same length rule as fastavro, so the bytes are identical.
        data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
        out.append(len(data) << 1)  # at most 17 bytes for precision <= 38: a one-byte varint
        out += data

    if precision > 38:
        raise UnsupportedSchemaError(f"decimal precision {precision}")
    return encode_decimal


def _encode_date(out: bytearray, value: Any) -> None:
    if isinstance(value, datetime):
        raise TypeError("expected a date for a date field, got a datetime (its time of day would be lost)")
    days = value.toordinal() - _EPOCH_ORDINAL if isinstance(value, date) else value
    encode_int(out, days)


def _encode_timestamp_millis(out: bytearray, value: Any) -> None:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} for a timestamp: give it a timezone")
        delta = value - _EPOCH
        value = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    encode_long(out, value)
