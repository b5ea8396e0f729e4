"""Install and administer the SQL Server CDC emulator in a PostgreSQL database.

The emulator itself is SQL (``sql/cdc_emulator.sql``, ``sql/pacs_schema.sql``), loadable with psql
alone. This module applies those files and wraps the administrative procedures (enable CDC, run a
capture scan or the cleanup job, move the emulator clock) that a SQL Server DBA or SQL Server Agent
would run; none of it is the connector's own SQL.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

import asyncpg
from pg8000.native import identifier, literal

from pacs_sync import dbapi
from pacs_sync.db_errors import translate_db_error

logger = logging.getLogger(__name__)

PACS_TABLES = ("Property", "PropertyOwner", "PropertyValue", "Structure")
"""The PACS tables the connector captures, in dependency order (parents first)."""

_SQL_FILES = ("cdc_emulator.sql", "pacs_schema.sql")


def sql_text(name: str) -> str:
    """The text of one of the emulator's SQL files."""
    return resources.files("pacs_sync.sim").joinpath("sql", name).read_text(encoding="utf-8")


def install(conn_kwargs: dict[str, Any], *, with_pacs_schema: bool = True) -> None:
    """Load the emulator (and the PACS tables) into the database ``conn_kwargs`` points at.

    Uses asyncpg's simple-query protocol, which runs a multi-statement script the way psql does.
    """
    files = _SQL_FILES if with_pacs_schema else _SQL_FILES[:1]
    asyncio.run(_run_scripts(conn_kwargs, [sql_text(name) for name in files]))


async def _run_scripts(conn_kwargs: dict[str, Any], scripts: list[str]) -> None:
    try:
        conn = await asyncpg.connect(**conn_kwargs)
    except (OSError, asyncpg.PostgresError) as exc:
        raise translate_db_error(exc, server=f"PostgreSQL {conn_kwargs.get('database')}") from exc
    try:
        for script in scripts:
            await conn.execute(script)
    finally:
        await conn.close()


class EmulatorAdmin:
    """Administrative calls on an emulated PACS database, over an autocommit superuser connection.

    The capture procedure commits per scan cycle, so it must run outside a transaction block.
    """

    def __init__(self, conn: dbapi.Connection) -> None:
        """Wrap an open autocommit connection (closed by :meth:`close`)."""
        self.conn = conn

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def _call(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            cursor = self.conn.cursor()
            cursor.execute(sql, params)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        except dbapi.DriverError as exc:
            raise translate_db_error(exc, server="CDC emulator") from exc

    def enable_database(self) -> None:
        """``sys.sp_cdc_enable_db``."""
        self._call("CALL sys.sp_cdc_enable_db()")

    def enable_table(
        self,
        table: str,
        *,
        schema: str = "dbo",
        capture_instance: str | None = None,
        role_name: str | None = None,
        supports_net_changes: bool | None = None,
        captured_column_list: str | None = None,
    ) -> None:
        """``sys.sp_cdc_enable_table``; the capture instance defaults to ``<schema>_<table>``."""
        self._call(
            "CALL sys.sp_cdc_enable_table(source_schema => ?, source_name => ?, role_name => ?, "
            "capture_instance => ?, supports_net_changes => ?, captured_column_list => ?)",
            (schema, table, role_name, capture_instance, supports_net_changes, captured_column_list),
        )

    def disable_table(self, table: str, capture_instance: str = "all", *, schema: str = "dbo") -> None:
        """``sys.sp_cdc_disable_table``."""
        self._call(
            "CALL sys.sp_cdc_disable_table(source_schema => ?, source_name => ?, capture_instance => ?)",
            (schema, table, capture_instance),
        )

    def scan(self, maxtrans: int | None = None, maxscans: int | None = None) -> None:
        """Run the capture job once now (``CALL sys.sp_cdc_scan()``)."""
        self._call("CALL sys.sp_cdc_scan(maxtrans => ?, maxscans => ?)", (maxtrans, maxscans))

    def cleanup(self) -> None:
        """Run the retention-based cleanup job once now."""
        self._call("CALL cdc_emu.cleanup_job()")

    def configure_jobs(
        self,
        *,
        capture_interval_s: float | None = None,
        retention_minutes: int | None = None,
        cleanup_interval_s: float | None = None,
        idle_heartbeat_s: float | None = None,
    ) -> None:
        """Set the capture/cleanup job parameters (``sys.sp_cdc_change_job``) and the idle heartbeat."""
        if capture_interval_s is not None:
            self._call(
                "CALL sys.sp_cdc_change_job(job_type => ?, pollinginterval => ?)",
                ("capture", capture_interval_s),
            )
        if retention_minutes is not None or cleanup_interval_s is not None:
            self._call(
                "CALL sys.sp_cdc_change_job(job_type => ?, retention => ?, pollinginterval => ?)",
                ("cleanup", retention_minutes, cleanup_interval_s),
            )
        if idle_heartbeat_s is not None:
            self._call(
                "UPDATE cdc_emu.settings SET v = ? WHERE k = ?",
                (str(idle_heartbeat_s), "idle_heartbeat_seconds"),
            )

    def job_intervals(self) -> tuple[float, float]:
        """The capture and cleanup polling intervals in seconds, as the Agent should run them."""
        rows = dict(self._call("SELECT job_type, pollinginterval FROM cdc_emu.cdc_jobs"))
        return float(rows.get("capture") or 1.0), float(rows.get("cleanup") or 60.0)

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock forward (ages captured changes for retention tests)."""
        self._call(
            "UPDATE cdc_emu.settings SET v = CAST(CAST(v AS float8) + ? AS text) WHERE k = ?",
            (float(seconds), "clock_offset_seconds"),
        )

    def grant_reader(self, user: str, tables: tuple[str, ...] = PACS_TABLES, schema: str = "dbo") -> None:
        """Make ``user`` the read-only sync login: SELECT on the PACS tables and the CDC objects, no writes.

        The seed's ``GRANT SELECT`` statements, plus read access to the change data (the reader role).
        """
        user_id = identifier(user)
        statements = [
            f"GRANT CONNECT ON DATABASE {identifier(self._database())} TO {user_id}",
            f"GRANT USAGE ON SCHEMA {identifier(schema)} TO {user_id}",
            *(f"GRANT SELECT ON {identifier(schema)}.{identifier(t.lower())} TO {user_id}" for t in tables),
            f"GRANT cdc_emu_readers TO {user_id}",
            f"REVOKE CREATE ON SCHEMA public FROM {user_id}",
        ]
        for sql in statements:
            self._call(sql)
        logger.info("granted read-only access to %s", literal(user))

    def _database(self) -> str:
        return str(self._call("SELECT current_database()")[0][0])
