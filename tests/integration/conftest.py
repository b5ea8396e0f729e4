"""Fixtures on the real local stack (`pacs-sync stack up`).

With CI=true a service that does not answer fails the run; elsewhere the test is skipped with the
command that starts the stack. Every test gets its own topics and its own database schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from pacs_sync.stack import LocalStack, StackSettings


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
