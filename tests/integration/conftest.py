"""Fixtures on the real local stack (`pacs-sync stack up`).

With CI=true a service that does not answer fails the run; elsewhere the test is skipped with the
command that starts the stack. Every test gets its own topics and its own database schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from pacs_sync import dbapi
from pacs_sync.sim.emulator import PACS_TABLES, EmulatorAdmin, install
from pacs_sync.stack import LocalStack, StackSettings
from pacs_sync.stack.postgres import connection_kwargs


def _unavailable(what: str) -> None:
    message = f"{what} does not answer; start the local stack with `pacs-sync stack up`"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def stack() -> LocalStack:
    return LocalStack(StackSettings.load())


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: LocalStack) -> str:
    if stack.kafka.ping(timeout_s=10) is None:
        _unavailable(f"Kafka at {stack.kafka.address}")
    return stack.settings.kafka_bootstrap_servers


@pytest.fixture(scope="session")
def target_dsn(stack: LocalStack) -> str:
    if stack.postgres.ping() is None:
        _unavailable(f"PostgreSQL at {stack.postgres.address}")
    return stack.settings.target_dsn.get_secret_value()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    base = "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:30]
    return f"t_{base}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_factory(kafka_bootstrap: str, unique_name: str) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for one test; delete them afterwards."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def create(suffix: str = "events", partitions: int = 1, **config: str) -> str:
        name = f"{unique_name}.{suffix}"
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, config=config)])
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield create
    if created:
        for future in admin.delete_topics(created).values():
            future.result(timeout=30)


@pytest.fixture
async def pg_schema(target_dsn: str, unique_name: str) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A connection to the target database and a schema of this test's own, dropped afterwards."""
    conn = await asyncpg.connect(target_dsn)
    await conn.execute(f'CREATE SCHEMA "{unique_name}"')
    try:
        yield conn, unique_name
    finally:
        await conn.execute(f'DROP SCHEMA "{unique_name}" CASCADE')
        await conn.close()


# ---- the CDC emulator: one database per test, cloned from a template loaded once per session ----


@dataclass
class EmulatedPacs:
    """A fresh emulated PACS database with CDC enabled on the four tables."""

    database: str
    admin: EmulatorAdmin
    conn_kwargs: dict[str, Any]
    reader_user: str
    reader_password: str

    def writer(self) -> dbapi.Connection:
        """A superuser connection with autocommit off, as an application writing to PACS."""
        return dbapi.connect(**self.conn_kwargs)

    def reader(self) -> dbapi.Connection:
        """The read-only sync login, autocommit off (as pyodbc)."""
        kwargs = {**self.conn_kwargs, "user": self.reader_user, "password": self.reader_password}
        return dbapi.connect(**kwargs)


@pytest.fixture(scope="session")
def emulator_template(stack: LocalStack, target_dsn: str) -> Iterator[str]:
    name = f"pacs_emu_template_{uuid.uuid4().hex[:8]}"
    admin = stack.postgres.connect()
    try:
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
    try:
        install(connection_kwargs(stack.postgres, name))
        yield name
    finally:
        # A new connection: the fault suite restarts PostgreSQL during the session.
        admin = stack.postgres.connect()
        try:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()


@pytest.fixture
def emulated_pacs(stack: LocalStack, emulator_template: str, unique_name: str) -> Iterator[EmulatedPacs]:
    server = stack.postgres
    root = server.connect()
    reader_user, reader_password = f"{unique_name}_reader", uuid.uuid4().hex
    root.cursor().execute(f'CREATE DATABASE "{unique_name}" TEMPLATE "{emulator_template}"')
    server.ensure_login(reader_user, reader_password)
    kwargs = connection_kwargs(server, unique_name)
    admin = EmulatorAdmin(dbapi.connect(**kwargs, autocommit=True))
    try:
        admin.enable_database()
        for table in PACS_TABLES:
            admin.enable_table(table)
        admin.configure_jobs(idle_heartbeat_s=0)
        admin.grant_reader(reader_user)
        admin.scan()  # recognises the new capture instances
        yield EmulatedPacs(unique_name, admin, kwargs, reader_user, reader_password)
    finally:
        admin.close()
        root.cursor().execute(f'DROP DATABASE IF EXISTS "{unique_name}" WITH (FORCE)')
        root.cursor().execute(f'DROP ROLE IF EXISTS "{reader_user}"')
        root.close()


# ---- the TerraFusion target: one database per test, owned by the target role ----


@pytest.fixture
def target_database(stack: LocalStack, target_dsn: str, unique_name: str) -> Iterator[str]:
    """A fresh, empty target database owned by the target role; returns its DSN."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(target_dsn)
    root = stack.postgres.connect()
    root.cursor().execute(f'CREATE DATABASE "{unique_name}" OWNER "{parts.username}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{unique_name}"))
    finally:
        root.cursor().execute(f'DROP DATABASE IF EXISTS "{unique_name}" WITH (FORCE)')
        root.close()
