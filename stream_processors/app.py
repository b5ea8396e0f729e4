"""The Faust application: one agent per entity, validating and transforming change events.

Delivery, at_least_once (``PACS_PROCESSING_GUARANTEE``, the default; effectively-once at the sink):
each agent takes a batch of raw events, turns every event into a clean record or a dead letter
(:mod:`stream_processors.handling`), produces them with an idempotent confluent-kafka producer and
*flushes it before the batch ends*; Faust acks the batch's offsets only after the body returns, so
nothing is acknowledged before its outputs are in Kafka. After a crash the unacknowledged events are
processed again and their outputs are byte-identical (no wall-clock data in clean records; dead
letters carry ``failed_at``) with the same source position, which the sink's position guard ignores.
A batch whose body fails (an output Kafka refuses, a defect) is never acked: Faust would ack it on
the way out, so the worker exits at once instead (:func:`abandon_batch`) and is restarted.

Isolation: the worker reads read_committed in every mode (:mod:`stream_processors.consumer`; Faust
itself would read read_uncommitted under at_least_once). The CDC producer writes each window of
events in one Kafka transaction with its position, so the processors never see an event of an
aborted transaction (a producer killed mid-window, a failed commit): such an event may never be
re-published (the row changed back meanwhile, the polling fallback re-scans), and would otherwise
reach PostgreSQL. Evolved schemas (the producer's ``_schemas`` topic) are read read_committed too
(:mod:`stream_processors.schema_topic`); the producer writes a schema in the transaction of the
first events that use it.

Offsets: Faust commits the acknowledged input offsets every ``PACS_PROCESSOR_COMMIT_INTERVAL_S``
(0.5 s; Faust's default is 2.8 s) or ``PACS_PROCESSOR_COMMIT_EVERY`` events, past the producer's
transaction markers in one step (:mod:`stream_processors.consumer`: Faust itself got past one
transaction per partition per commit, so the committed offsets trailed processing by minutes), and
never past an event that was not processed (the same module: Faust's seeks, rebalance skips and
commit runs could each pass one). Faust's ``BROKER_*`` environment variables, if set, still
override these settings.

exactly_once (``PACS_PROCESSING_GUARANTEE=exactly_once``): the agents send every output through
Faust's own producer (``app.topic(...).send``) and Faust commits the input offsets inside Kafka
transactions, reading with read_committed. What faust-streaming 0.15.3 actually does (its
``TransactionManager.send``, checked with a probe on a live worker):

* The transactional id of a send is taken from the *output* record (``<app id>-<group of the output
  topic>-<output partition>``), never from the current event, so ``take_events`` batching puts no
  send in a "wrong" transaction; processing event by event would change nothing (and measured
  ~13 % slower), so both modes take batches.
* Our clean and dead-letter topics are not subscribed by the app: the consumer's metadata has no
  partitions for them, the id comes out ``None`` and the records go through Faust's plain
  (idempotent) producer, outside every transaction. Faust also commits offsets without flushing
  that producer, so the agent awaits its batch's deliveries before the batch is acked.
* Records to subscribed topics (the owners' ``group_by`` re-partition topic, the ledger changelog)
  join the transaction of *their* partition, while the input offset commits in the transaction of
  the input partition; a transaction is committed only when its partition has offsets to commit.
  Measured: an owner event whose re-keyed record lands in another partition stays invisible to the
  read_committed worker while its input offset is committed, and is lost when that transaction
  aborts (tests/integration/test_processor.py's ledger test fails under exactly_once).

Choice, by measurement (tests/benchmarks/bench_processor.py, 50,000 PropertyValue events, 3 runs,
uvloop, one worker; bench-results/processor.json and processor-exactly-once.json; medians):

* at_least_once: 4,509 events/s (plain confluent loop 9,805/s: Faust/plain 0.46);
* exactly_once: 2,394 events/s, 0.53 of at_least_once; no duplicates (50,000 outputs, 50,000 keys);
* per worker CPU-second (less sensitive to the load): 5,615 vs 3,230 events (0.58).

The runs shared the 2-core machine with other benchmarks (it was ~2 cores busy throughout), so the
absolute figures are low (the previous run, asyncio loop, gave 5,324/s and 13,547/s); an interleaved
re-run gave 4,062 vs 2,567 events/s (0.63; per CPU-second 5,625 vs 3,431) and 3,802/s for
at_least_once on the asyncio loop (uvloop: +13 % per CPU-second). exactly_once costs 37-47 % of the
throughput and in
this Faust version does not make the outputs atomic with the input offsets (and loses re-keyed owner
events), while at_least_once with byte-identical re-emissions is already effectively-once at the
sink. So: at_least_once; exactly_once stays selectable for measurement only and warns at start-up.

Owner events are re-keyed by PropertyID (Faust ``group_by``) so the owner-share ledger of a property
(Faust table, changelog-backed, restored after a restart) sees every owner of that property.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, NoReturn

import faust
from confluent_kafka import KafkaException, Producer
from prometheus_client import CollectorRegistry

from pacs_sync.errors import ErrorCode, PacsSyncError
from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from pacs_sync.metrics import ProcessorMetrics
from schemas.codec import AvroCodec, SchemaRegistry, UndecodableEventError
from stream_processors.consumer import ProcessorApp
from stream_processors.handling import TABLE_ENTITIES, EventHandler, Outcome, OutRecord
from stream_processors.rules import OwnerShareLedger
from stream_processors.schema_topic import SchemaTopicResolver
from stream_processors.settings import ProcessorSettings

logger = logging.getLogger(__name__)


def input_topic(settings: ProcessorSettings, table: str) -> str:
    """The producer's change topic of a PACS table."""
    return settings.change_topic(table)


