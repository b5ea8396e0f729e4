"""Where each stage stands, read from the outside: the producer's committed offset, the processors'
committed group offsets, the sink's offsets in PostgreSQL, and the topics' end offsets.

``pacs-sync sync --until-caught-up`` waits on these, stage after stage: everything committed in
the source when it started has been published (producer offset past the source's LSN then), then
processed (the processor group committed past the change topics' end offsets), then written (the
sink's PostgreSQL offsets past the clean topics' end offsets).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from pacs_sync import dbapi
from pacs_sync.errors import ErrorCode, FatalError, RetriableError
from pacs_sync.lsn import Lsn
from pipeline.settings import PipelineSettings

logger = logging.getLogger(__name__)

Partition = tuple[str, int]

TABLE_ENTITIES: dict[str, str] = {
    "Property": "properties",
    "PropertyOwner": "owners",
    "PropertyValue": "valuations",
    "Structure": "structures",
}


def change_topic(settings: PipelineSettings, table: str) -> str:
    """The producer's change topic of a PACS table."""
    return settings.change_topic(table)


def clean_topic(settings: PipelineSettings, entity: str) -> str:
    """The processors' clean topic of an entity."""
    return settings.clean_topic(entity)


def dlq_topic(settings: PipelineSettings) -> str:
    """The dead-letter topic."""
    return settings.dead_letter_topic()


def behind(done: Mapping[Partition, int], ends: Mapping[Partition, int]) -> dict[Partition, int]:
    """Records each partition still has to go (pure): ``ends`` minus ``done`` (absent = 0), where > 0."""
    return {tp: end - done.get(tp, 0) for tp, end in ends.items() if end > done.get(tp, 0)}


def progress(
    start: Mapping[Partition, int], done: Mapping[Partition, int], ends: Mapping[Partition, int]
) -> float:
    """Share of the records between ``start`` and ``ends`` already done, 0..1 (1 when there are none)."""
    total = sum(max(end - start.get(tp, 0), 0) for tp, end in ends.items())
    if total == 0:
        return 1.0
    finished = sum(max(min(done.get(tp, 0), end) - start.get(tp, 0), 0) for tp, end in ends.items())
    return min(finished / total, 1.0)


# Errors of a cluster that is still settling (a topic just created has no partition leader yet, a
# leader moved, a broker restarts): asked again after a pause. Others are reported at once.
_TRANSIENT_KAFKA_ERRORS = frozenset(
    {
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
    }
)


_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT})


