"""DB-API connections to PostgreSQL through pg8000, in qmark paramstyle.

pyodbc (the production SQL Server driver) only speaks ``?`` placeholders, and the connector's SQL is
written once for both engines, so every pg8000 connection in this project uses qmark too. pg8000
reads the paramstyle from a module global at execute time: it is set here, once, and every module
that talks to PostgreSQL through DB-API imports its connections from here.
"""

from __future__ import annotations

from typing import Any

import pg8000.dbapi

from pacs_sync.db_errors import translate_db_error

pg8000.dbapi.paramstyle = "qmark"

DatabaseError = pg8000.dbapi.DatabaseError
DriverError = pg8000.dbapi.Error
Connection = pg8000.dbapi.Connection


def connect(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    timeout: float = 10.0,
    autocommit: bool = False,
    application_name: str = "pacs-sync",
) -> pg8000.dbapi.Connection:
    """Open a connection; driver errors become PACS-001 (unreachable) or PACS-002 (credentials).

    Autocommit is off by default, as on pyodbc, so a reader's statements share one transaction
    until it commits or rolls back.
    """
    server = f"PostgreSQL {host}:{port}/{database}"
    try:
        conn = pg8000.dbapi.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            timeout=timeout,
            application_name=application_name,
        )
    except (pg8000.dbapi.Error, OSError) as exc:
        raise translate_db_error(exc, server=server) from exc
    conn.autocommit = autocommit
    return conn


def fetch_all(conn: pg8000.dbapi.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement and return its rows as tuples."""
    cursor = conn.cursor()
    cursor.execute(sql, params)
    return [tuple(row) for row in cursor.fetchall()]
