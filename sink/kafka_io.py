"""The sink's adapter to Kafka: the clean-topic consumer and the dead-letter producer (confluent-kafka)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from pacs_sync.errors import ErrorCode
from schemas.codec import AvroCodec
from sink.changes import DeadLetter
from sink.errors import DeadLetterDeliveryError

logger = logging.getLogger(__name__)

DEAD_LETTER_SCHEMA = "io.terrafusion.pacs.DeadLetter"

OffsetLookup = Callable[[list[tuple[str, int]]], Mapping[tuple[str, int], int]]
"""Given assigned (topic, partition)s, the next offset stored in PostgreSQL for each (absent: none)."""


class CleanTopicConsumer:
    """Reads the clean topics with ``read_committed``, positioned from PostgreSQL, never from Kafka.

    Kafka's committed group offsets are written too (after PostgreSQL commits, asynchronously) only
    so that standard lag tooling sees the group; the sink never reads them.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        instance_id: str,
        topics: Iterable[str],
        offsets_for: OffsetLookup,
    ) -> None:
        """Subscribe; on each assignment the partitions are sought to ``offsets_for``'s offsets."""
        self._offsets_for = offsets_for
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "group.instance.id": instance_id,
                "session.timeout.ms": 15000,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
                "log_level": 3,
            }
        )
        self.assigned: set[tuple[str, int]] = set()
        self._assigned_at: dict[tuple[str, int], int] = {}
        self._consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self._offsets_for([(p.topic, p.partition) for p in partitions])
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), OFFSET_BEGINNING)
            self.assigned.add((p.topic, p.partition))
            self._assigned_at[(p.topic, p.partition)] = p.offset
        logger.info(
            "assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions) or "nothing"
        )
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.assigned.discard((p.topic, p.partition))
            self._assigned_at.pop((p.topic, p.partition), None)
        consumer.incremental_unassign(partitions)

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``max_wait_s`` (errors other than EOF raise)."""
        messages = self._consumer.consume(num_messages=max_records, timeout=max_wait_s)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                if error.fatal():
                    raise KafkaException(error)
                logger.warning("%s: consumer: %s", ErrorCode.KAFKA_DELIVERY_FAILED, error)
        return good

    def mark_committed(self, next_offsets: Mapping[tuple[str, int], int]) -> None:
        """Mirror offsets PostgreSQL committed into Kafka's group offsets (for lag tools only)."""
        if not next_offsets:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()], asynchronous=True
            )
        except KafkaException as exc:  # informational only: PostgreSQL holds the real offsets
            logger.debug("group offset mirror failed: %s", exc)

    def pending(
        self, topics: Iterable[str] | None = None, *, cached: bool = True, timeout_s: float = 5.0
    ) -> dict[tuple[str, int], int]:
        """Records past this consumer's position, per assigned partition (of ``topics``, default
        all), from the client's cached watermarks or, ``cached=False``, from the broker (partitions
        it cannot answer for are left out).

        Exact for topics without transactions: there the end offset is the next record's offset,
        while a transaction marker at a topic's end is an offset no consumer receives.
        """
        wanted = set(topics) if topics is not None else None
        found: dict[tuple[str, int], int] = {}
        for topic, partition in sorted(self.assigned):
            if wanted is not None and topic not in wanted:
                continue
            tp = TopicPartition(topic, partition)
            try:
                if cached:
                    low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                else:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                position = self._consumer.position([tp])[0].offset
            except KafkaException:
                continue
            assigned_at = self._assigned_at.get((topic, partition), -1)
            found[(topic, partition)] = records_pending(low, high, position, assigned_at)
        return found

    def lag(self) -> dict[str, int]:
        """Messages not yet consumed, per topic, from the client's cached high watermarks."""
        lag: dict[str, int] = {}
        for (topic, _partition), records in self.pending().items():
            lag[topic] = lag.get(topic, 0) + records
        return lag

    def close(self) -> None:
        """Leave the group."""
        self._consumer.close()


def records_pending(low: int, high: int, position: int, assigned_at: int) -> int:
    """Records from a consumer's position to a partition's end.

    ``position`` is negative until the consumer has received a record of the partition since its
    assignment; it then reads from ``assigned_at`` (the offset PostgreSQL gave it), or from the
    partition's start when that is negative too (none stored).
    """
    start = position if position >= 0 else assigned_at if assigned_at >= 0 else low
    return max(high - max(start, low), 0)


