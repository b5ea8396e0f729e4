"""``pacs-sync resync``: rebuild target tables from the compacted clean topics, then swap them in.

1. Each entity's base table gets an empty shadow (same columns, keys, checks, indexes).
2. The clean topics are replayed from offset 0 up to their end offsets at the start into the
   shadows, through the sink's own guarded write path (offsets under the run's own consumer key).
   The live tables keep serving, and a running ``pacs-sync sink`` keeps writing them meanwhile.
3. Hand-over, per entity: the replay catches up until its offsets are at or past the live sink's
   committed offsets L; then, holding the entity's advisory lock exclusively (the live sink's
   batches hold it shared, so the swap falls between two of them) it checks that again and swaps
   the shadow in and re-points the view in one transaction. The live sink goes on from L: the
   records between L and the replay's offsets are already in the new table and the position guard
   makes their re-application a no-op, and nothing after them was skipped. No gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pacs_sync.errors import ErrorCode, FatalError
from schemas.codec import AvroCodec, SchemaRegistry
from sink import statements
from sink.changes import DeadLetter
from sink.kafka_io import DeadLetterProducer, ReplayReader
from sink.runner import clean_topic, dead_letter_topic, decode_batch
from sink.settings import SinkSettings
from sink.tables import ENTITIES
from sink.target import TargetDatabase

logger = logging.getLogger(__name__)

_MAX_HANDOVER_ROUNDS = 50


@dataclass
class ResyncReport:
    """What a resync did."""

    run_id: int
    entities: list[str]
    replayed: dict[str, int] = field(default_factory=dict)
    """Records read from each entity's topic."""
    rows: dict[str, int] = field(default_factory=dict)
    """Rows in each rebuilt table (live and delete markers)."""
    seconds: float = 0.0


