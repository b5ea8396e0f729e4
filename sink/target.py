"""The sink's adapter to the TerraFusion PostgreSQL (asyncpg): migrations, offsets, guarded writes.

Driver errors are translated here: an unreachable or dropped server becomes
:class:`~sink.errors.TargetUnavailableError` (retriable), a row PostgreSQL refuses becomes a reject
carried back to the caller (dead-lettered), anything else a fatal PACS-013.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import asyncpg

from pacs_sync.db_errors import translate_db_error
from pacs_sync.errors import ErrorCode, FatalError, PacsSyncError
from sink import statements
from sink.changes import ConsumedRecord, DeadLetter
from sink.errors import MigrationError, TargetUnavailableError
from sink.tables import ENTITIES, SYNC_SCHEMA, EntitySpec

logger = logging.getLogger(__name__)

# Class 22 (data exception) and 23 (integrity constraint violation): the row is at fault, not the
# server or the connection. Those rows are dead-lettered; the rest of the batch commits.
_ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    ConnectionError,
    OSError,
    TimeoutError,
)

TablePosition = tuple[str, int]
"""(topic, partition)"""


@dataclass
class BatchResult:
    """What one committed batch did, per entity."""

    upserted: dict[str, int] = field(default_factory=dict)
    """Rows inserted or moved forward (not deletes)."""
    deleted: dict[str, int] = field(default_factory=dict)
    """Delete markers written."""
    stale: dict[str, int] = field(default_factory=dict)
    """Records the position guard ignored (older than, or equal to, the stored row)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Rows PostgreSQL refused (dead-lettered)."""
    dead_letters: list[DeadLetter] = field(default_factory=list)


class TargetDatabase:
    """A connection pool to the target and the sink's statements on it."""

    def __init__(self, pool: asyncpg.Pool, server: str) -> None:
        """Wrap an open pool (use :meth:`connect`)."""
        self._pool = pool
        self.server = server

    @classmethod
    async def connect(
        cls, parts: Mapping[str, Any], *, pool_size: int = 2, timeout: float = 10.0
    ) -> TargetDatabase:
        """Open a pool to the target (``PacsSettings.target_parts()``); PACS-001/002 when it cannot."""
        server = f"PostgreSQL {parts['host']}:{parts['port']}/{parts['database']}"
        try:
            pool = await asyncpg.create_pool(
                host=parts["host"],
                port=parts["port"],
                user=parts["user"],
                password=parts["password"],
                database=parts["database"],
                min_size=1,
                max_size=pool_size,
                timeout=timeout,
                command_timeout=300,
                server_settings={"application_name": "pacs-sync-sink"},
            )
        except Exception as exc:
            raise _translate(exc, server) from exc
        return cls(pool, server)

    async def close(self) -> None:
        """Close every connection (waits for none: a batch in flight is rolled back by the server)."""
        self._pool.terminate()

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the versioned migrations not yet applied (serialised across sinks), then the views.

        Returns the names applied now. A migration already applied whose text changed is refused.
        """
        applied_now: list[str] = []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7340032)")
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SYNC_SCHEMA}")
                await conn.execute(statements.create_migrations_table())
                done = {r["version"]: r["sha256"] for r in await conn.fetch(statements.applied_migrations())}
                for version, name, text in migration_files():
                    digest = hashlib.sha256(text.encode()).hexdigest()
                    if version in done:
                        if done[version] != digest:
                            raise MigrationError(
                                f"migration {name} was applied with different text; a shipped migration "
                                "must never change (add a new one instead)",
                                migration=name,
                            )
                        continue
                    await conn.execute(text)
                    await conn.execute(statements.record_migration(), version, name, digest)
                    applied_now.append(name)
                for spec in ENTITIES.values():
                    await conn.execute(statements.public_view(spec))
        except PacsSyncError:
            raise
        except Exception as exc:
            raise _translate(exc, self.server) from exc
        if applied_now:
            logger.info("target schema: applied %s", ", ".join(applied_now))
        return applied_now

    # -- offsets -------------------------------------------------------------------------------

    async def load_offsets(self, consumer: str) -> dict[TablePosition, int]:
        """The next offset to read of every partition ``consumer`` has written to."""
        try:
            rows = await self._pool.fetch(statements.load_offsets(), consumer)
        except Exception as exc:
            raise _translate(exc, self.server) from exc
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    # -- the write path ------------------------------------------------------------------------

    async def write_batch(
        self,
        consumer: str,
        records: Mapping[str, Sequence[ConsumedRecord]],
        next_offsets: Mapping[TablePosition, int],
        *,
        before_commit: Callable[[list[DeadLetter]], Awaitable[None]] | None = None,
        tables: Mapping[str, str] | None = None,
    ) -> BatchResult:
        """Write one batch and its offsets in ONE PostgreSQL transaction.

        Guarantees (what makes the sink exactly-once):

        * Atomicity: the rows of every entity in the batch and ``next_offsets`` (the offset after the
          last consumed record of each partition) commit together or not at all. The consumer seeks
          to the stored offsets on assignment, so a crash anywhere re-reads exactly the uncommitted
          records; nothing is skipped and nothing is applied twice.
        * Ordering: ``records`` must already be reduced by key (newest source position per key). Each
          row is written only if its ``source_position`` is greater than the stored one, so the
          table only moves forward in source order whatever the delivery order: duplicates, replays
          from offset 0 and out-of-order partitions are no-ops. Delete markers obey the same guard.
        * Rejects: a row PostgreSQL refuses (class 22/23) is isolated by bisection under savepoints
          and left out; ``before_commit`` receives the rejects and must dead-letter them durably
          before the commit (if it raises, the whole batch rolls back and is retried). A crash
          between the two can dead-letter a row twice, never lose it.
        * Resync: each entity's writers hold its advisory lock shared, so a resync's swap (exclusive)
          happens between batches. ``tables`` maps an entity to another table (the resync's shadow).
        """
        result = BatchResult()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                for entity, batch in records.items():
                    if not batch:
                        continue
                    spec = ENTITIES[entity]
                    await conn.execute(statements.entity_lock(spec))
                    await conn.execute(statements.create_stage_table(spec))
                    table = (tables or {}).get(entity, spec.table)
                    applied, deleted, rejects = await self._write_rows(conn, spec, table, list(batch))
                    result.deleted[entity] = deleted
                    result.upserted[entity] = applied - deleted
                    result.stale[entity] = len(batch) - applied - len(rejects)
                    result.rejected[entity] = len(rejects)
                    result.dead_letters.extend(rejects)
                if next_offsets:
                    await conn.executemany(
                        statements.save_offsets(),
                        [
                            (consumer, topic, partition, offset)
                            for (topic, partition), offset in next_offsets.items()
                        ],
                    )
                if result.dead_letters and before_commit is not None:
                    await before_commit(result.dead_letters)
        except PacsSyncError:
            raise
        except Exception as exc:
            raise _translate(exc, self.server) from exc
        return result

    async def _write_rows(
        self,
        conn: asyncpg.Connection,
        spec: EntitySpec,
        table: str,
        batch: list[ConsumedRecord],
        *,
        bisecting: bool = False,
    ) -> tuple[int, int, list[DeadLetter]]:
        """Stage and upsert ``batch``: (rows applied, of which delete markers, rejects).

        On a row error, bisect under savepoints to isolate the culprits.
        """
        try:
            async with conn.transaction():  # a savepoint: a failed attempt leaves nothing behind
                await conn.copy_records_to_table(
                    statements.stage_table(spec), records=[r.row for r in batch], columns=spec.table_columns
                )
                applied, deleted = await conn.fetchrow(statements.counted_upsert(spec, table))
                if bisecting:  # the next half is staged in the same transaction
                    await conn.execute(statements.truncate_stage(spec))
            return int(applied), int(deleted), []
        except _ROW_ERRORS as exc:
            if len(batch) == 1:
                sqlstate = getattr(exc, "sqlstate", None)
                reject = DeadLetter.rejected(batch[0], sqlstate, _server_message(exc))
                logger.warning(
                    "%s: %s %s rejected by PostgreSQL (%s): %s",
                    ErrorCode.TARGET_WRITE_REJECTED,
                    spec.entity,
                    batch[0].key_value,
                    sqlstate,
                    reject.message,
                )
                return 0, 0, [reject]
        middle = len(batch) // 2
        left = await self._write_rows(conn, spec, table, batch[:middle], bisecting=True)
        right = await self._write_rows(conn, spec, table, batch[middle:], bisecting=True)
        return left[0] + right[0], left[1] + right[1], left[2] + right[2]

    # -- admin ---------------------------------------------------------------------------------

    async def execute(self, sql: str, *args: Any) -> str:
        """Run one statement on a pooled connection (translated errors)."""
        try:
            return str(await self._pool.execute(sql, *args))
        except Exception as exc:
            raise _translate(exc, self.server) from exc

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run one query on a pooled connection (translated errors)."""
        try:
            return list(await self._pool.fetch(sql, *args))
        except Exception as exc:
            raise _translate(exc, self.server) from exc

    def acquire(self) -> Any:
        """A pooled connection (``async with``), for multi-statement work such as the resync swap."""
        return self._pool.acquire()


def migration_files() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every shipped migration, in version order."""
    folder = resources.files("sink") / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _server_message(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None)
    message = str(exc)
    return f"{message} ({detail})" if detail else message


def _translate(exc: BaseException, server: str) -> PacsSyncError:
    if isinstance(exc, _CONNECTION_ERRORS):
        return TargetUnavailableError(f"lost or cannot open a connection to {server}: {exc}", server=server)
    translated = translate_db_error(exc, server=server)
    if translated.retriable:
        return translated
    if translated.code is ErrorCode.AUTHENTICATION_FAILED:
        return translated
    return FatalError(
        f"{server} failed: {_server_message(exc)}",
        code=ErrorCode.DATABASE_ERROR,
        sqlstate=getattr(exc, "sqlstate", None),
        server=server,
    )