class DeadLetterProducer:
    """Sends rows PostgreSQL rejected to the dead-letter topic and waits for acknowledgement."""

    def __init__(self, bootstrap: str, topic: str, codec: AvroCodec) -> None:
        """Create an idempotent producer for ``topic``."""
        self.topic = topic
        self._codec = codec
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "log_level": 3}
        )

    def send(self, letters: list[DeadLetter], timeout_s: float = 30.0) -> None:
        """Produce the dead letters (their code in headers and value) and wait for every acknowledgement.

        Raises :class:`DeadLetterDeliveryError` when Kafka did not acknowledge every one, so the
        caller's transaction rolls back and the batch is retried: a reject is never dropped.
        """
        failures: list[str] = []

        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        for letter in letters:
            record = {
                "error_code": letter.code.value,
                "topic": letter.topic,
                "partition": letter.partition,
                "offset": letter.offset,
                "key": letter.key,
                "value": letter.value,
                "violations": [
                    {
                        "rule_id": letter.rule_id,
                        "severity": "error",
                        "field": "",
                        "message": letter.message,
                        "value": None,
                    }
                ],
                "source_commit_lsn": letter.commit_lsn,
                "source_change_lsn": letter.change_lsn,
                "failed_at": datetime.now(tz=UTC),
            }
            headers: list[tuple[str, str | bytes | None]] = [
                ("error_code", letter.code.value.encode()),
                ("rule_ids", letter.rule_id.encode()),
                ("source_topic", letter.topic.encode()),
                ("source_partition", str(letter.partition).encode()),
                ("source_offset", str(letter.offset).encode()),
            ]
            self._producer.produce(
                self.topic,
                key=letter.key,
                value=self._codec.encode(DEAD_LETTER_SCHEMA, record),
                headers=headers,
                on_delivery=delivered,
            )
        deadline = time.monotonic() + timeout_s
        while self._producer.flush(1.0) > 0:
            if time.monotonic() > deadline:
                raise DeadLetterDeliveryError(f"dead letters not acknowledged within {timeout_s:.0f} s")
        if failures:
            raise DeadLetterDeliveryError(f"dead letters not delivered: {failures[:3]}")


class ReplayReader:
    """Reads clean topics from given offsets up to fixed end offsets (a resync's replay), no group."""

    def __init__(self, bootstrap: str, group_id: str) -> None:
        """Create an unsubscribed ``read_committed`` consumer (the group id only names it)."""
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
                "log_level": 3,
            }
        )
        self._ends: dict[tuple[str, int], int] = {}

    def end_offsets(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """The current end (last stable) offset of every partition of ``topics``."""
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            metadata = self._consumer.list_topics(topic, timeout=30)
            for partition in metadata.topics[topic].partitions:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                ends[(topic, partition)] = high
        return ends

    def assign(self, starts: Mapping[tuple[str, int], int], ends: Mapping[tuple[str, int], int]) -> None:
        """Read each partition from ``starts`` (default 0) to just before ``ends``."""
        self._ends = {tp: end for tp, end in ends.items() if starts.get(tp, 0) < end}
        self._consumer.assign([TopicPartition(t, p, starts.get((t, p), 0)) for (t, p) in self._ends])

    @property
    def done(self) -> bool:
        """Every assigned partition reached its end offset."""
        return not self._ends

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        """Up to ``max_records`` messages before the end offsets."""
        out: list[Message] = []
        for message in self._consumer.consume(num_messages=max_records, timeout=max_wait_s):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("%s: replay: %s", ErrorCode.KAFKA_DELIVERY_FAILED, error)
                continue
            tp = (message.topic() or "", message.partition() or 0)
            end = self._ends.get(tp)
            offset = message.offset() or 0
            if end is None or offset >= end:
                continue
            out.append(message)
        # Positions, not the last offsets seen: compaction gaps and transaction markers have no message.
        remaining = [TopicPartition(t, p) for (t, p) in self._ends]
        for tp_pos in self._consumer.position(remaining) if remaining else []:
            key = (tp_pos.topic, tp_pos.partition)
            if tp_pos.offset >= 0 and tp_pos.offset >= self._ends[key]:
                del self._ends[key]
        return out

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()