class Resync:
    """One resync run over some entities."""

    def __init__(
        self, settings: SinkSettings, target: TargetDatabase, *, codec: AvroCodec | None = None
    ) -> None:
        """Bind settings and an open, migrated target."""
        self.settings = settings
        self.target = target
        self.codec = codec or AvroCodec(SchemaRegistry.from_package())
        self.dead_letters = DeadLetterProducer(
            settings.kafka_bootstrap_servers, dead_letter_topic(settings), self.codec
        )

    async def run(self, entities: Sequence[str]) -> ResyncReport:
        """Rebuild ``entities`` and swap them in; the sync_runs row records the outcome."""
        unknown = [e for e in entities if e not in ENTITIES]
        if unknown:
            raise FatalError(f"unknown entities {unknown}; expected some of {list(ENTITIES)}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        rows = await self.target.fetch(statements.start_run(), "resync", list(entities))
        report = ResyncReport(int(rows[0][0]), list(entities))
        consumer_key = f"resync-{report.run_id}"
        try:
            for entity in entities:
                await self.target.execute(statements.create_shadow(ENTITIES[entity]))
            for entity in entities:
                report.replayed[entity] = await self._rebuild(entity, consumer_key)
                count = await self.target.fetch(statements.count_rows(ENTITIES[entity]))
                report.rows[entity] = int(count[0][0])
            report.seconds = loop.time() - started
            await self._finish(report, "succeeded")
        except BaseException as exc:
            await self._finish(report, "failed", error=str(exc))
            raise
        finally:
            await self.target.execute(statements.delete_offsets(), consumer_key)
        return report

    async def _rebuild(self, entity: str, consumer_key: str) -> int:
        spec = ENTITIES[entity]
        topic = clean_topic(self.settings, entity)
        shadow = spec.table + statements.SHADOW_SUFFIX
        reader = await asyncio.to_thread(ReplayReader, self.settings.kafka_bootstrap_servers, consumer_key)
        replayed = 0
        try:
            replay_offsets: dict[tuple[str, int], int] = {}
            ends = await asyncio.to_thread(reader.end_offsets, [topic])
            logger.info("resync %s: replaying %s up to %s", entity, topic, ends)
            for _ in range(_MAX_HANDOVER_ROUNDS):
                replayed += await self._replay(reader, entity, shadow, consumer_key, replay_offsets, ends)
                live = {
                    tp: o
                    for tp, o in (await self.target.load_offsets(self.settings.sink_group_id)).items()
                    if tp[0] == topic
                }
                behind = {tp: o for tp, o in live.items() if replay_offsets.get(tp, 0) < o}
                if behind:
                    # The live sink moved on while we replayed: catch up to its offsets, then try again.
                    ends = behind
                    continue
                if await self._swap(entity, topic, replay_offsets):
                    logger.info("resync %s: swapped in after %d records", entity, replayed)
                    return replayed
            raise FatalError(
                f"resync of {entity}: the live sink kept moving ahead of the replay for "
                f"{_MAX_HANDOVER_ROUNDS} rounds; retry when the load is lower",
                code=ErrorCode.SYNC_TIMEOUT,
            )
        finally:
            await asyncio.to_thread(reader.close)

    async def _replay(
        self,
        reader: ReplayReader,
        entity: str,
        shadow: str,
        consumer_key: str,
        replay_offsets: dict[tuple[str, int], int],
        ends: dict[tuple[str, int], int],
    ) -> int:
        reader.assign(replay_offsets, ends)
        count = 0
        entity_of = {clean_topic(self.settings, entity): entity}

        async def dead_letter(letters: list[DeadLetter]) -> None:
            await asyncio.to_thread(self.dead_letters.send, letters)

        while not reader.done:
            messages = await asyncio.to_thread(
                reader.poll_batch, max(self.settings.batch_size, 5000), self.settings.sink_batch_max_wait_s
            )
            if not messages:
                continue
            records, undecodable, next_offsets = decode_batch(self.codec, messages, entity_of)
            if undecodable:
                await dead_letter(undecodable)
            await self.target.write_batch(
                consumer_key, records, next_offsets, before_commit=dead_letter, tables={entity: shadow}
            )
            replay_offsets.update(next_offsets)
            count += len(messages)
        for tp, end in ends.items():  # reached: the replay has everything before ``end``
            replay_offsets[tp] = max(replay_offsets.get(tp, 0), end)
        return count

    async def _swap(self, entity: str, topic: str, replay_offsets: dict[tuple[str, int], int]) -> bool:
        """Swap under the exclusive entity lock if the live sink is not ahead of the replay."""
        spec = ENTITIES[entity]
        async with self.target.acquire() as conn, conn.transaction():
            await conn.execute(statements.entity_lock_exclusive(spec))
            rows = await conn.fetch(statements.load_offsets(), self.settings.sink_group_id)
            if any(
                r["topic"] == topic and replay_offsets.get((topic, r["partition"]), 0) < r["next_offset"]
                for r in rows
            ):
                return False  # a batch committed between our check and the lock: roll back, catch up
            for sql in statements.swap_shadow(spec):
                await conn.execute(sql)
        return True

    async def _finish(self, report: ResyncReport, state: str, *, error: str | None = None) -> None:
        detail = {"replayed": report.replayed, "rows": report.rows, "seconds": round(report.seconds, 3)}
        if error:
            detail["error"] = error
        try:
            await self.target.execute(
                statements.finish_run(),
                state,
                json.dumps(detail),
                report.run_id,
            )
        except Exception:  # the run's own outcome matters more than its bookkeeping
            logger.exception("could not record the outcome of resync run %d", report.run_id)


async def run_resync(settings: SinkSettings, entities: Sequence[str]) -> ResyncReport:
    """Connect, migrate, resync ``entities``."""
    target = await TargetDatabase.connect(settings.target_parts, pool_size=max(settings.sink_pool_size, 2))
    try:
        await target.migrate()
        return await Resync(settings, target).run(entities)
    finally:
        await target.close()
