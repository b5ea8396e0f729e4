"""The ``pacs-sync sink`` process: clean topics → batches → PostgreSQL, exactly once.

One loop: consume up to a batch (or what arrived within the max wait), decode, reduce by key,
write rows and offsets in one transaction (:meth:`sink.target.TargetDatabase.write_batch`), then
update metrics. A lost connection to PostgreSQL or Kafka is retried with backoff; the consumer is
then rebuilt so that it seeks again to the offsets PostgreSQL committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from confluent_kafka import KafkaException, Message
from prometheus_client import CollectorRegistry

from pacs_sync.errors import ErrorCode, PacsSyncError
from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from pacs_sync.metrics import SinkMetrics, serve
from pacs_sync.sweeps import sweeps_topic
from schemas.codec import AvroCodec, SchemaRegistry, UndecodableEventError
from sink import statements
from sink.changes import ConsumedRecord, DeadLetter, reduce_by_key, to_row
from sink.errors import ConsumerStalledError
from sink.kafka_io import CleanTopicConsumer, DeadLetterProducer
from sink.settings import SinkSettings
from sink.sweeps import SweepBatch, apply_sweeps, split_sweeps
from sink.tables import ENTITIES
from sink.target import BatchResult, TargetDatabase

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0
_PURGE_EVERY_S = 600.0


def clean_topic(settings: SinkSettings, entity: str) -> str:
    """The processors' clean, compacted topic of an entity."""
    return settings.clean_topic(entity)


def dead_letter_topic(settings: SinkSettings) -> str:
    """Where rejected rows go (shared with the processors' rejects)."""
    return settings.dead_letter_topic()


DecodedBatch = tuple[dict[str, list[ConsumedRecord]], list[DeadLetter], dict[tuple[str, int], int]]
"""Records per entity (reduced by key), undecodable ones, next offset per partition."""


def decode_batch(codec: AvroCodec, messages: list[Message], entity_of: Mapping[str, str]) -> DecodedBatch:
    """Messages → records per entity (reduced by key), undecodable ones, and the next offset per partition.

    Tombstones (value None) only advance the offset: deletes arrive as position-stamped markers.
    """
    by_entity: dict[str, list[ConsumedRecord]] = defaultdict(list)
    undecodable: list[DeadLetter] = []
    next_offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        topic, partition, offset = message.topic() or "", message.partition() or 0, message.offset() or 0
        next_offsets[(topic, partition)] = offset + 1
        value = message.value()
        if value is None:
            continue
        entity = entity_of[topic]
        spec = ENTITIES[entity]
        try:
            decoded = codec.decode(value)
            if decoded.schema_name != spec.schema_name:
                raise UndecodableEventError(
                    f"expected {spec.schema_name} on {topic}, found {decoded.schema_name}",
                    reason="wrong_schema",
                )
            row = to_row(spec, decoded.value)
        except (UndecodableEventError, KeyError, ValueError) as exc:
            undecodable.append(
                DeadLetter(
                    ErrorCode.UNDECODABLE_EVENT,
                    "AVRO-DECODE",
                    str(exc),
                    topic,
                    partition,
                    offset,
                    message.key(),
                    value,
                )
            )
            continue
        by_entity[entity].append(ConsumedRecord(row, topic, partition, offset, message.key(), value))
    return {e: reduce_by_key(r) for e, r in by_entity.items()}, undecodable, next_offsets


