"""A compiled, pure-Python Avro binary decoder: the mirror image of :mod:`schemas._encoder`.

fastavro's ``schemaless_reader`` pays for a ``BytesIO`` read per value, a dispatch on the schema per
value and a logical-type lookup per value: a clean ``Valuation`` record costs about 14 µs.
:func:`compile_decoder` instead generates, once per writer schema, one plain Python function per
record type that reads straight from the ``bytes`` at an integer offset, with varints (unrolled),
lengths and union indexes inline: about 5 µs for that record through ``AvroCodec.decode``
(``tests/benchmarks/bench_codec.py`` measures it).

Supported: null, boolean, int, long, float, double, bytes, string, fixed, enum, unions, arrays, maps,
records (nested, named references, recursion), and the logical types fastavro 1.13 converts: decimal
(on bytes and fixed), date, time-millis, time-micros, timestamp-millis, timestamp-micros,
local-timestamp-millis, local-timestamp-micros and uuid (on string). Any other logical type, a known
logical type on another base type (fastavro returns the bare value for those), a decimal with an
unusable precision or scale, or anything unexpected in the schema makes :func:`compile_decoder`
return ``None``, and the codec reads with fastavro instead.

A well-formed body decodes to exactly what fastavro returns: the same types (``Decimal`` with the
schema's scale, ``date``, aware UTC ``datetime`` for timestamps, naive for local timestamps, ``time``,
``UUID``, ``bytes``), the same values and the same dict key order. A body that is not well-formed
raises ``EOFError``, ``ValueError`` (incl. ``UnicodeDecodeError``), ``IndexError``, ``OverflowError``
or ``struct.error``, which the codec reports as ``corrupt_body``. Some malformed bodies that fastavro
reads without complaint are refused here, because each would be silently wrong data:

* a varint longer than 10 bytes or beyond 64 bits, or an ``int`` beyond 32 bits (fastavro wraps it
  around, or returns a 64-bit value for an ``int``);
* a negative union branch or enum index (fastavro counts it from the end, as a Python list index);
* a boolean byte other than 0 or 1 (fastavro reads any non-zero byte as true);
* a decimal with more digits than the schema's precision (fastavro rounds it to the precision: the
  unscaled ``123456`` in a ``decimal(3,1)`` reads as ``1.23E+4``).

How the generated code works: each value is read into a fresh local; a string or bytes value is sliced
without a bounds check, and the top-level function checks once, at its end, that it did not run past
the data (the offset only grows, so a read past the end anywhere shows there; and reading a single
byte past the end raises ``IndexError`` on the spot). Only generated identifiers, integer literals and
``repr`` of field names go into the source text; symbols, decimal contexts and other constants are
passed in the functions' globals.
"""

from __future__ import annotations

import itertools
import struct
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from typing import Any, cast

