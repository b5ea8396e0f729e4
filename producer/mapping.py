"""Pure mapping between PACS rows and change events: table mappings, row images, envelopes.

Event field names are the PACS column names of the seed (``PropertyID``, ``ParcelNumber`` …); a
county whose PACS names a column differently maps it in a JSON file (``PACS_COLUMN_MAPPING_FILE``):
``{"Property": {"ZipCode": "Zip5"}}`` reads the ``ZipCode`` field from column ``Zip5``.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacs_sync import __version__
from pacs_sync.lsn import Lsn
from producer.errors import MappingError

CONNECTOR = "terrafusion-pacs-sync"
_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")

# CDC __$operation -> event op. 3 (before image) is folded into the 4 that follows it.
OP_DELETE, OP_INSERT, OP_UPDATE_BEFORE, OP_UPDATE_AFTER = 1, 2, 3, 4
EVENT_OP = {OP_DELETE: "d", OP_INSERT: "c", OP_UPDATE_AFTER: "u"}


@dataclass(frozen=True)
class TableMapping:
    """How one PACS table becomes one entity's events."""

    table: str
    entity: str
    fields: tuple[str, ...]
    columns: tuple[str, ...]
    extra_fields: tuple[str, ...] = field(default=())
    """Columns captured beyond the contract (an evolved capture instance); published as extra fields."""
    partition_field: str | None = None
    """The field whose value picks the event's partition instead of the key (see :meth:`partition`)."""

    @property
    def key_field(self) -> str:
        """The primary-key field (the first field)."""
        return self.fields[0]

    @property
    def key_column(self) -> str:
        """The primary-key column in the source."""
        return self.columns[0]

    def with_extra(self, extra: Sequence[str]) -> TableMapping:
        """This mapping plus extra captured columns (field name = column name)."""
        return replace(self, extra_fields=tuple(extra))

    @property
    def all_columns(self) -> tuple[str, ...]:
        """Source columns to select: the contract's, then the extras."""
        return self.columns + self.extra_fields

    def record(self, values: Sequence[Any]) -> dict[str, Any]:
        """A row image (event field -> value) from values in :attr:`all_columns` order."""
        return dict(zip(self.fields + self.extra_fields, values, strict=True))

    def key(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The key record of a row image."""
        return {self.key_field: record[self.key_field]}

    def partition(self, image: Mapping[str, Any] | None, partitions: int) -> int | None:
        """The partition of an event whose row image is ``image``; None: the key's (the default).

        Owner events are routed by ``PropertyID`` (as Debezium's PartitionRouting transform does):
        the owners of one property then share one partition in commit order, so a sale's end of the
        sellers reaches the processors' owner-share ledger before the buyers' inserts. Keyed by
        owner, the two could sit in different partitions and be checked in either order. The
        record key stays the primary key, so per-key order holds too, except for an owner moved to
        another property, whose events before and after the move are in two partitions (the sink's
        position guard keeps the newest).
        """
        if self.partition_field is None or image is None:
            return None
        value = image.get(self.partition_field)
        return None if value is None else partition_of(str(value), partitions)


def partition_of(text: str, partitions: int) -> int:
    """A stable partition for ``text`` (CRC-32, like librdkafka's "consistent" partitioner)."""
    return zlib.crc32(text.encode()) % partitions


_CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "Property": (
        "properties",
        (
            "PropertyID",
            "ParcelNumber",
            "Address",
            "City",
            "State",
            "ZipCode",
            "LegalDescription",
            "Acreage",
            "YearBuilt",
        ),
    ),
    "PropertyOwner": (
        "owners",
        (
            "PropertyOwnerID",
            "PropertyID",
            "OwnerName",
            "OwnerType",
            "OwnershipPercentage",
            "StartDate",
            "EndDate",
        ),
    ),
    "PropertyValue": (
        "valuations",
        (
            "PropertyValueID",
            "PropertyID",
            "TaxYear",
            "AssessedValue",
            "MarketValue",
            "LandValue",
            "ImprovementValue",
        ),
    ),
    "Structure": (
        "structures",
        (
            "StructureID",
            "PropertyID",
            "StructureType",
            "SquareFootage",
            "Condition",
            "Bedrooms",
            "Bathrooms",
            "YearBuilt",
        ),
    ),
}
TABLES: tuple[str, ...] = tuple(_CONTRACT)
"""The PACS tables, parents first."""

_PARTITION_FIELDS: dict[str, str] = {"PropertyOwner": "PropertyID"}
"""Tables whose events a cross-row rule reads together (OWN-SET-OVER-100), routed by this field."""


def default_mappings() -> dict[str, TableMapping]:
    """The seed's column names, mapped to themselves."""
    return {
        table: TableMapping(
            table=table,
            entity=entity,
            fields=fields,
            columns=fields,
            partition_field=_PARTITION_FIELDS.get(table),
        )
        for table, (entity, fields) in _CONTRACT.items()
    }


def load_mappings(path: Path | None) -> dict[str, TableMapping]:
    """The default mappings with a JSON file's overrides applied (unknown tables or fields are errors)."""
    mappings = default_mappings()
    if path is None:
        return mappings
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MappingError(f"PACS_COLUMN_MAPPING_FILE={path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(overrides, dict):
        raise MappingError(f"PACS_COLUMN_MAPPING_FILE={path}: expected an object of tables")
    for table, columns in overrides.items():
        if table not in mappings or not isinstance(columns, dict):
            raise MappingError(
                f"PACS_COLUMN_MAPPING_FILE={path}: unknown table {table!r} (known: {', '.join(TABLES)})"
            )
        mapping = mappings[table]
        unknown = set(columns) - set(mapping.fields)
        if unknown:
            raise MappingError(f"PACS_COLUMN_MAPPING_FILE={path}: {table} has no field(s) {sorted(unknown)}")
        renamed = tuple(str(columns.get(f, c)) for f, c in zip(mapping.fields, mapping.columns, strict=True))
        bad = [c for c in renamed if not _PLAIN_IDENTIFIER.fullmatch(c)]
        if bad:
            raise MappingError(f"PACS_COLUMN_MAPPING_FILE={path}: {table} maps to invalid column names {bad}")
        mappings[table] = replace(mapping, columns=renamed)
    return mappings


def mapping_problems(mapping: TableMapping, captured: Iterable[str]) -> list[str]:
    """Columns the mapping needs that the capture instance does not capture (case-insensitive)."""
    available = {c.lower() for c in captured}
    return [c for c in mapping.columns if c.lower() not in available]


def extra_captured(mapping: TableMapping, captured: Iterable[str]) -> list[str]:
    """Captured columns beyond the mapping, in capture order (a schema change added them)."""
    mapped = {c.lower() for c in mapping.columns}
    return [c for c in captured if c.lower() not in mapped]


@dataclass(frozen=True)
class SourceInfo:
    """The ``source`` block of an event."""

    db: str
    schema: str
    table: str
    capture_instance: str | None
    commit_lsn: Lsn | None
    change_lsn: Lsn | None
    event_serial_no: int | None
    commit_time: datetime | None
    snapshot: str = "false"

    def as_record(self) -> dict[str, Any]:
        """The Avro ``Source`` record."""
        return {
            "connector": CONNECTOR,
            "version": __version__,
            "db": self.db,
            "schema": self.schema,
            "table": self.table,
            "capture_instance": self.capture_instance,
            "commit_lsn": None if self.commit_lsn is None else str(self.commit_lsn),
            "change_lsn": None if self.change_lsn is None else str(self.change_lsn),
            "event_serial_no": self.event_serial_no,
            "commit_ts_ms": self.commit_time,
            "snapshot": self.snapshot,
        }


def envelope(
    op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, source: SourceInfo, now: datetime
) -> dict[str, Any]:
    """A Debezium-shaped change event."""
    return {"before": before, "after": after, "op": op, "source": source.as_record(), "ts_ms": now}


def utc_now() -> datetime:
    """The current time, timezone-aware (events carry UTC)."""
    return datetime.now(tz=UTC)
