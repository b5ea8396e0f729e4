"""Write to the real PostgreSQL server; wrong credentials fail as they would on SQL Server."""

from __future__ import annotations

import asyncpg
import pg8000.dbapi
import pytest

from pacs_sync.db_errors import translate_db_error
from pacs_sync.errors import ErrorCode, FatalError, RetriableError
from pacs_sync.stack import LocalStack


async def test_copy_and_position_guarded_upsert_round_trip(pg_schema: tuple[asyncpg.Connection, str]) -> None:
    conn, schema = pg_schema
    await conn.execute(
        f'CREATE TABLE "{schema}".property '
        "(property_id bigint PRIMARY KEY, city text, position bigint NOT NULL)"
    )
    await conn.copy_records_to_table(
        "property", schema_name=schema, records=[(1, "Kennewick", 10), (2, "Richland", 10)]
    )
    upsert = (
        f'INSERT INTO "{schema}".property AS t VALUES ($1, $2, $3) '
        "ON CONFLICT (property_id) DO UPDATE SET city = EXCLUDED.city, position = EXCLUDED.position "
        "WHERE t.position < EXCLUDED.position"
    )
    await conn.executemany(upsert, [(1, "Pasco", 20), (2, "Stale", 5)])
    rows = await conn.fetch(f'SELECT property_id, city, position FROM "{schema}".property ORDER BY 1')
    assert [tuple(r) for r in rows] == [(1, "Pasco", 20), (2, "Richland", 10)]


def test_wrong_password_is_rejected_with_pacs_002(stack: LocalStack, target_dsn: str) -> None:
    parts = stack.settings.target_parts
    with pytest.raises(pg8000.dbapi.DatabaseError) as caught:
        pg8000.dbapi.connect(
            host=parts["host"],
            port=parts["port"],
            user=parts["user"],
            password="not-the-password",
            database=parts["database"],
            timeout=5,
        )
    err = translate_db_error(caught.value, server="target")
    assert isinstance(err, FatalError)
    assert err.code is ErrorCode.AUTHENTICATION_FAILED


def test_unreachable_port_is_retriable_pacs_001(target_dsn: str) -> None:
    with pytest.raises(pg8000.dbapi.InterfaceError) as caught:
        pg8000.dbapi.connect(host="127.0.0.1", port=1, user="x", password="y", timeout=3)
    err = translate_db_error(caught.value, server="source")
    assert isinstance(err, RetriableError)
    assert err.code is ErrorCode.CONNECTION_UNAVAILABLE


def test_source_login_and_database_are_provisioned(stack: LocalStack, target_dsn: str) -> None:
    settings = stack.settings
    conn = pg8000.dbapi.connect(
        host=settings.db_host,
        port=settings.db_port,
        user=settings.db_user,
        password=settings.db_password.get_secret_value(),
        database=settings.db_name,
        timeout=5,
    )
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT current_user, current_database()")
        assert cursor.fetchone() == [settings.db_user, settings.db_name]
    finally:
        conn.close()
