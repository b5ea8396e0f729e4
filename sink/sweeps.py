"""Applying the producer's re-snapshot sweeps (:mod:`pacs_sync.sweeps`): rows the source no longer has.

The sink reads the sweep topic with the clean topics (same consumer, offsets kept in PostgreSQL)
and applies a batch's sweeps right after the batch's rows, in a transaction of their own that also
saves the sweep topic's offsets: a crash before that commit re-reads and re-applies them, which
changes nothing (a swept row is no longer older than the sweep).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Message

from pacs_sync.errors import ErrorCode, PacsSyncError
from pacs_sync.pg_async import translate_async_error
from pacs_sync.sweeps import InvalidSweepError, Sweep
from sink import statements
from sink.errors import TargetUnavailableError
from sink.tables import ENTITIES, EntitySpec
from sink.target import TargetDatabase

logger = logging.getLogger(__name__)


def sweep_statement(spec: EntitySpec, table: str | None = None) -> str:
    """Turn the rows a sweep does not list into delete markers at its position (guarded).

    Parameters: $1 commit LSN text, $2 position, $3 after key (exclusive, NULL: unbounded), $4
    through key (inclusive, NULL: unbounded), $5 the keys the source has in that range. Only live
    rows older than the position change; the marker looks like a CDC delete's (business columns
    NULL, snapshot position: no change LSN, serial 0, no commit time).
    """
    key = spec.key_column
    cleared = ", ".join(f"{column} = NULL" for column in spec.data_columns)
    marker = (
        f"{cleared}, deleted = true, source_commit_lsn = $1, source_change_lsn = NULL, source_serial = 0, "
        "source_ts = NULL, source_position = $2, synced_at = now()"
    )
    swept = (
        f"NOT deleted AND source_position < $2 AND ($3::bigint IS NULL OR {key} > $3) "
        f"AND ($4::bigint IS NULL OR {key} <= $4) AND {key} <> ALL($5::bigint[])"
    )
    return f"UPDATE {table or spec.table} SET {marker} WHERE {swept}"  # noqa: S608 (names from the specs)


@dataclass
class SweepBatch:
    """The sweep records of one consumed batch."""

    sweeps: list[Sweep] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    invalid: int = 0


def split_sweeps(messages: Sequence[Message], topic: str) -> tuple[list[Message], SweepBatch]:
    """Separate the sweep topic's records from the clean topics' (pure; unreadable sweeps are counted)."""
    clean: list[Message] = []
    batch = SweepBatch()
    for message in messages:
        if message.topic() != topic:
            clean.append(message)
            continue
        partition, offset = message.partition() or 0, message.offset() or 0
        batch.next_offsets[(topic, partition)] = offset + 1
        value = message.value()
        if value is None:
            continue
        try:
            batch.sweeps.append(Sweep.from_json(value))
        except InvalidSweepError as exc:
            batch.invalid += 1
            logger.error(
                "%s: skipping sweep %s[%d]@%d: %s", ErrorCode.UNDECODABLE_EVENT, topic, partition, offset, exc
            )
    return clean, batch


async def apply_sweeps(
    target: TargetDatabase,
    consumer: str,
    batch: SweepBatch,
    entities: Iterable[str],
    *,
    tables: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Apply the sweeps of the entities this sink writes, then save the sweep offsets; one transaction.

    Returns the delete markers written per entity. Each entity's sweep takes the entity's advisory
    lock shared, as the batch writers do, so a resync's swap happens before or after it.
    ``tables`` maps an entity to another table (the resync's shadow), as in ``write_batch``.
    """
    written = set(entities)
    markers: dict[str, int] = {}
    try:
        async with target.acquire() as conn, conn.transaction():
            for sweep in batch.sweeps:
                spec = ENTITIES.get(sweep.entity)
                if spec is None or sweep.entity not in written:
                    continue
                await conn.execute(statements.entity_lock(spec))
                status = await conn.execute(
                    sweep_statement(spec, (tables or {}).get(sweep.entity)),
                    str(sweep.commit_lsn),
                    sweep.position,
                    sweep.after_key,
                    sweep.through_key,
                    list(sweep.keys),
                )
                count = int(str(status).split()[-1])
                markers[sweep.entity] = markers.get(sweep.entity, 0) + count
                if count:
                    logger.info(
                        "re-snapshot sweep of %s at %s: %d row(s) the source no longer has marked deleted",
                        sweep.entity,
                        sweep.commit_lsn,
                        count,
                    )
            if batch.next_offsets:
                await conn.executemany(
                    statements.save_offsets(),
                    [(consumer, t, p, o) for (t, p), o in batch.next_offsets.items()],
                )
    except PacsSyncError:
        raise
    except Exception as exc:
        translated = translate_async_error(exc, target.server)
        if translated.code is ErrorCode.CONNECTION_UNAVAILABLE and translated.retriable:
            raise TargetUnavailableError(translated.message, server=target.server) from exc
        raise translated from exc
    return markers
