"""Pure schema evolution for capture-instance switches.

When a DBA adds a column to a PACS table and enables a second capture instance, the new instance
captures the column. Its events are published with an *evolved* envelope schema: the shipped row
record plus the new columns as nullable fields with a null default, so every reader that knows only
the shipped schema can still read them (Avro schema resolution ignores unknown writer fields).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

Converter = Callable[[Any], Any]

_NUMERIC = re.compile(r"^(?:numeric|decimal)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def _identity(value: Any) -> Any:
    return value


def _as_text(value: Any) -> Any:
    return None if value is None else str(value)


def _as_aware(value: Any) -> Any:
    if value is None or not isinstance(value, datetime):
        return value
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def avro_type_for(sql_type: str) -> tuple[Any, Converter]:
    """The Avro type (non-null branch) for a captured column's SQL type, and a value converter.

    SQL Server reports bare type names (``varchar``, ``decimal``); the emulator reports PostgreSQL's
    (``character varying(10)``, ``numeric(14,2)``). Decimals without a declared precision and any
    unknown type travel as strings, which loses nothing.
    """
    name = sql_type.strip().lower()
    if name.startswith(("bigint", "int8")):
        return "long", _identity
    if name.startswith(("int", "smallint", "tinyint")):
        return "int", _identity
    if name.startswith(("bit", "boolean")):
        return "boolean", _identity
    if name.startswith(("real", "float", "double")):
        return "double", _identity
    if name == "date":
        return {"type": "int", "logicalType": "date"}, _identity
    if name.startswith(("datetime", "smalldatetime", "timestamp")):
        return {"type": "long", "logicalType": "timestamp-millis"}, _as_aware
    match = _NUMERIC.match(name)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        quantum = Decimal(1).scaleb(-scale)

        def to_decimal(value: Any) -> Any:
            return None if value is None else Decimal(value).quantize(quantum)

        return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}, to_decimal
    return "string", _as_text


def evolved_envelope(
    base: Mapping[str, Any], row_name: str, extra: Sequence[tuple[str, Any]]
) -> dict[str, Any]:
    """A copy of an envelope schema whose row record (full name ``row_name``) has extra nullable fields."""
    schema = copy.deepcopy(dict(base))
    short = row_name.rsplit(".", 1)[-1]
    row = _find_record(schema, short)
    if row is None:
        raise ValueError(f"envelope has no inline record {row_name}")
    existing = {f["name"] for f in row["fields"]}
    for field_name, avro_type in extra:
        if field_name in existing:
            continue
        row["fields"].append(
            {
                "name": field_name,
                "type": ["null", avro_type],
                "default": None,
                "doc": "Added by a schema change.",
            }
        )
    return schema


def _find_record(node: Any, short_name: str) -> dict[str, Any] | None:
    if isinstance(node, dict):
        if node.get("type") == "record" and node.get("name") == short_name:
            return node
        for value in node.values():
            found = _find_record(value, short_name)
            if found is not None:
                return found
    elif isinstance(node, list):
        for item in node:
            found = _find_record(item, short_name)
            if found is not None:
                return found
    return None


def convert_extra(values: Sequence[Any], converters: Sequence[Converter]) -> list[Any]:
    """Apply per-column converters to the extra columns' values."""
    return [convert(value) for value, convert in zip(values, converters, strict=True)]


__all__ = ["avro_type_for", "convert_extra", "evolved_envelope"]
