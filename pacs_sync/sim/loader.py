"""``pacs-sync sim init``: (re)create the emulated PACS database and load generated data.

Order matters and mirrors a real deployment: the PACS tables are loaded first and CDC is enabled
afterwards, so the existing rows are what the connector's snapshot reads and only later changes flow
through the change tables.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from pg8000.native import identifier

from pacs_sync import dbapi
from pacs_sync.errors import ConfigurationError, LocalStackError, PacsSyncError
from pacs_sync.sim.agent import AgentProcess
from pacs_sync.sim.emulator import PACS_TABLES, EmulatorAdmin, install
from pacs_sync.sim.generator import TABLE_COLUMNS, PacsDataset, Scale, generate
from pacs_sync.sim.settings import SimSettings
from pacs_sync.stack.postgres import PostgresServer, connection_kwargs

logger = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class InitResult:
    """What ``sim init`` did: rows per table, injected bad rows by kind, and how long it took."""

    row_counts: dict[str, int]
    dirty: dict[str, int]
    seconds: float


def emulated_source(settings: SimSettings) -> PostgresServer:
    """The local server that holds the emulated PACS database; refuses a non-local PACS_DB_HOST."""
    if settings.db_host not in _LOOPBACK or settings.db_port != settings.stack_postgres_port:
        raise ConfigurationError(
            f"PACS_DB_HOST={settings.db_host} / PACS_DB_PORT={settings.db_port} is not the local stack "
            f"(127.0.0.1:{settings.stack_postgres_port}); the emulator only runs there"
        )
    server = PostgresServer(settings)
    if server.ping() is None:
        raise LocalStackError(f"PostgreSQL at {server.address} does not answer; run `pacs-sync stack up`")
    return server


def init_database(settings: SimSettings, scale: Scale, *, seed: int, dirty_rate: float) -> InitResult:
    """Drop and re-create the emulated PACS database, load generated data, enable CDC, start the Agent."""
    started = time.perf_counter()
    server = emulated_source(settings)
    database = settings.db_name
    agent = AgentProcess(settings.state_dir, database)
    agent.stop()  # it holds a connection to the database we are about to drop
    root = server.connect()
    try:
        cursor = root.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS {identifier(database)} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {identifier(database)}")
    finally:
        root.close()
    kwargs = connection_kwargs(server, database)
    install(kwargs)
    dataset = generate(scale, seed=seed, dirty_rate=dirty_rate)
    asyncio.run(_copy_dataset(kwargs, dataset))
    server.ensure_login(settings.db_user, settings.db_password.get_secret_value())
    admin = EmulatorAdmin(dbapi.connect(**kwargs, autocommit=True))
    try:
        admin.enable_database()
        for table in PACS_TABLES:
            admin.enable_table(table)
        admin.configure_jobs(
            capture_interval_s=settings.sim_capture_interval_s,
            retention_minutes=settings.sim_retention_minutes,
            cleanup_interval_s=settings.sim_cleanup_interval_s,
            idle_heartbeat_s=settings.sim_idle_heartbeat_s,
        )
        admin.grant_reader(settings.db_user)
        admin.scan()  # recognise the capture instances now, not a poll later
        counts = {table: _count(admin.conn, f"dbo.{table.lower()}") for table in PACS_TABLES}
    finally:
        admin.close()
    agent.start()
    return InitResult(counts, dict(dataset.dirty), time.perf_counter() - started)


async def _copy_dataset(kwargs: dict[str, Any], dataset: PacsDataset) -> None:
    conn = await asyncpg.connect(**kwargs)
    try:
        async with conn.transaction():
            for qualified, rows in dataset.tables().items():
                schema, name = qualified.split(".")
                columns = list(TABLE_COLUMNS[qualified])
                await conn.copy_records_to_table(name, schema_name=schema, columns=columns, records=rows)
                logger.info("loaded %d rows into %s", len(rows), qualified)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _count(conn: dbapi.Connection, qualified_table: str) -> int:
    # Table names come from the fixed PACS table list, never from input.
    return int(dbapi.fetch_all(conn, f"SELECT COUNT(*) FROM {qualified_table}")[0][0])  # noqa: S608


def is_installed(settings: SimSettings) -> bool:
    """Whether the emulated PACS database exists with the emulator in it (so the Agent has work)."""
    server = PostgresServer(settings)
    try:
        conn = server.connect()
    except PacsSyncError:
        return False
    try:
        exists = dbapi.fetch_all(conn, "SELECT 1 FROM pg_database WHERE datname = ?", (settings.db_name,))
    finally:
        conn.close()
    if not exists:
        return False
    conn = dbapi.connect(**connection_kwargs(server, settings.db_name), autocommit=True)
    try:
        return bool(dbapi.fetch_all(conn, "SELECT to_regclass('cdc_emu.cdc_jobs') IS NOT NULL")[0][0])
    finally:
        conn.close()