class SinkRunner:
    """Consumes the clean topics and writes them to PostgreSQL until stopped."""

    def __init__(
        self,
        settings: SinkSettings,
        target: TargetDatabase,
        *,
        codec: AvroCodec | None = None,
        metrics: SinkMetrics | None = None,
    ) -> None:
        """Bind the settings, an open target and the codec."""
        self.settings = settings
        self.target = target
        self.codec = codec or AvroCodec(SchemaRegistry.from_package())
        self.metrics = metrics or SinkMetrics.create(CollectorRegistry())
        self.entity_of = {clean_topic(settings, e): e for e in settings.entities}
        self.sweep_topic = sweeps_topic(settings.topic_prefix, settings.db_name)
        """The producer's re-snapshot sweeps (:mod:`sink.sweeps`), read along with the clean topics."""
        self.dead_letters = DeadLetterProducer(
            settings.kafka_bootstrap_servers, dead_letter_topic(settings), self.codec
        )
        self.records_written = 0
        self._last_offsets: dict[tuple[str, int], int] = {}
        self._last_purge = float("-inf")
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to finish its batch and return."""
        self._stop.set()

    def _new_consumer(self, loop: asyncio.AbstractEventLoop) -> CleanTopicConsumer:
        def offsets_for(partitions: list[tuple[str, int]]) -> Mapping[tuple[str, int], int]:
            # Called by librdkafka inside consume(), on the worker thread: ask the event loop.
            future = asyncio.run_coroutine_threadsafe(
                self.target.load_offsets(self.settings.sink_group_id), loop
            )
            stored = future.result(timeout=60)
            return {p: stored[p] for p in partitions if p in stored}

        return CleanTopicConsumer(
            self.settings.kafka_bootstrap_servers,
            self.settings.sink_group_id,
            self.settings.sink_instance_id,
            [*self.entity_of, self.sweep_topic],
            offsets_for,
        )

    async def run(self, *, until_idle_s: float | None = None) -> None:
        """Consume and write until :meth:`stop` (``until_idle_s``: or until idle that long)."""
        ensure_topics(
            self.settings.kafka_bootstrap_servers,
            [TopicSpec(topic, 3, compacted=True) for topic in self.entity_of]
            + [
                TopicSpec(dead_letter_topic(self.settings), 1),
                # Kept as long as the compacted clean topics keep rows: a resync replays both.
                TopicSpec(self.sweep_topic, 1, retain_forever=True),
            ],
        )
        loop = asyncio.get_running_loop()
        backoff = 0.5
        idle_since = stall_checked = loop.time()
        consumer: CleanTopicConsumer | None = None
        pending: asyncio.Task[BatchResult] | None = None
        try:
            # Two batches in flight at most: while PostgreSQL writes batch N (a task on this loop), a
            # worker thread fetches and decodes batch N+1. Writes stay strictly in order: N+1 is
            # written only after N committed, so offsets in PostgreSQL only move forward.
            while not self._stop.is_set():
                try:
                    if consumer is None:
                        consumer = await asyncio.to_thread(self._new_consumer, loop)
                    messages = await asyncio.to_thread(
                        consumer.poll_batch, self.settings.batch_size, self.settings.sink_batch_max_wait_s
                    )
                    clean, sweeps = split_sweeps(messages, self.sweep_topic)
                    decoded = (
                        await asyncio.to_thread(decode_batch, self.codec, clean, self.entity_of)
                        if messages
                        else None
                    )
                    if pending is not None:
                        task, pending = pending, None
                        await task
                        consumer.mark_committed(self._last_offsets)
                        self._observe_lag(consumer)
                        backoff = 0.5
                    if decoded is None:
                        now = loop.time()
                        if until_idle_s is not None and now - idle_since >= until_idle_s:
                            return
                        self._observe_lag(consumer)
                        stall_s = self.settings.sink_stall_s
                        if now - idle_since >= stall_s and now - stall_checked >= stall_s:
                            stall_checked = now
                            await self._check_not_stalled(consumer, now - idle_since)
                        continue
                    idle_since = loop.time()
                    await self._purge_markers_when_due(loop.time())
                    pending = asyncio.create_task(self._write_with_sweeps(decoded, len(messages), sweeps))
                except (PacsSyncError, KafkaException) as exc:
                    code = exc.code if isinstance(exc, PacsSyncError) else ErrorCode.KAFKA_DELIVERY_FAILED
                    self.metrics.errors.labels(code.value).inc()
                    if isinstance(exc, PacsSyncError) and not exc.retriable:
                        raise
                    logger.warning(
                        "%s; retrying in %.1f s from the offsets PostgreSQL committed", exc, backoff
                    )
                    if pending is not None:  # let the batch in flight commit or fail; PostgreSQL decides
                        with contextlib.suppress(PacsSyncError, KafkaException):
                            await pending
                        pending = None
                    if consumer is not None:
                        await asyncio.to_thread(consumer.close)
                        consumer = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
        finally:
            if pending is not None:  # stopping: finish the batch in flight
                await pending
            if consumer is not None:
                await asyncio.to_thread(consumer.close)

    async def _check_not_stalled(self, consumer: CleanTopicConsumer, idle_s: float) -> None:
        """Raise :class:`ConsumerStalledError` (the loop then rebuilds the consumer) when nothing has
        arrived for ``idle_s`` although the broker holds clean records past the consumer's position.

        The sweep topic is left out: it is written in the producer's transactions, whose markers are
        offsets no consumer receives.
        """
        pending = await asyncio.to_thread(consumer.pending, self.entity_of, cached=False)
        behind = {f"{topic}[{partition}]": n for (topic, partition), n in pending.items() if n}
        if behind:
            raise ConsumerStalledError(
                f"no clean record received for {idle_s:.0f} s although the broker holds "
                f"{sum(behind.values())} past the consumer's position ({behind}); rebuilding the consumer"
            )

    async def _write_with_sweeps(
        self, decoded: DecodedBatch, consumed: int, sweeps: SweepBatch
    ) -> BatchResult:
        """:meth:`_write`, then the batch's re-snapshot sweeps and their offsets in one transaction.

        After the batch's rows, so the sweep offsets never commit before the rows consumed with
        them; a crash in between re-applies the sweeps, which is a no-op.
        """
        result = await self._write(decoded, consumed)
        if sweeps.next_offsets:
            swept = await apply_sweeps(
                self.target, self.settings.sink_group_id, sweeps, self.settings.entities
            )
            self._last_offsets = {**self._last_offsets, **sweeps.next_offsets}
            for entity, count in swept.items():
                self.metrics.rows.labels(entity, "delete").inc(count)
            if sweeps.invalid:
                self.metrics.errors.labels(ErrorCode.UNDECODABLE_EVENT.value).inc(sweeps.invalid)
        return result

    async def _write(self, decoded: DecodedBatch, consumed: int) -> BatchResult:
        started = asyncio.get_running_loop().time()
        records, undecodable, next_offsets = decoded

        async def dead_letter(letters: list[DeadLetter]) -> None:
            await asyncio.to_thread(self.dead_letters.send, letters)

        if undecodable:
            # Undecodable records are dead-lettered before the batch's offsets can commit past them.
            await dead_letter(undecodable)
        result = await self.target.write_batch(
            self.settings.sink_group_id, records, next_offsets, before_commit=dead_letter
        )
        committed_at = datetime.now(tz=UTC)
        self._last_offsets = next_offsets
        self.records_written += consumed
        m = self.metrics
        m.batch_rows.observe(consumed)
        m.batch_duration.observe(asyncio.get_running_loop().time() - started)
        for entity, count in result.upserted.items():
            m.rows.labels(entity, "upsert").inc(count)
        for entity, count in result.deleted.items():
            m.rows.labels(entity, "delete").inc(count)
        for entity, count in result.stale.items():
            m.rows.labels(entity, "stale").inc(count)
        for entity, count in result.rejected.items():
            if count:
                m.rejected.labels(entity).inc(count)
                m.errors.labels(ErrorCode.TARGET_WRITE_REJECTED.value).inc(count)
        if undecodable:
            m.errors.labels(ErrorCode.UNDECODABLE_EVENT.value).inc(len(undecodable))
        for entity, batch in records.items():
            latency = m.end_to_end_latency.labels(entity)
            for record in batch:
                ts = record.source_ts
                if ts is not None:
                    latency.observe(max((committed_at - ts).total_seconds(), 0.0))
        return result

    async def _purge_markers_when_due(self, now: float) -> None:
        """Drop delete markers older than the configured retention, at most every 10 minutes.

        A marker only has to outlive the clean topics' retention: past it, no replay can carry an
        older version of the row.
        """
        days = self.settings.marker_retention_days
        if not days or now - self._last_purge < _PURGE_EVERY_S:
            return
        self._last_purge = now
        for entity in self.settings.entities:
            status = await self.target.execute(
                statements.purge_markers(ENTITIES[entity]), timedelta(days=days)
            )
            logger.info("purged delete markers older than %d days from %s: %s", days, entity, status)

    def _observe_lag(self, consumer: CleanTopicConsumer) -> None:
        lag = consumer.lag()
        for topic, entity in self.entity_of.items():
            self.metrics.consumer_lag.labels(entity).set(lag.get(topic, 0))


async def _serve(settings: SinkSettings, registry: CollectorRegistry) -> None:
    target = await TargetDatabase.connect(settings.target_parts, pool_size=settings.sink_pool_size)
    try:
        await target.migrate()
        runner = SinkRunner(settings, target, metrics=SinkMetrics.create(registry))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.stop)
        logger.info(
            "sink: %s → %s (batches of up to %d, group %s)",
            ", ".join(runner.entity_of),
            target.server,
            settings.batch_size,
            settings.sink_group_id,
        )
        await runner.run()
    finally:
        await target.close()


def serve_sink(settings: SinkSettings) -> None:
    """Run the sink until SIGTERM/Ctrl-C (the batch in flight is finished or rolled back)."""
    registry = CollectorRegistry()
    serve(registry, settings.metrics_port)
    asyncio.run(_serve(settings, registry))