def output_topic(settings: ProcessorSettings, entity: str) -> str:
    """The clean, log-compacted topic of an entity."""
    return settings.clean_topic(entity)


def schemas_topic(settings: ProcessorSettings) -> str:
    """The producer's compacted topic of evolved schemas (by fingerprint)."""
    return settings.producer_topic("schemas")


def dead_letter_topic(settings: ProcessorSettings) -> str:
    """Where rejected events go."""
    return settings.dead_letter_topic()


class OutputProducer:
    """Idempotent confluent-kafka producer for clean records and dead letters."""

    def __init__(self, bootstrap: str) -> None:
        """Create the producer."""
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 500000,
                "log_level": 3,
            }
        )
        self._failures: list[str] = []

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._failures.append(str(error))

    def send(self, records: tuple[OutRecord, ...]) -> None:
        """Queue records (waits while the local queue is full)."""
        for record in records:
            while True:
                try:
                    self._producer.produce(
                        record.topic,
                        value=record.value,
                        key=record.key,
                        headers=list(record.headers) or None,
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)

    def flush(self) -> None:
        """Block until every queued record is acknowledged; retry forever on broker trouble.

        Never returning before delivery is what lets Faust ack the inputs afterwards.
        """
        backoff = 0.5
        while True:
            remaining = self._producer.flush(30)
            if remaining == 0 and not self._failures:
                return
            if self._failures:
                # An idempotent producer only reports errors it could not retry itself: nothing can
                # be acknowledged, so stop the worker (its inputs will be processed again).
                raise KafkaException(f"output delivery failed: {self._failures[:3]}")
            logger.warning("%d output records not yet delivered; waiting", remaining)
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


def property_key_of(codec: AvroCodec) -> Callable[[bytes | None], bytes]:
    """The re-keying function for owner events: PropertyID of the after (or before) image."""

    def key(value: bytes | None) -> bytes:
        if value is None:
            return b"?"
        try:
            event = codec.decode(value).value
        except UndecodableEventError:
            return b"?"  # dead-lettered by the agent; any partition will do
        image = event.get("after") or event.get("before") or {}
        return str(image.get("PropertyID", "?")).encode()

    return key


