"""Every SQL statement the producer sends to the PACS source, in one place.

All of it stays inside the subset that SQL Server (through pyodbc) and the CDC emulator on
PostgreSQL (through pg8000) both accept: ``?`` parameters, unquoted identifiers, no ``TOP`` (``OFFSET 0
ROWS FETCH NEXT ? ROWS ONLY`` instead), no binary literals (LSN sentinels are bound as bytes), no
T-SQL-only functions. The statements the tests run against the emulator are the ones production
runs against SQL Server; ``pacs-sync check-connection --conformance`` runs each once, read-only.

Builders take identifiers only from the validated mapping and from ``cdc.change_tables``, and refuse
anything that is not a plain identifier.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

IDLE_TRAN_ID = b"\x00"
"""``tran_id`` of the dummy lsn_time_mapping rows SQL Server writes while idle."""

GET_MAX_LSN = "SELECT sys.fn_cdc_get_max_lsn()"
GET_MIN_LSN = "SELECT sys.fn_cdc_get_min_lsn(?)"
INCREMENT_LSN = "SELECT sys.fn_cdc_increment_lsn(?)"
MAP_LSN_TO_TIME = "SELECT sys.fn_cdc_map_lsn_to_time(?)"
GET_MAX_TRANSACTION_LSN = "SELECT MAX(start_lsn) FROM cdc.lsn_time_mapping WHERE tran_id <> ?"
GET_NTH_TRANSACTION_LSN_AFTER = (
    "SELECT MAX(start_lsn) FROM (SELECT start_lsn FROM cdc.lsn_time_mapping "
    "WHERE start_lsn > ? AND tran_id <> ? "
    "ORDER BY start_lsn OFFSET 0 ROWS FETCH NEXT ? ROWS ONLY) AS next_lsns"
)
GET_DATABASE_CDC_ENABLED = "SELECT is_cdc_enabled FROM sys.databases WHERE name = ?"
GET_CHANGE_TABLES = (
    "SELECT ct.capture_instance, ct.object_id, ct.start_lsn, s.name AS schema_name, t.name AS table_name "
    "FROM cdc.change_tables AS ct "
    "INNER JOIN sys.tables AS t ON t.object_id = ct.source_object_id "
    "INNER JOIN sys.schemas AS s ON s.schema_id = t.schema_id "
    "ORDER BY ct.source_object_id, ct.create_date"
)
GET_CAPTURED_COLUMNS = (
    "SELECT object_id, column_name, column_ordinal, column_type FROM cdc.captured_columns "
    "ORDER BY object_id, column_ordinal"
)
GET_SOURCE_COLUMNS = (
    "SELECT t.name AS table_name, c.name AS column_name, c.column_id FROM sys.columns AS c "
    "INNER JOIN sys.tables AS t ON t.object_id = c.object_id "
    "INNER JOIN sys.schemas AS s ON s.schema_id = t.schema_id WHERE s.name = ? ORDER BY t.name, c.column_id"
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def checked_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier valid on both engines, else raise ValueError."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def build_changes_query(capture_instance: str, columns: Sequence[str]) -> str:
    """Page through one capture instance's changes after a position, in log order.

    Parameters, in order: from_lsn, to_lsn (the TVF's closed interval), then the resume position
    (lsn, seqval, op, lsn, seqval, lsn), the upper bound again, and the page size.
    """
    if not columns:
        raise ValueError("a changes query needs at least one column")
    ci = checked_identifier(capture_instance)
    projected = ", ".join(checked_identifier(c) for c in columns)
    return (
        f"SELECT __$start_lsn, __$seqval, __$operation, __$update_mask, {projected}, "
        "sys.fn_cdc_map_lsn_to_time(__$start_lsn) AS commit_time "
        f"FROM cdc.fn_cdc_get_all_changes_{ci}(?, ?, N'all update old') "
        "WHERE ((__$start_lsn = ? AND __$seqval = ? AND __$operation > ?) "
        "OR (__$start_lsn = ? AND __$seqval > ?) OR (__$start_lsn > ?)) AND __$start_lsn <= ? "
        "ORDER BY __$start_lsn, __$seqval, __$operation OFFSET 0 ROWS FETCH NEXT ? ROWS ONLY"
    )


def build_snapshot_query(schema: str, table: str, columns: Sequence[str], key: str, *, first: bool) -> str:
    """One keyset chunk of a table, ordered by its key. Parameters: [last key,] chunk size."""
    if not columns:
        raise ValueError("a snapshot query needs at least one column")
    projected = ", ".join(checked_identifier(c) for c in columns)
    source = f"{checked_identifier(schema)}.{checked_identifier(table)}"
    key_column = checked_identifier(key)
    where = "" if first else f"WHERE {key_column} > ? "
    return (
        f"SELECT {projected} FROM {source} {where}ORDER BY {key_column} OFFSET 0 ROWS FETCH NEXT ? ROWS ONLY"
    )


def build_count_query(schema: str, table: str) -> str:
    """Row count of a table (snapshot progress)."""
    return f"SELECT COUNT(*) FROM {checked_identifier(schema)}.{checked_identifier(table)}"


def all_static_statements() -> dict[str, str]:
    """The fixed statements by name (for the conformance check)."""
    return {
        "GET_MAX_LSN": GET_MAX_LSN,
        "GET_MIN_LSN": GET_MIN_LSN,
        "INCREMENT_LSN": INCREMENT_LSN,
        "MAP_LSN_TO_TIME": MAP_LSN_TO_TIME,
        "GET_MAX_TRANSACTION_LSN": GET_MAX_TRANSACTION_LSN,
        "GET_NTH_TRANSACTION_LSN_AFTER": GET_NTH_TRANSACTION_LSN_AFTER,
        "GET_DATABASE_CDC_ENABLED": GET_DATABASE_CDC_ENABLED,
        "GET_CHANGE_TABLES": GET_CHANGE_TABLES,
        "GET_CAPTURED_COLUMNS": GET_CAPTURED_COLUMNS,
        "GET_SOURCE_COLUMNS": GET_SOURCE_COLUMNS,
    }
