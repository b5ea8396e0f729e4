"""The Faust application: one agent per entity, validating and transforming change events.

Delivery (at-least-once, effectively-once at the sink): each agent takes a batch of raw events,
turns every event into a clean record or a dead letter (:mod:`stream_processors.handling`), produces
them with an idempotent confluent-kafka producer and *flushes it before the batch ends*; Faust acks
the batch's offsets only after the body returns, so nothing is acknowledged before its outputs are
in Kafka. After a crash the unacknowledged events are processed again and their outputs are
byte-identical (no wall-clock data in clean records) with the same source position, which the sink's
position guard ignores.

Owner events are re-keyed by PropertyID (Faust ``group_by``) so the owner-share ledger of a property
(Faust table, changelog-backed, restored after a restart) sees every owner of that property.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import faust
from confluent_kafka import KafkaException, Producer
from prometheus_client import CollectorRegistry

from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from pacs_sync.metrics import ProcessorMetrics
from schemas.codec import AvroCodec, SchemaRegistry, UndecodableEventError
from stream_processors.handling import TABLE_ENTITIES, EventHandler, Outcome, OutRecord
from stream_processors.rules import OwnerShareLedger
from stream_processors.settings import ProcessorSettings

logger = logging.getLogger(__name__)


def input_topic(settings: ProcessorSettings, table: str) -> str:
    """The producer's change topic of a PACS table."""
    return f"{settings.topic_prefix}.{settings.db_name}.{settings.db_schema}.{table}"


def output_topic(settings: ProcessorSettings, entity: str) -> str:
    """The clean, log-compacted topic of an entity."""
    return f"{settings.output_prefix}.{entity}"


def dead_letter_topic(settings: ProcessorSettings) -> str:
    """Where rejected events go."""
    return f"{settings.output_prefix}.dlq"


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
    codec = codec or AvroCodec(SchemaRegistry.from_package())
    metrics = metrics or ProcessorMetrics.create(CollectorRegistry())
    as_of = date.fromisoformat(settings.validation_as_of) if settings.validation_as_of else None
    app = faust.App(
        settings.processor_app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.output_partitions,
        web_enabled=False,
        producer_linger=0.005,
        processing_guarantee="at_least_once",
        # Faust keeps table state under datadir: inside the project's state dir, not the cwd.
        datadir=str(settings.state_dir.resolve() / "faust"),
    )
    if create_topics:
        _create_topics(settings)
    output = output or OutputProducer(settings.kafka_bootstrap_servers)
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
    ensure_topics(settings.kafka_bootstrap_servers, specs)


def _agent(
    settings: ProcessorSettings,
    handler: EventHandler,
    output: OutputProducer,
    record: Callable[[str, Outcome], None],
    *,
    owner_shares: Any = None,
    regroup: Callable[[bytes | None], bytes] | None = None,
) -> Callable[[Any], Any]:
    """One entity's agent. With ``regroup`` and ``owner_shares`` (owners), events are re-keyed by
    PropertyID and each property's ledger is loaded from, and saved back to, the Faust table."""

    async def process(stream: Any) -> None:  # a faust.Stream (its type stubs lack take_events)
        if regroup is not None:
            stream = stream.group_by(
                regroup, name=f"{settings.processor_app_id}-{handler.entity}-by-property"
            )
        async for events in stream.take_events(settings.batch_max_events, within=settings.batch_within_s):
            for event in events:
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
                output.send(outcome.records)
                record(handler.entity, outcome)
            output.flush()  # outputs are in Kafka before Faust acks this batch

    return process