def create_app(
    settings: ProcessorSettings,
    *,
    codec: AvroCodec | None = None,
    metrics: ProcessorMetrics | None = None,
    output: OutputProducer | None = None,
    create_topics: bool = True,
) -> faust.App:
    """Build the Faust app and its four agents (does not start it).

    ``output`` and ``create_topics=False`` let agent tests run without a broker.
    """
    if codec is None:
        # Shipped schemas, and the evolved ones the producer publishes after a capture-instance switch.
        resolver = SchemaTopicResolver(settings.kafka_bootstrap_servers, schemas_topic(settings))
        codec = AvroCodec(SchemaRegistry.from_package(resolver))
    metrics = metrics or ProcessorMetrics.create(CollectorRegistry())
    as_of = date.fromisoformat(settings.validation_as_of) if settings.validation_as_of else None
    # Faust keeps table state under datadir: inside the project's state dir, not the cwd. Faust
    # creates datadir itself but not its parents: a worker started where the state dir does not
    # exist yet (a fresh checkout, a container, the benchmark's scratch directory) would not start.
    datadir = settings.state_dir.resolve() / "faust"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = ProcessorApp(
        settings.processor_app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.output_partitions,
        web_enabled=False,
        producer_linger=0.005,
        processing_guarantee=settings.processing_guarantee,
        datadir=str(datadir),
        broker_commit_interval=settings.processor_commit_interval_s,
        broker_commit_every=settings.processor_commit_every,
        broker_session_timeout=settings.processor_session_timeout_s,
        # Kafka's advice: at most a third of the session timeout (Faust's default, 3 s, otherwise).
        broker_heartbeat_interval=min(3.0, settings.processor_session_timeout_s / 3),
    )
    if create_topics:
        _create_topics(settings)
    exactly_once = settings.processing_guarantee == "exactly_once"
    if exactly_once:
        logger.warning(
            "PACS_PROCESSING_GUARANTEE=exactly_once is for measurement only: with faust-streaming "
            "0.15.3 the outputs are not in the transactions and re-keyed owner events can be lost "
            "(stream_processors/app.py); use at_least_once"
        )
    # exactly_once sends through Faust's transactional producer: no confluent producer is needed.
    transactional_send = _transactional_sender(app) if exactly_once else None
    if output is None and not exactly_once:
        output = OutputProducer(settings.kafka_bootstrap_servers)
    shares = app.Table(
        f"{settings.processor_app_id}-owner-shares",
        default=bytes,
        key_type=bytes,
        value_type=bytes,  # the app's serializers are raw: the ledger state is stored as JSON bytes
        partitions=settings.output_partitions,
        # Changelog partition = the producer's partitioner on the property key, the same as the
        # group_by topic's, so a worker restores exactly the ledgers of the properties it owns.
        use_partitioner=True,
    )

    def record(entity: str, outcome: Outcome) -> None:
        metrics.processed.labels(entity, outcome.outcome).inc()
        for violation in outcome.violations:
            metrics.violations.labels(entity, violation.rule_id).inc()
        if outcome.commit_time is not None:
            lag = (datetime.now(tz=UTC) - outcome.commit_time).total_seconds()
            metrics.latency.labels(entity).observe(max(lag, 0.0))

    for table, entity in TABLE_ENTITIES.items():
        topic = app.topic(input_topic(settings, table), key_type=bytes, value_type=bytes)
        handler = EventHandler(
            codec, entity, output_topic(settings, entity), dead_letter_topic(settings), as_of=as_of
        )
        owners = entity == "owners"
        app.agent(topic, name=f"{settings.processor_app_id}-{entity}", concurrency=1)(
            _agent(
                settings,
                handler,
                output,
                record,
                owner_shares=shares if owners else None,
                regroup=property_key_of(codec) if owners else None,
                transactional_send=transactional_send,
            )
        )
    return app


def _create_topics(settings: ProcessorSettings) -> None:
    specs = [
        TopicSpec(output_topic(settings, e), settings.output_partitions, compacted=True)
        for e in TABLE_ENTITIES.values()
    ]
    specs.append(TopicSpec(dead_letter_topic(settings), 1))
    # The producer creates its change topics; creating them here too lets the worker start first.
    specs += [TopicSpec(input_topic(settings, t), settings.output_partitions) for t in TABLE_ENTITIES]
    specs.append(TopicSpec(schemas_topic(settings), 1, compacted=True))
    ensure_topics(settings.kafka_bootstrap_servers, specs)


