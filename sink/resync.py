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

Re-snapshot sweeps (:mod:`pacs_sync.sweeps`): a row the source deleted during a lost CDC window
has no delete record on its compacted clean topic, only its last live one, so replaying the clean
topic alone would bring it back. After each replay of the clean topic, the entity's sweeps are
replayed from the sweep topic (kept for good, like the clean topics' rows) into the shadow through
the sink's own sweep statement. Applying every sweep after the rows is right in any order: a sweep
only marks rows older than its snapshot position that it does not list, so a row written after
the snapshot survives, and applying a sweep twice changes nothing. The hand-over checks the live
sink's sweep offset like its clean offsets: the shadow has every sweep the live sink will not read
again, and the ones it reads again are no-ops. The resync never moves the live sink's offsets (the
sweep topic carries every entity's sweeps; entities not resynced still need theirs).

Delete markers purged by ``marker_retention_days`` do not matter here: the rebuild re-creates the
markers of CDC deletes from the clean topics and of swept rows from the sweeps (stamped with the
rebuild's time, so the purge removes them again later).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Message

from pacs_sync.errors import ErrorCode, FatalError
from pacs_sync.sweeps import sweeps_topic
from schemas.codec import AvroCodec, SchemaRegistry
from sink import statements
from sink.changes import DeadLetter
from sink.kafka_io import DeadLetterProducer, ReplayReader
from sink.runner import clean_topic, dead_letter_topic, decode_batch
from sink.settings import SinkSettings
from sink.sweeps import apply_sweeps, split_sweeps
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
    swept: dict[str, int] = field(default_factory=dict)
    """Delete markers the replayed re-snapshot sweeps wrote into each rebuilt table."""
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
        self.sweep_topic = sweeps_topic(settings.topic_prefix, settings.db_name)

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
                report.replayed[entity], report.swept[entity] = await self._rebuild(entity, consumer_key)
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

    async def _rebuild(self, entity: str, consumer_key: str) -> tuple[int, int]:
        """Replay ``entity``'s clean topic, then its sweeps, into the shadow; swap it in.

        Returns the clean records read and the delete markers the sweeps wrote.
        """
        spec = ENTITIES[entity]
        topic = clean_topic(self.settings, entity)
        shadow = spec.table + statements.SHADOW_SUFFIX
        topics = (topic, self.sweep_topic)
        reader = await asyncio.to_thread(ReplayReader, self.settings.kafka_bootstrap_servers, consumer_key)
        replayed = swept = 0
        try:
            replay_offsets: dict[tuple[str, int], int] = {}
            ends = await asyncio.to_thread(reader.end_offsets, topics)
            logger.info("resync %s: replaying %s and %s up to %s", entity, topic, self.sweep_topic, ends)
            for _ in range(_MAX_HANDOVER_ROUNDS):
                clean_ends = {tp: o for tp, o in ends.items() if tp[0] == topic}
                sweep_ends = {tp: o for tp, o in ends.items() if tp[0] == self.sweep_topic}
                replayed += await self._replay(
                    reader, entity, shadow, consumer_key, replay_offsets, clean_ends
                )
                # After the rows: a sweep can only mark a row the shadow already holds.
                swept += await self._replay_sweeps(
                    reader, entity, shadow, consumer_key, replay_offsets, sweep_ends
                )
                live = {
                    tp: o
                    for tp, o in (await self.target.load_offsets(self.settings.sink_group_id)).items()
                    if tp[0] in topics
                }
                behind = {tp: o for tp, o in live.items() if replay_offsets.get(tp, 0) < o}
                if behind:
                    # The live sink moved on while we replayed: catch up to its offsets, then try again.
                    ends = behind
                    continue
                if await self._swap(entity, topics, replay_offsets):
                    logger.info(
                        "resync %s: swapped in after %d records and %d swept rows", entity, replayed, swept
                    )
                    return replayed, swept
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
        entity_of = {clean_topic(self.settings, entity): entity}

        async def dead_letter(letters: list[DeadLetter]) -> None:
            await asyncio.to_thread(self.dead_letters.send, letters)

        async def write(messages: list[Message]) -> int:
            records, undecodable, next_offsets = decode_batch(self.codec, messages, entity_of)
            if undecodable:
                await dead_letter(undecodable)
            await self.target.write_batch(
                consumer_key, records, next_offsets, before_commit=dead_letter, tables={entity: shadow}
            )
            replay_offsets.update(next_offsets)
            return len(messages)

        return await self._read_through(reader, replay_offsets, ends, write)

    async def _replay_sweeps(
        self,
        reader: ReplayReader,
        entity: str,
        shadow: str,
        consumer_key: str,
        replay_offsets: dict[tuple[str, int], int],
        ends: dict[tuple[str, int], int],
    ) -> int:
        """Apply ``entity``'s sweeps before ``ends`` to the shadow; returns the markers written.

        Each batch's sweeps and offsets commit together (under the run's own consumer key), like
        the live sink's; re-applying one after a failure is a no-op.
        """
        if not ends:
            return 0

        async def sweep(messages: list[Message]) -> int:
            _, batch = split_sweeps(messages, self.sweep_topic)
            written = await apply_sweeps(self.target, consumer_key, batch, [entity], tables={entity: shadow})
            replay_offsets.update(batch.next_offsets)
            return written.get(entity, 0)

        return await self._read_through(reader, replay_offsets, ends, sweep)

    async def _read_through(
        self,
        reader: ReplayReader,
        replay_offsets: dict[tuple[str, int], int],
        ends: dict[tuple[str, int], int],
        apply: Callable[[list[Message]], Awaitable[int]],
    ) -> int:
        """Feed every batch from ``replay_offsets`` up to ``ends`` to ``apply`` (which saves its
        offsets); returns the sum of what ``apply`` counted. Afterwards the replay holds everything
        before ``ends``."""
        reader.assign(replay_offsets, ends)
        total = 0
        while not reader.done:
            messages = await asyncio.to_thread(
                reader.poll_batch, max(self.settings.batch_size, 5000), self.settings.sink_batch_max_wait_s
            )
            if messages:
                total += await apply(messages)
        for tp, end in ends.items():
            replay_offsets[tp] = max(replay_offsets.get(tp, 0), end)
        return total

    async def _swap(
        self, entity: str, topics: Sequence[str], replay_offsets: dict[tuple[str, int], int]
    ) -> bool:
        """Swap under the exclusive entity lock if the live sink is not ahead of the replay.

        Ahead on the clean topic or on the sweep topic: the shadow must hold every record and
        sweep the live sink will not read again. A sweep batch of the live sink that touches this
        entity takes the lock shared, so it commits before this check or applies to the new table.
        """
        spec = ENTITIES[entity]
        async with self.target.acquire() as conn, conn.transaction():
            await conn.execute(statements.entity_lock_exclusive(spec))
            rows = await conn.fetch(statements.load_offsets(), self.settings.sink_group_id)
            if any(
                r["topic"] in topics
                and replay_offsets.get((r["topic"], r["partition"]), 0) < r["next_offset"]
                for r in rows
            ):
                return False  # a batch committed between our check and the lock: roll back, catch up
            for sql in statements.swap_shadow(spec):
                await conn.execute(sql)
        return True

    async def _finish(self, report: ResyncReport, state: str, *, error: str | None = None) -> None:
        detail = {
            "replayed": report.replayed,
            "swept": report.swept,
            "rows": report.rows,
            "seconds": round(report.seconds, 3),
        }
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
