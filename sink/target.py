"""The sink's adapter to the TerraFusion PostgreSQL (asyncpg): migrations, offsets, guarded writes.

Driver errors are translated here: an unreachable or dropped server becomes
:class:`~sink.errors.TargetUnavailableError` (retriable), a row PostgreSQL refuses becomes a reject
carried back to the caller (dead-lettered), anything else a fatal PACS-013.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pacs_sync.errors import ErrorCode, PacsSyncError
from pacs_sync.pg_async import (
    acquire,
    apply_migrations,
    open_pool,
    server_message,
    server_name,
    translate_async_error,
)
from sink import statements
from sink.changes import ConsumedRecord, DeadLetter
from sink.errors import TargetUnavailableError
from sink.tables import ENTITIES, SYNC_SCHEMA, EntitySpec

logger = logging.getLogger(__name__)

# Class 22 (data exception) and 23 (integrity constraint violation): the row is at fault, not the
# server or the connection. Those rows are dead-lettered; the rest of the batch commits.
_ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
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
        """Open a pool to the target (``PacsSettings.target_parts``); PACS-001/002 when it cannot."""
        pool = await open_pool(
            parts,
            application_name="pacs-sync-sink",
            pool_size=pool_size,
            timeout=timeout,
            command_timeout=300,
        )
        return cls(pool, server_name(parts))

    async def close(self) -> None:
        """Close every connection (waits for none: a batch in flight is rolled back by the server)."""
        self._pool.terminate()

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the versioned migrations not yet applied (serialised across sinks), then the views.

        Returns the names applied now. A migration already applied whose text changed is refused.
        """
        applied = await apply_migrations(
            self._pool, "sink", schema=SYNC_SCHEMA, lock_id=7340032, server=self.server
        )
        try:
            async with acquire(self._pool) as conn:
                for spec in ENTITIES.values():
                    await conn.execute(statements.public_view(spec))
        except Exception as exc:
            raise _translate(exc, self.server) from exc
        return applied

    # -- offsets -------------------------------------------------------------------------------

    async def load_offsets(self, consumer: str) -> dict[TablePosition, int]:
        """The next offset to read of every partition ``consumer`` has written to."""
        try:
            async with acquire(self._pool) as conn:
                rows = await conn.fetch(statements.load_offsets(), consumer)
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
            async with acquire(self._pool) as conn, conn.transaction():
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
                reject = DeadLetter.rejected(batch[0], sqlstate, server_message(exc))
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
            async with acquire(self._pool) as conn:
                return str(await conn.execute(sql, *args))
        except Exception as exc:
            raise _translate(exc, self.server) from exc

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run one query on a pooled connection (translated errors)."""
        try:
            async with acquire(self._pool) as conn:
                return list(await conn.fetch(sql, *args))
        except Exception as exc:
            raise _translate(exc, self.server) from exc

    def acquire(self) -> Any:
        """A pooled connection (``async with``), for multi-statement work such as the resync swap.

        One that fails with a lost connection is terminated, not returned to the pool.
        """
        return acquire(self._pool)


def _translate(exc: BaseException, server: str) -> PacsSyncError:
    translated = translate_async_error(exc, server)
    if translated.code is ErrorCode.CONNECTION_UNAVAILABLE and translated.retriable:
        return TargetUnavailableError(translated.message, server=server)
    return translated