def _agent(
    settings: ProcessorSettings,
    handler: EventHandler,
    output: OutputProducer | None,
    record: Callable[[str, Outcome], None],
    *,
    owner_shares: Any = None,
    regroup: Callable[[bytes | None], bytes] | None = None,
    transactional_send: Callable[[OutRecord], Awaitable[Any]] | None = None,
) -> Callable[[Any], Any]:
    """One entity's agent. With ``regroup`` and ``owner_shares`` (owners), events are re-keyed by
    PropertyID and each property's ledger is loaded from, and saved back to, the Faust table.

    Both modes take batches (``take_events``). Without ``transactional_send`` (at_least_once):
    outputs through ``output``, flushed before the batch ends. With it (exactly_once): every output
    through ``transactional_send`` (Faust's producer), the batch's deliveries awaited before it ends;
    ``output`` is not used.
    """

    def handle(event: Any) -> Outcome:
        message = event.message
        property_key: bytes = message.key or b"?"
        ledger = None
        if owner_shares is not None and property_key.isdigit():
            ledger = OwnerShareLedger()
            stored = owner_shares[property_key]
            ledger.load_state(int(property_key), json.loads(stored) if stored else None)
        outcome = handler.handle(
            message.key,
            message.value,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            ledger=ledger,
        )
        if ledger is not None:
            owner_shares[property_key] = json.dumps(ledger.to_state(int(property_key))).encode()
        return outcome

    def batches(stream: Any) -> Any:  # a faust.Stream (its type stubs lack take_events)
        if regroup is not None:
            stream = stream.group_by(
                regroup, name=f"{settings.processor_app_id}-{handler.entity}-by-property"
            )
        return stream.take_events(settings.batch_max_events, within=settings.batch_within_s)

    if transactional_send is not None:
        send = transactional_send

        async def process_exactly_once(stream: Any) -> None:
            async for events in batches(stream):
                # Faust picks the transaction of a send from the *output* record, not from the
                # current event (module docstring), so batching changes nothing about which
                # transaction a record joins. Waiting for the batch's deliveries before it is acked
                # covers what Faust does not: it commits offsets without flushing its producer.
                pending = []
                try:
                    for event in events:
                        outcome = handle(event)
                        for out in outcome.records:
                            pending.append(await send(out))
                        record(handler.entity, outcome)
                    if pending:
                        await asyncio.gather(*pending)
                except Exception as exc:  # noqa: BLE001  (the batch must not be acked)
                    abandon_batch(handler.entity, len(events), exc)

        return process_exactly_once

    if output is None:
        raise ValueError("at_least_once needs an OutputProducer")
    producer = output

    async def process(stream: Any) -> None:
        async for events in batches(stream):
            try:
                for event in events:
                    outcome = handle(event)
                    producer.send(outcome.records)
                    record(handler.entity, outcome)
                producer.flush()  # outputs are in Kafka before Faust acks this batch
            except Exception as exc:  # noqa: BLE001  (whatever failed, the batch must not be acked)
                abandon_batch(handler.entity, len(events), exc)

    return process


BATCH_FAILED_EXIT_CODE = 75
"""The worker's exit status when a batch could not be completed (EX_TEMPFAIL: run it again)."""


def abandon_batch(entity: str, events: int, exc: BaseException) -> NoReturn:
    """Stop the worker at once, leaving the failed batch unacknowledged; never returns.

    Faust acks a ``take_events`` batch when its body is left, by an exception too, and then restarts
    only the agent: the batch's events would be committed without their outputs. Exiting the
    process instead (as a ``kill -9`` would) commits nothing more; the supervisor (or systemd)
    restarts the worker, which processes the batch again from the last committed offsets, and the
    outputs already produced are re-emitted byte-identical (the sink's guard ignores them).
    """
    if isinstance(exc, PacsSyncError):
        code = f"{exc.code.value}: "
    elif isinstance(exc, KafkaException):
        code = f"{ErrorCode.KAFKA_DELIVERY_FAILED.value}: "
    else:
        code = ""  # a defect: the traceback says where
    logger.critical(
        "%s%s batch of %d events failed (%s: %s); stopping the worker without acknowledging it, "
        "it is processed again after the restart",
        code,
        entity,
        events,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    _exit_now(BATCH_FAILED_EXIT_CODE)


def _exit_now(code: int) -> NoReturn:
    """End the process without any cleanup (no Faust shutdown, hence no final commit)."""
    for handler in logging.getLogger().handlers:
        handler.flush()  # os._exit skips the logging module's own flush at exit
    os._exit(code)


def _transactional_sender(app: faust.App) -> Callable[[OutRecord], Awaitable[Any]]:
    """Send an :class:`OutRecord` through Faust's producer (transactional under exactly_once)."""
    topics: dict[str, Any] = {}

    async def send(out: OutRecord) -> Any:
        topic = topics.get(out.topic)
        if topic is None:
            topic = topics[out.topic] = app.topic(
                out.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            )
        return await topic.send(key=out.key, value=out.value, headers=list(out.headers) or None)

    return send