Decoder = Callable[[bytes, int], tuple[Any, int]]
"""Decodes one datum from ``data`` starting at ``pos``; returns it and the offset just after it."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)  # noqa: DTZ001 - local timestamps are naive, as fastavro returns them
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_MAX_DECIMAL_PRECISION = 1000  # wider decimals are read by fastavro (10**1000 stays a small literal)


class UnsupportedSchemaError(Exception):
    """The schema uses a feature the compiled decoder does not cover; use fastavro instead."""


def compile_decoder(schema: Any) -> Decoder | None:
    """Compile a writer schema into a decoder, or return None if the schema is not covered.

    Args:
        schema: fastavro's parsed form (``fastavro.parse_schema``, as in ``RegisteredSchema.parsed``)
            or the JSON form (a dict, list or type name).

    Returns:
        A function ``decoder(data, pos) -> (datum, end)`` reading one datum from ``bytes`` at ``pos``
        (``end`` is the offset just after it; the caller checks it is ``len(data)``), or None.
    """
    try:
        return _Compiler().compile(schema)
    except (UnsupportedSchemaError, SyntaxError, RecursionError, MemoryError):
        return None


# --------------------------------------------------------------------------------------------------
# Helpers the generated code calls: the longer varints and the error messages.


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    """Read an unsigned varint of at most 10 bytes and 64 bits: the raw (still zigzagged) value.

    Unrolled: about a third faster than a loop, which matters for timestamps (six bytes).
    """
    byte = data[pos]
    raw = byte & 0x7F
    if byte < 0x80:
        return raw, pos + 1
    byte = data[pos + 1]
    raw |= (byte & 0x7F) << 7
    if byte < 0x80:
        return raw, pos + 2
    byte = data[pos + 2]
    raw |= (byte & 0x7F) << 14
    if byte < 0x80:
        return raw, pos + 3
    byte = data[pos + 3]
    raw |= (byte & 0x7F) << 21
    if byte < 0x80:
        return raw, pos + 4
    byte = data[pos + 4]
    raw |= (byte & 0x7F) << 28
    if byte < 0x80:
        return raw, pos + 5
    byte = data[pos + 5]
    raw |= (byte & 0x7F) << 35
    if byte < 0x80:
        return raw, pos + 6
    byte = data[pos + 6]
    raw |= (byte & 0x7F) << 42
    if byte < 0x80:
        return raw, pos + 7
    byte = data[pos + 7]
    raw |= (byte & 0x7F) << 49
    if byte < 0x80:
        return raw, pos + 8
    byte = data[pos + 8]
    raw |= (byte & 0x7F) << 56
    if byte < 0x80:
        return raw, pos + 9
    byte = data[pos + 9]
    if byte > 1:  # a tenth byte holds bit 63 only
        raise ValueError(f"varint at offset {pos} is longer than 10 bytes or beyond 64 bits")
    return raw | byte << 63, pos + 10


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Read an Avro ``long`` (zigzag varint)."""
    raw, pos = _uvarint(data, pos)
    return (raw >> 1) ^ -(raw & 1), pos


def _read_size(data: bytes, pos: int) -> tuple[int, int]:
    """Read the length of a bytes or string value, refusing a negative one (two-byte case first)."""
    low = data[pos]
    if low > 0x7F:
        high = data[pos + 1]
        if high < 0x80 and not low & 1:
            return ((high << 7) | (low & 0x7F)) >> 1, pos + 2
    raw, end = _uvarint(data, pos)
    if raw & 1:
        raise ValueError(f"negative length {(raw >> 1) ^ -1} at offset {pos}")
    return raw >> 1, end


def _overlong(pos: int, kind: str) -> ValueError:
    bits = 32 if kind == "int" else 64
    return ValueError(f"varint at offset {pos} is longer than an Avro {kind} ({bits} bits) can be")


def _overrun(pos: int, size: int) -> EOFError:
    return EOFError(f"the body is {size} bytes, a value ends at offset {pos}: truncated or corrupt")


def _too_many(count: int, item_size: int, pos: int, size: int) -> EOFError:
    return EOFError(
        f"a block of {count} items of at least {item_size} byte(s) at offset {pos}, "
        f"only {max(size - pos, 0)} byte(s) left"
    )


def _bad_index(raw: int, what: str, count: int) -> IndexError:
    index = (raw >> 1) ^ -(raw & 1)
    return IndexError(f"{what} index {index} out of range (0..{count - 1})")


def _bad_boolean(byte: int) -> ValueError:
    return ValueError(f"boolean byte is {byte:#04x}, not 0x00 or 0x01")


def _decimal_too_wide(unscaled: int, precision: int, scale: int) -> ValueError:
    return ValueError(
        f"unscaled decimal {unscaled} has more than {precision} digits (decimal({precision},{scale}))"
    )


# The time-of-day readers are fastavro's own arithmetic (float division included), so the values
# and the errors are the same.
def _time_millis(value: int) -> time:
    hours = int(value / 3_600_000)
    minutes = int(value / 60_000) % 60
    seconds = int(value / 1000) % 60
    micros = int(value % 1000) * 1000
    return time(hours, minutes, seconds, micros)


