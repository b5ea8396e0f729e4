"""SQL text the sink runs, built from the entity specs (pure functions, unit-tested)."""

from __future__ import annotations

from sink.tables import PUBLIC_SCHEMA, SYNC_SCHEMA, EntitySpec

SHADOW_SUFFIX = "__shadow"
"""A resync rebuilds ``pacs_sync.<entity>`` as ``pacs_sync.<entity>__shadow``, then swaps them."""

MIGRATIONS_TABLE = f"{SYNC_SCHEMA}.schema_migrations"

# Any fixed 64-bit number: the sink's writers and a resync's swap serialise on it per entity.
_ADVISORY_LOCK_BASE = 0x7AC5_0000


def create_migrations_table() -> str:
    """The table that records which migrations were applied (and their text's digest)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version integer PRIMARY KEY, name text NOT NULL, "
        "sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )


def applied_migrations() -> str:
    """Version and digest of every applied migration."""
    return f"SELECT version, sha256 FROM {MIGRATIONS_TABLE}"


def record_migration() -> str:
    """Record one applied migration ($1 version, $2 name, $3 sha256)."""
    return f"INSERT INTO {MIGRATIONS_TABLE} (version, name, sha256) VALUES ($1, $2, $3)"


def stage_table(spec: EntitySpec) -> str:
    """Name of the session-local staging table COPY fills (one per entity and connection)."""
    return f"sink_stage_{spec.entity}"


def create_stage_table(spec: EntitySpec) -> str:
    """A temp table shaped like the base table; emptied at each commit."""
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage_table(spec)} "
        f"(LIKE {spec.table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


def upsert(spec: EntitySpec, table: str | None = None) -> str:
    """Move staged rows into ``table`` (default: the base table) under the position guard.

    A row is inserted, or replaces the stored one only if it comes later in source order. Equal
    positions are ignored too: a re-delivered record is a no-op.
    """
    target = table or spec.table
    columns = spec.table_columns
    names = ", ".join(columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != spec.key_column)
    return (
        f"INSERT INTO {target} AS t ({names}, synced_at) "
        f"SELECT {names}, now() FROM {stage_table(spec)} "
        f"ON CONFLICT ({spec.key_column}) DO UPDATE SET {updates}, synced_at = excluded.synced_at "
        f"WHERE t.source_position < excluded.source_position"
    )


def counted_upsert(spec: EntitySpec, table: str | None = None) -> str:
    """:func:`upsert`, answering one row: (rows applied, of which delete markers)."""
    return (
        f"WITH applied AS ({upsert(spec, table)} RETURNING t.deleted) "
        "SELECT count(*), count(*) FILTER (WHERE deleted) FROM applied"
    )


def truncate_stage(spec: EntitySpec) -> str:
    """Empty the staging table (between the bisection attempts of one transaction)."""
    return f"TRUNCATE {stage_table(spec)}"


def save_offsets() -> str:
    """Upsert one partition's next offset for a consumer ($1 consumer, $2 topic, $3 partition, $4 offset)."""
    return (
        f"INSERT INTO {SYNC_SCHEMA}.sync_offsets (consumer, topic, partition, next_offset) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition) "
        "DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()"
    )


def load_offsets() -> str:
    """Every stored offset of a consumer ($1)."""
    return f"SELECT topic, partition, next_offset FROM {SYNC_SCHEMA}.sync_offsets WHERE consumer = $1"


def entity_lock(spec: EntitySpec) -> str:
    """Transaction-scoped advisory lock of an entity: writers take it shared, the resync swap exclusive."""
    return f"SELECT pg_advisory_xact_lock_shared({_ADVISORY_LOCK_BASE + _entity_number(spec)})"


def entity_lock_exclusive(spec: EntitySpec) -> str:
    """The exclusive form of :func:`entity_lock` (the swap waits for in-flight batches)."""
    return f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_BASE + _entity_number(spec)})"


def _entity_number(spec: EntitySpec) -> int:
    return sum(spec.entity.encode()) % 4096


def public_view(spec: EntitySpec) -> str:
    """The application-facing view: live rows, business columns only."""
    columns = ", ".join((spec.key_column, *spec.data_columns))
    return (
        f"CREATE OR REPLACE VIEW {PUBLIC_SCHEMA}.{spec.entity} AS "
        f"SELECT {columns} FROM {spec.table} WHERE NOT deleted"
    )


def create_shadow(spec: EntitySpec) -> str:
    """An empty copy of the base table with its keys, checks and indexes."""
    shadow = spec.table + SHADOW_SUFFIX
    return f"DROP TABLE IF EXISTS {shadow}; CREATE TABLE {shadow} (LIKE {spec.table} INCLUDING ALL)"


def swap_shadow(spec: EntitySpec) -> list[str]:
    """Statements that replace the base table by its shadow (run in one transaction, under the lock).

    The view is re-pointed in the same transaction: readers see the old table or the new one,
    never an empty or half-built one.
    """
    old = f"{spec.entity}__replaced"
    return [
        f"LOCK TABLE {spec.table} IN ACCESS EXCLUSIVE MODE",
        f"ALTER TABLE {spec.table} RENAME TO {old}",
        f"ALTER TABLE {spec.table}{SHADOW_SUFFIX} RENAME TO {spec.entity}",
        public_view(spec),
        f"DROP TABLE {SYNC_SCHEMA}.{old}",
    ]


def start_run() -> str:
    """Record a run ($1 kind, $2 entities) as running; returns its run_id."""
    return f"INSERT INTO {SYNC_SCHEMA}.sync_runs (kind, entities) VALUES ($1, $2) RETURNING run_id"


def finish_run() -> str:
    """Record a run's outcome ($1 state, $2 detail JSON text, $3 run_id)."""
    return (
        f"UPDATE {SYNC_SCHEMA}.sync_runs SET state = $1, finished_at = now(), detail = $2::jsonb "
        "WHERE run_id = $3"
    )


def count_rows(spec: EntitySpec) -> str:
    """Rows of the base table, delete markers included."""
    return f"SELECT count(*) FROM {spec.table}"


def delete_offsets() -> str:
    """Forget every offset of a consumer ($1): a finished resync's replay position."""
    return f"DELETE FROM {SYNC_SCHEMA}.sync_offsets WHERE consumer = $1"


def purge_markers(spec: EntitySpec) -> str:
    """Remove delete markers older than $1 (an interval): no replay can resurrect them any more."""
    return f"DELETE FROM {spec.table} WHERE deleted AND synced_at < now() - $1::interval"
