"""The only module that talks to Kafka for the producer: topics, transactions, the offsets topic.

One transactional (hence idempotent) confluent-kafka producer with a stable ``transactional.id``: a
restarted producer fences its predecessor, and every window of events is committed together with
the position record that covers it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from pacs_sync.errors import ErrorCode, RetriableError
from producer.errors import FencedProducerError, KafkaPublishError

logger = logging.getLogger(__name__)

_TIMEOUT_S = 30.0


class TransactionalPublisher:
    """Produces events in Kafka transactions.

    Contract: :meth:`begin`, any number of :meth:`produce`, then :meth:`commit`; either everything
    between ``begin`` and a successful ``commit`` is in the log for read_committed readers, or none
    of it is (a failed commit aborts and raises :class:`KafkaPublishError`, for the caller to retry
    the same window).
    """

    def __init__(self, bootstrap: str, transactional_id: str, *, linger_ms: int = 5) -> None:
        """Create the producer and initialise transactions (fencing any older producer with this id)."""
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": transactional_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 500000,
                "queue.buffering.max.kbytes": 1048576,
                "compression.type": "lz4",
                "transaction.timeout.ms": 120000,
                "log_level": 3,
            }
        )
        self._in_transaction = False
        self._partition_counts: dict[str, int] = {}
        try:
            # Connect first: init_transactions() without a broker connection waits a 500 ms retry timer.
            self._producer.list_topics(timeout=_TIMEOUT_S)
            self._producer.init_transactions(_TIMEOUT_S)
        except KafkaException as exc:
            raise KafkaPublishError(f"Kafka transactions could not start ({exc}); is the broker up?") from exc

    def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (asked once per topic; topics never shrink)."""
        count = self._partition_counts.get(topic)
        if count is None:
            try:
                metadata = self._producer.list_topics(topic, timeout=_TIMEOUT_S).topics[topic]
            except KafkaException as exc:
                raise KafkaPublishError(f"no metadata for topic {topic} ({exc})") from exc
            if metadata.error is not None or not metadata.partitions:
                raise KafkaPublishError(f"no partitions known for topic {topic}: {metadata.error}")
            count = self._partition_counts[topic] = len(metadata.partitions)
        return count

    def begin(self) -> None:
        """Start a transaction."""
        self._producer.begin_transaction()
        self._in_transaction = True

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: dict[str, str | bytes | None] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record in the current transaction (waits while the local queue is full).

        ``partition``: the record's partition; None lets the key pick it (the default partitioner).
        """
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value=value, key=key, headers=headers)
                else:
                    self._producer.produce(topic, value=value, key=key, headers=headers, partition=partition)
                return
            except BufferError:
                self._producer.poll(0.05)

    def commit(self) -> None:
        """Flush and commit the transaction; on failure abort it and raise.

        Raises:
            KafkaPublishError: the transaction was aborted; nothing of it is visible; retry it.
            FencedProducerError: another producer with the same transactional id took over.
        """
        try:
            self._producer.commit_transaction(_TIMEOUT_S)
            self._in_transaction = False
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal() or error.code() == KafkaError._FENCED:
                raise FencedProducerError(
                    f"the Kafka producer was fenced or failed fatally: {error}"
                ) from exc
            if error.retriable():
                # The commit may still complete: committing again is the documented retry.
                try:
                    self._producer.commit_transaction(_TIMEOUT_S)
                    self._in_transaction = False
                    return
                except KafkaException:
                    logger.warning("commit retry failed; aborting the transaction")
            self.abort()
            raise KafkaPublishError(f"Kafka transaction aborted: {error}") from exc

    def abort(self) -> None:
        """Abort the current transaction, if any."""
        if not self._in_transaction:
            return
        try:
            self._producer.abort_transaction(_TIMEOUT_S)
        except KafkaException as exc:
            logger.warning("aborting the Kafka transaction failed: %s", exc)
        self._in_transaction = False

    def close(self) -> None:
        """Abort an open transaction and flush."""
        self.abort()
        self._producer.flush(5)


def read_last_value(bootstrap: str, topic: str, key: bytes) -> bytes | None:
    """The newest committed value for ``key`` in a single-partition compacted topic (read_committed).

    Raises:
        RetriableError: the broker did not answer or the partition has no leader yet (just created).
    """
    last: dict[bytes, bytes | None] = {}

    def keep(record_key: bytes, value: bytes | None) -> None:
        if record_key == key:
            last[key] = value

    _fold_committed(bootstrap, topic, keep)
    return last.get(key)


def read_all_values(bootstrap: str, topic: str) -> dict[str, bytes]:
    """Every key's newest committed value in a single-partition compacted topic (tombstones remove keys).

    Raises:
        RetriableError: the broker did not answer or the partition has no leader yet (just created).
    """
    state: dict[str, bytes] = {}

    def keep(record_key: bytes, value: bytes | None) -> None:
        if value is None:
            state.pop(record_key.decode(), None)
        else:
            state[record_key.decode()] = value

    _fold_committed(bootstrap, topic, keep)
    return state


def _fold_committed(bootstrap: str, topic: str, fold: Callable[[bytes, bytes | None], None]) -> None:
    """Feed each committed keyed record of partition 0, in order, to ``fold`` (read_committed)."""
    try:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"pacs-sync-state-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                # The last fetch only finds the transaction marker; don't wait the default 500 ms for more.
                "fetch.wait.max.ms": 10,
                "log_level": 3,
            }
        )
    except KafkaException as exc:
        raise RetriableError(f"reading {topic}: {exc}", code=ErrorCode.KAFKA_DELIVERY_FAILED) from exc
    try:
        partition = TopicPartition(topic, 0)
        _low, high = consumer.get_watermark_offsets(partition, timeout=_TIMEOUT_S)
        if high <= 0:
            return
        partition.offset = 0
        consumer.assign([partition])
        deadline = time.monotonic() + _TIMEOUT_S * 4
        while time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10000, timeout=0.5):
                record_key = message.key()
                if message.error() is None and record_key is not None:
                    fold(record_key, message.value())
            position = consumer.position([TopicPartition(topic, 0)])[0].offset
            # With read_committed the last stable offset bounds what we can see; transaction markers
            # occupy offsets too, so compare positions, not record counts.
            lso = consumer.get_watermark_offsets(partition, timeout=_TIMEOUT_S, cached=False)[1]
            if position >= lso or position >= high:
                return
        raise RetriableError(
            f"reading {topic} did not reach its end in time", code=ErrorCode.KAFKA_DELIVERY_FAILED
        )
    except KafkaException as exc:
        raise RetriableError(f"reading {topic}: {exc}", code=ErrorCode.KAFKA_DELIVERY_FAILED) from exc
    finally:
        consumer.close()