def _time_micros(value: int) -> time:
    hours = int(value / 3_600_000_000)
    minutes = int(value / 60_000_000) % 60
    seconds = int(value / 1_000_000) % 60
    return time(hours, minutes, seconds, value % 1_000_000)


_HELPERS: dict[str, Any] = {
    "_uvarint": _uvarint,
    "_read_long": _read_long,
    "_read_size": _read_size,
    "_overlong": _overlong,
    "_overrun": _overrun,
    "_too_many": _too_many,
    "_bad_index": _bad_index,
    "_bad_boolean": _bad_boolean,
    "_decimal_too_wide": _decimal_too_wide,
    "_time_millis": _time_millis,
    "_time_micros": _time_micros,
    "_from_bytes": int.from_bytes,
    "_UUID": uuid.UUID,
    "_fromordinal": date.fromordinal,
    # fastavro adds timedelta(microseconds=value * 1000) to the epoch: multiplying a timedelta is the
    # same exact integer arithmetic, and faster than building one from keyword arguments.
    "_MILLISECOND": timedelta(milliseconds=1),
    "_MICROSECOND": timedelta(microseconds=1),
    "_EPOCH": _EPOCH,
    "_EPOCH_NAIVE": _EPOCH_NAIVE,
    "_unpack_float": struct.Struct("<f").unpack_from,
    "_unpack_double": struct.Struct("<d").unpack_from,
}

_LOGICAL_CONVERSIONS: Mapping[tuple[str, str], str] = {
    ("int", "date"): f"_fromordinal({{}} + {_EPOCH_ORDINAL})",
    ("int", "time-millis"): "_time_millis({})",
    ("long", "time-micros"): "_time_micros({})",
    ("long", "timestamp-millis"): "_EPOCH + _MILLISECOND * {}",
    ("long", "timestamp-micros"): "_EPOCH + _MICROSECOND * {}",
    ("long", "local-timestamp-millis"): "_EPOCH_NAIVE + _MILLISECOND * {}",
    ("long", "local-timestamp-micros"): "_EPOCH_NAIVE + _MICROSECOND * {}",
    ("string", "uuid"): "_UUID({})",
}
"""Logical types converted from the base value by one expression (``{}`` is the base value)."""


# --------------------------------------------------------------------------------------------------
# The compiler: one generated function per record type, every other type inlined into it.