def kafka_error_is_transient(exc: BaseException) -> bool:
    """Whether a confluent-kafka exception is worth asking again (pure)."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if not isinstance(error, KafkaError):
        return False
    return error.code() in _TRANSIENT_KAFKA_ERRORS or error.retriable()


T = TypeVar("T")


@dataclass
class KafkaPositions:
    """End offsets of topics and committed offsets of consumer groups.

    Every Kafka call is retried with backoff while the error is transient (up to ``retry_s``), then
    reported as a retriable PACS-010 (PACS-001 when the cluster does not answer at all); any other
    Kafka error is a fatal PACS-010. Never a raw ``KafkaException``.
    """

    bootstrap: str
    retry_s: float = 30.0

    def __post_init__(self) -> None:
        """One metadata client and one admin client for the run."""
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"pacs-sync-observer-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_s
        delay = 0.2
        while True:
            try:
                return call()
            except KafkaException as exc:
                if not kafka_error_is_transient(exc):
                    message = f"Kafka at {self.bootstrap}: cannot {what}: {exc}"
                    raise FatalError(message, code=ErrorCode.KAFKA_DELIVERY_FAILED) from exc
                if time.monotonic() + delay > deadline:
                    error = exc.args[0] if exc.args else None
                    unreachable = isinstance(error, KafkaError) and error.code() in _UNREACHABLE
                    code = ErrorCode.KAFKA_DELIVERY_FAILED
                    if unreachable:
                        code = ErrorCode.CONNECTION_UNAVAILABLE
                    raise RetriableError(
                        f"Kafka at {self.bootstrap}: cannot {what}: {exc} (still failing after "
                        f"{self.retry_s:.0f} s)",
                        code=code,
                    ) from exc
                logger.info("Kafka cannot %s yet (%s); asking again in %.1f s", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        """Every partition of the topics that exist."""
        wanted = list(topics)
        metadata = self._retrying("list its topics", lambda: self._consumer.list_topics(timeout=15))
        return [
            TopicPartition(topic, p)
            for topic in wanted
            if topic in metadata.topics
            for p in metadata.topics[topic].partitions
        ]

    def topics_matching(self, prefix: str, suffix: str) -> list[str]:
        """Existing topics named ``prefix…suffix`` (e.g. Faust's repartition topics)."""
        metadata = self._retrying("list its topics", lambda: self._consumer.list_topics(timeout=15))
        return sorted(t for t in metadata.topics if t.startswith(prefix) and t.endswith(suffix))

    def _list_offsets(
        self, partitions: list[TopicPartition], spec: OffsetSpec, isolation: IsolationLevel
    ) -> dict[Partition, int]:
        """One ListOffsets request for every partition (retried as a whole while transient)."""
        if not partitions:
            return {}

        def call() -> dict[Partition, int]:
            request = {TopicPartition(tp.topic, tp.partition): spec for tp in partitions}
            futures = self._admin.list_offsets(request, isolation_level=isolation, request_timeout=15)
            return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}

        return self._retrying("list the partitions' offsets", call)

    def end_offsets(self, topics: Iterable[str]) -> dict[Partition, int]:
        """The high watermark of every partition."""
        return self._list_offsets(
            self.partitions(topics), OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED
        )

    def data_ends(self, topics: Iterable[str], *, window: int = 64) -> dict[Partition, int]:
        """Per partition, one past the last record a read_committed consumer sees.

        Transactional topics end with commit markers that no consumer receives: a consumer that
        committed "last record + 1" stays one short of the high watermark (and of the last stable
        offset) forever, so catch-up is measured against this instead. Two ListOffsets requests for
        all partitions (last stable and earliest offsets), then ONE read_committed consumer reads
        the last ``window`` offsets of every partition together.
        """
        partitions = self.partitions(topics)
        stable = self._list_offsets(partitions, OffsetSpec.latest(), IsolationLevel.READ_COMMITTED)
        earliest = self._list_offsets(partitions, OffsetSpec.earliest(), IsolationLevel.READ_COMMITTED)
        found = dict.fromkeys(stable, 0)
        ranges = {
            tp: (max(end - window, earliest.get(tp, 0)), end)
            for tp, end in stable.items()
            if end > earliest.get(tp, 0)
        }
        last = self._last_visible(ranges)
        # Only aborted records or markers in the window: look at the whole partition (rare).
        again = {
            tp: (earliest.get(tp, 0), end)
            for tp, (start, end) in ranges.items()
            if tp not in last and start > earliest.get(tp, 0)
        }
        if again:
            last.update(self._last_visible(again))
        for tp, offset in last.items():
            found[tp] = offset + 1
        return found

    def _last_visible(self, ranges: Mapping[Partition, tuple[int, int]]) -> dict[Partition, int]:
        """The offset of the last record visible (read_committed) in [start, end) of each partition."""
        if not ranges:
            return {}
        reader = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"pacs-sync-observer-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "log_level": 3,
            }
        )
        last: dict[Partition, int] = {}
        try:
            reader.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])
            open_partitions = set(ranges)
            idle = 0
            while open_partitions and idle < 10:
                messages = reader.consume(num_messages=5000, timeout=0.5)
                idle = 0 if messages else idle + 1
                for message in messages:
                    tp = (message.topic() or "", message.partition() or 0)
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            open_partitions.discard(tp)
                        continue
                    offset = message.offset() or 0
                    if tp in ranges and offset < ranges[tp][1]:
                        last[tp] = max(last.get(tp, offset), offset)
                        if offset + 1 >= ranges[tp][1]:
                            open_partitions.discard(tp)
        except KafkaException as exc:
            raise RetriableError(
                f"Kafka at {self.bootstrap}: cannot read the topics' last records: {exc}",
                code=ErrorCode.KAFKA_DELIVERY_FAILED,
            ) from exc
        finally:
            reader.close()
        return last

    def committed(self, group: str, topics: Iterable[str]) -> dict[Partition, int]:
        """A consumer group's committed offsets (partitions without a commit are absent)."""
        partitions = self.partitions(topics)
        if not partitions:
            return {}
        reader = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "log_level": 3})
        try:
            found = self._retrying(
                f"read the offsets of group {group}", lambda: reader.committed(partitions, timeout=15)
            )
        finally:
            reader.close()
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def count_records(
        self, topics: Iterable[str], start: Mapping[Partition, int], *, header: str | None = None
    ) -> dict[str, int]:
        """Records from ``start`` to the current end, per topic, or per value of ``header`` if given.

        Read with ``read_committed``: aborted records and transaction markers are not counted.
        """
        ends = self.data_ends(topics)
        todo = {tp: end for tp, end in ends.items() if end > start.get(tp, 0)}
        counts: dict[str, int] = {}
        if not todo:
            return counts
        reader = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"pacs-sync-observer-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "log_level": 3,
            }
        )
        try:
            reader.assign([TopicPartition(t, p, start.get((t, p), 0)) for (t, p) in todo])
            remaining = dict(todo)
            idle = 0
            while remaining and idle < 20:
                messages = reader.consume(num_messages=5000, timeout=0.5)
                idle = 0 if messages else idle + 1
                for message in messages:
                    if message.error() is not None:
                        continue
                    tp = (message.topic() or "", message.partition() or 0)
                    offset = message.offset() or 0
                    if offset >= remaining.get(tp, 0):
                        continue
                    if header is None:
                        name = tp[0]
                    else:
                        value = dict(message.headers() or []).get(header)
                        name = value.decode() if isinstance(value, bytes) else str(value)
                    counts[name] = counts.get(name, 0) + 1
                    if offset + 1 >= remaining[tp]:
                        remaining.pop(tp)
        finally:
            reader.close()
        return counts

    def close(self) -> None:
        """Close the metadata client (the admin client needs no closing)."""
        self._consumer.close()


def sink_offsets(settings: PipelineSettings) -> dict[Partition, int]:
    """The sink's committed offsets, from PostgreSQL (empty before the sink's first start)."""
    parts = settings.target_parts
    conn = dbapi.connect(
        host=parts["host"],
        port=parts["port"],
        user=parts["user"],
        password=parts["password"],
        database=parts["database"],
        autocommit=True,
        application_name="pacs-sync-sync",
    )
    try:
        rows = dbapi.fetch_all(
            conn,
            "SELECT topic, partition, next_offset FROM pacs_sync.sync_offsets WHERE consumer = ?",
            (settings.sink_group_id,),
        )
    except dbapi.DriverError as exc:
        if "does not exist" in str(exc):
            return {}  # the sink has not migrated the target yet
        raise
    finally:
        conn.close()
    return {(str(r[0]), int(r[1])): int(r[2]) for r in rows}


def lsn_reached(position_lsn: Lsn | None, complete: bool, target: Lsn | None) -> bool:
    """Whether a producer position covers everything committed up to ``target`` (pure)."""
    if target is None:
        return True
    return position_lsn is not None and complete and position_lsn >= target
