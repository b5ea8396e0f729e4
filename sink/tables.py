"""The TerraFusion tables the sink writes: one spec per entity, matching its clean Avro record.

A column list here is the Avro record's field list (same names, same order) followed by the sink's
own ``source_position``; the migration creates the tables with these columns and a unit test keeps
the three (schema, spec, migration) from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass

SYNC_SCHEMA = "pacs_sync"
"""Schema of the base tables (every row, delete markers included) and the sync bookkeeping."""
PUBLIC_SCHEMA = "terrafusion"
"""Schema of the views applications read: live rows only, no sync columns."""

POSITION_COLUMNS = ("source_commit_lsn", "source_change_lsn", "source_serial", "source_ts", "deleted")
"""Sync columns every entity record carries (see the clean Avro schemas)."""


@dataclass(frozen=True)
class EntitySpec:
    """One entity's clean topic, table and columns."""

    entity: str
    """Name of the entity = suffix of its clean topic (``terrafusion.<entity>``) = table name."""
    schema_name: str
    """Full name of the clean Avro record (``io.terrafusion.model.<Name>``)."""
    key_column: str
    data_columns: tuple[str, ...]
    """Business columns after the key, in Avro field order."""

    @property
    def record_columns(self) -> tuple[str, ...]:
        """Every field of the Avro record, in order: key, data, sync columns."""
        return (self.key_column, *self.data_columns, *POSITION_COLUMNS)

    @property
    def table_columns(self) -> tuple[str, ...]:
        """Columns the sink writes: the record's fields plus the comparable ``source_position``."""
        return (*self.record_columns, "source_position")

    @property
    def table(self) -> str:
        """Qualified base table."""
        return f"{SYNC_SCHEMA}.{self.entity}"


ENTITIES: dict[str, EntitySpec] = {
    spec.entity: spec
    for spec in (
        EntitySpec(
            "properties",
            "io.terrafusion.model.Property",
            "property_id",
            (
                "parcel_number",
                "address",
                "city",
                "state",
                "zip5",
                "zip4",
                "legal_description",
                "acreage",
                "year_built",
            ),
        ),
        EntitySpec(
            "owners",
            "io.terrafusion.model.Owner",
            "owner_id",
            ("property_id", "owner_name", "owner_type", "ownership_pct", "start_date", "end_date"),
        ),
        EntitySpec(
            "valuations",
            "io.terrafusion.model.Valuation",
            "valuation_id",
            ("property_id", "tax_year", "assessed_value", "market_value", "land_value", "improvement_value"),
        ),
        EntitySpec(
            "structures",
            "io.terrafusion.model.Structure",
            "structure_id",
            (
                "property_id",
                "structure_type",
                "square_feet",
                "condition",
                "bedrooms",
                "bathrooms",
                "year_built",
            ),
        ),
    )
}