def _full_name(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _non_negative_int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise UnsupportedSchemaError(f"{what} {value!r}")
    return value


def _is_null(schema: Any) -> bool:
    return schema == "null" or (isinstance(schema, Mapping) and schema.get("type") == "null")


class _Compiler:
    """Generates the source of the decoder functions, then compiles them together."""

    def __init__(self) -> None:
        self.globals: dict[str, Any] = dict(_HELPERS)
        self.functions: list[str] = []
        self.named: dict[str, Mapping[str, Any]] = {}  # full name -> definition of a named type
        self.records: dict[str, str] = {}  # full name of a record -> its generated function's name
        self.counter = itertools.count()

    def compile(self, schema: Any) -> Decoder:
        if isinstance(schema, Mapping) and schema.get("type") in ("record", "error"):
            top = self.record_function(schema, "", top=True)
        else:
            top = self.fresh("_top")
            lines = [f"def {top}(data, pos):"]
            value = self.fresh("v")
            self.emit(schema, "", value, lines, "    ")
            lines += [
                "    if pos > len(data):",
                "        raise _overrun(pos, len(data))",
                f"    return {value}, pos",
            ]
            self.functions.append("\n".join(lines))
        source = "\n\n".join(self.functions) + "\n"
        exec(compile(source, "<avro decoder>", "exec"), self.globals)  # noqa: S102 - see the module doc
        return cast(Decoder, self.globals[top])

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"

    def constant(self, prefix: str, value: Any) -> str:
        name = self.fresh(prefix)
        self.globals[name] = value
        return name

    def define(self, schema: Mapping[str, Any], namespace: str) -> str:
        """Register a named type (record, enum, fixed); return its full name."""
        name = schema.get("name")
        space = schema.get("namespace", namespace)
        if not isinstance(name, str) or not isinstance(space, str):
            raise UnsupportedSchemaError(f"named type without a usable name: {schema!r}")
        full = _full_name(name, space)
        self.named[full] = schema
        return full

    def record_function(self, schema: Mapping[str, Any], namespace: str, *, top: bool = False) -> str:
        """Generate the function of a record type; only the top-level one checks for an overrun."""
        full = self.define(schema, namespace)
        function = self.fresh("_record")
        self.records[full] = function  # before the fields: a self-reference calls this very function
        inner_namespace = full.rpartition(".")[0]
        fields = schema.get("fields")
        if not isinstance(fields, list):
            raise UnsupportedSchemaError(f"record {full} without a field list")
        lines = [f"def {function}(data, pos):"]
        items: list[str] = []
        for field in fields:
            if (
                not isinstance(field, Mapping)
                or not isinstance(field.get("name"), str)
                or "type" not in field
            ):
                raise UnsupportedSchemaError(f"field {field!r} of {full}")
            value = self.fresh("v")
            self.emit(field["type"], inner_namespace, value, lines, "    ")
            items.append(f"{field['name']!r}: {value}")
        if top:
            lines += ["    if pos > len(data):", "        raise _overrun(pos, len(data))"]
        lines.append(f"    return {{{', '.join(items)}}}, pos")
        self.functions.append("\n".join(lines))
        return function

    # -- dispatch ----------------------------------------------------------------------------------

    def emit(self, schema: Any, namespace: str, target: str, lines: list[str], indent: str) -> None:
        """Append statements that read a value of ``schema`` at ``pos`` into the local ``target``."""
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                self.emit_primitive(schema, target, lines, indent)
            else:
                self.emit_reference(schema, namespace, target, lines, indent)
            return
        if isinstance(schema, list):
            self.emit_union(schema, namespace, target, lines, indent)
            return
        if not isinstance(schema, Mapping):
            raise UnsupportedSchemaError(repr(schema))
        kind = schema.get("type")
        logical = schema.get("logicalType")
        if logical is not None:
            self.emit_logical(kind, logical, schema, namespace, target, lines, indent)
        elif kind in ("record", "error"):
            function = self.record_function(schema, namespace)
            lines.append(f"{indent}{target}, pos = {function}(data, pos)")
        elif kind == "enum":
            self.define(schema, namespace)
            self.emit_enum(schema, target, lines, indent)
        elif kind == "fixed":
            self.define(schema, namespace)
            self.emit_fixed(schema, target, lines, indent)
        elif kind == "array":
            self.emit_array(schema, namespace, target, lines, indent)
        elif kind == "map":
            self.emit_map(schema, namespace, target, lines, indent)
        elif isinstance(kind, str) and kind in _PRIMITIVES:
            self.emit_primitive(kind, target, lines, indent)
        else:
            raise UnsupportedSchemaError(repr(kind))

    def emit_reference(self, name: str, namespace: str, target: str, lines: list[str], indent: str) -> None:
        full = _full_name(name, namespace)
        if full not in self.named:
            full = name
        if full in self.records:
            lines.append(f"{indent}{target}, pos = {self.records[full]}(data, pos)")
            return
        definition = self.named.get(full)
        if definition is None:
            raise UnsupportedSchemaError(f"unknown type {name!r}")
        # An enum or a fixed (maybe a decimal): read it as defined.
        self.emit(definition, full.rpartition(".")[0], target, lines, indent)

    # -- primitives --------------------------------------------------------------------------------

    def emit_primitive(self, kind: str, target: str, lines: list[str], indent: str) -> None:
        if kind == "null":
            lines.append(f"{indent}{target} = None")
        elif kind in ("int", "long"):
            self.emit_varint(kind, target, lines, indent)
        elif kind == "boolean":
            lines += [
                f"{indent}{target} = data[pos]",
                f"{indent}pos += 1",
                f"{indent}if {target} > 1:",
                f"{indent}    raise _bad_boolean({target})",
                f"{indent}{target} = {target} == 1",
            ]
        elif kind == "float":
            lines += [f"{indent}({target},) = _unpack_float(data, pos)", f"{indent}pos += 4"]
        elif kind == "double":
            lines += [f"{indent}({target},) = _unpack_double(data, pos)", f"{indent}pos += 8"]
        else:  # bytes, string
            length = self.emit_length(lines, indent)
            decode = ".decode()" if kind == "string" else ""
            lines += [f"{indent}{target} = data[pos:pos + {length}]{decode}", f"{indent}pos += {length}"]

    def emit_raw_varint(self, kind: str, target: str, lines: list[str], indent: str) -> None:
        """The raw (still zigzagged) varint of an int or long into ``target``, fully unrolled inline.

        Each byte is added at its place, continuation bit and all, and the sum of the continuation bits
        is taken off at the end. An ``int`` takes at most 5 bytes and 32 bits, a ``long`` 10 bytes and
        64 bits: the last byte may hold only the bits left (4 or 1), else the varint is over-long.
        """
        byte = self.fresh("t")
        last = 5 if kind == "int" else 10
        lines += [
            f"{indent}{target} = data[pos]",
            f"{indent}if {target} < 128:",
            f"{indent}    pos += 1",
            f"{indent}else:",
        ]
        continuation = 0
        for index in range(1, last):
            continuation += 128 << 7 * (index - 1)
            inner = indent + "    " * index
            lines += [f"{inner}{byte} = data[pos + {index}]"]
            if index < last - 1:
                lines += [
                    f"{inner}if {byte} < 128:",
                    f"{inner}    {target} += ({byte} << {7 * index}) - {continuation}",
                    f"{inner}    pos += {index + 1}",
                    f"{inner}else:",
                    f"{inner}    {target} += {byte} << {7 * index}",
                ]
            else:
                top_bits = (32 if kind == "int" else 64) - 7 * index
                lines += [
                    f"{inner}if {byte} >> {top_bits}:",
                    f"{inner}    raise _overlong(pos, {kind!r})",
                    f"{inner}{target} += ({byte} << {7 * index}) - {continuation}",
                    f"{inner}pos += {index + 1}",
                ]

    def emit_varint(self, kind: str, target: str, lines: list[str], indent: str) -> None:
        self.emit_raw_varint(kind, target, lines, indent)
        lines.append(f"{indent}{target} = ({target} >> 1) ^ -({target} & 1)")

    def emit_length(self, lines: list[str], indent: str) -> str:
        """A non-negative length into a fresh local, ``pos`` left at the data; no bounds check."""
        length = self.fresh("t")
        lines += [
            f"{indent}{length} = data[pos]",
            f"{indent}if {length} & 0x81:",  # a multi-byte varint, or a negative length
            f"{indent}    {length}, pos = _read_size(data, pos)",
            f"{indent}else:",
            f"{indent}    pos += 1",
            f"{indent}    {length} >>= 1",
        ]
        return length

    def emit_index(self, lines: list[str], indent: str) -> str:
        """A union branch or enum index into a fresh local, left zigzagged (index ``i`` is ``2 * i``)."""
        raw = self.fresh("t")
        lines += [
            f"{indent}{raw} = data[pos]",
            f"{indent}if {raw} < 128:",
            f"{indent}    pos += 1",
            f"{indent}else:",
            f"{indent}    {raw}, pos = _uvarint(data, pos)",
        ]
        return raw

    # -- named and complex types -------------------------------------------------------------------

    def emit_enum(self, schema: Mapping[str, Any], target: str, lines: list[str], indent: str) -> None:
        symbols = schema.get("symbols")
        if not isinstance(symbols, list) or not symbols:
            raise UnsupportedSchemaError(f"enum symbols {symbols!r}")
        table = self.constant("_symbols", tuple(symbols))
        raw = self.emit_index(lines, indent)
        lines += [
            f"{indent}if {raw} & 1 or {raw} >= {2 * len(symbols)}:",
            f"{indent}    raise _bad_index({raw}, 'enum', {len(symbols)})",
            f"{indent}{target} = {table}[{raw} >> 1]",
        ]

    def emit_fixed(self, schema: Mapping[str, Any], target: str, lines: list[str], indent: str) -> None:
        size = _non_negative_int(schema.get("size"), "fixed size")
        lines += [f"{indent}{target} = data[pos:pos + {size}]", f"{indent}pos += {size}"]

    def emit_union(
        self, branches: list[Any], namespace: str, target: str, lines: list[str], indent: str
    ) -> None:
        if not branches:
            raise UnsupportedSchemaError("empty union")
        raw = self.emit_index(lines, indent)
        # Non-null branches first: they are the common case of ["null", X].
        order = sorted(range(len(branches)), key=lambda i: _is_null(branches[i]))
        for position, index in enumerate(order):
            lines.append(f"{indent}{'if' if position == 0 else 'elif'} {raw} == {2 * index}:")
            self.emit(branches[index], namespace, target, lines, indent + "    ")
        lines += [f"{indent}else:", f"{indent}    raise _bad_index({raw}, 'union', {len(branches)})"]

    def emit_blocks(self, lines: list[str], indent: str, min_item_size: int) -> tuple[str, str]:
        """Open the block loop of an array or map; return the item count local and the body indent."""
        count = self.fresh("t")
        self.emit_varint("long", count, lines, indent)
        lines += [
            f"{indent}while {count}:",
            f"{indent}    if {count} < 0:",  # a negative count is followed by the block's byte size
            f"{indent}        {count} = -{count}",
            f"{indent}        _, pos = _read_long(data, pos)",
        ]
        if min_item_size:  # fail before looping over a count the remaining bytes cannot hold
            lines += [
                f"{indent}    if {count} * {min_item_size} > len(data) - pos:",
                f"{indent}        raise _too_many({count}, {min_item_size}, pos, len(data))",
            ]
        lines.append(f"{indent}    for _ in range({count}):")
        return count, indent + "        "

    def emit_array(
        self, schema: Mapping[str, Any], namespace: str, target: str, lines: list[str], indent: str
    ) -> None:
        if "items" not in schema:
            raise UnsupportedSchemaError("array without items")
        lines.append(f"{indent}{target} = []")
        count, body = self.emit_blocks(lines, indent, self.min_size(schema["items"], namespace, set()))
        item = self.fresh("v")
        self.emit(schema["items"], namespace, item, lines, body)
        lines.append(f"{body}{target}.append({item})")
        self.emit_varint("long", count, lines, indent + "    ")

    def emit_map(
        self, schema: Mapping[str, Any], namespace: str, target: str, lines: list[str], indent: str
    ) -> None:
        if "values" not in schema:
            raise UnsupportedSchemaError("map without values")
        lines.append(f"{indent}{target} = {{}}")
        min_size = 1 + self.min_size(schema["values"], namespace, set())  # the key's length is 1 byte+
        count, body = self.emit_blocks(lines, indent, min_size)
        key, value = self.fresh("v"), self.fresh("v")
        self.emit_primitive("string", key, lines, body)
        self.emit(schema["values"], namespace, value, lines, body)
        lines.append(f"{body}{target}[{key}] = {value}")
        self.emit_varint("long", count, lines, indent + "    ")

    def min_size(self, schema: Any, namespace: str, seen: set[str]) -> int:
        """A lower bound of the bytes a value of the schema takes (0 for null and empty records)."""
        if isinstance(schema, list):
            return 1  # the branch index
        if isinstance(schema, str):
            if schema == "null":
                return 0
            if schema in _PRIMITIVES:
                return {"float": 4, "double": 8}.get(schema, 1)
            full = _full_name(schema, namespace)
            definition = self.named.get(full) or self.named.get(schema)
            if definition is None or full in seen or schema in seen:
                return 0  # unknown yet, or recursive: count nothing
            seen.add(full)
            return self.min_size(definition, full.rpartition(".")[0], seen)
        if not isinstance(schema, Mapping):
            return 0
        kind = schema.get("type")
        if kind in ("record", "error"):
            name, space = schema.get("name"), schema.get("namespace", namespace)
            if not isinstance(name, str) or not isinstance(space, str):
                return 0
            full = _full_name(name, space)
            seen.add(full)
            fields = schema.get("fields")
            if not isinstance(fields, list):
                return 0
            inner = full.rpartition(".")[0]
            return sum(self.min_size(f.get("type"), inner, seen) for f in fields if isinstance(f, Mapping))
        if kind == "fixed":
            size = schema.get("size")
            return size if type(size) is int and size > 0 else 0
        if isinstance(kind, str):
            return self.min_size(kind, namespace, seen)
        return 0

    # -- logical types -----------------------------------------------------------------------------

    def emit_logical(
        self,
        kind: Any,
        logical: Any,
        schema: Mapping[str, Any],
        namespace: str,
        target: str,
        lines: list[str],
        indent: str,
    ) -> None:
        if logical == "decimal" and kind in ("bytes", "fixed"):
            self.emit_decimal(kind, schema, namespace, target, lines, indent)
            return
        conversion = _LOGICAL_CONVERSIONS.get((kind, logical)) if isinstance(kind, str) else None
        if conversion is None or not isinstance(logical, str):
            raise UnsupportedSchemaError(f"{kind}/{logical}")
        self.emit_primitive(kind, target, lines, indent)
        lines.append(f"{indent}{target} = {conversion.format(target)}")

    def emit_decimal(
        self, kind: str, schema: Mapping[str, Any], namespace: str, target: str, lines: list[str], indent: str
    ) -> None:
        precision = _non_negative_int(schema.get("precision"), "decimal precision")
        scale = _non_negative_int(schema.get("scale", 0), "decimal scale")
        if not 0 < precision <= _MAX_DECIMAL_PRECISION or scale > precision:
            raise UnsupportedSchemaError(f"decimal({precision},{scale})")
        if kind == "fixed":
            self.define(schema, namespace)
            length = str(_non_negative_int(schema.get("size"), "fixed size"))
        else:
            length = self.emit_length(lines, indent)
        # fastavro makes a Decimal of the unscaled integer in a context of the schema's precision, then
        # scales it by 10**-scale in that context. When the digits fit the precision, both steps are
        # exact, and so is multiplying by Decimal("1E-<scale>") in that context: the same value with
        # the same exponent (-scale), in half the time.
        multiply = self.constant("_multiply", Context(prec=precision).multiply)
        unit = self.constant("_unit", Decimal(1).scaleb(-scale))
        limit = 10**precision
        # Up to ``safe`` bytes, any two's-complement value has fewer digits than the precision.
        safe = max((n for n in range(1, precision + 2) if 1 << (8 * n - 1) < limit), default=0)
        lines += [
            f"{indent}{target} = _from_bytes(data[pos:pos + {length}], 'big', signed=True)",
            f"{indent}pos += {length}",
            f"{indent}if {length} > {safe} and not -{limit} < {target} < {limit}:",
            f"{indent}    raise _decimal_too_wide({target}, {precision}, {scale})",
            f"{indent}{target} = {multiply}({target}, {unit})",
        ]
