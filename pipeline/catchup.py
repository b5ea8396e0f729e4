"""Where each stage stands, read from the outside: the producer's committed offset, the processors'
committed group offsets, the sink's offsets in PostgreSQL, and the topics' end offsets.

``pacs-sync sync --until-caught-up`` waits on these, stage after stage: everything committed in
the source when it started has been published (producer offset past the source's LSN then), then
processed (the processor group committed past the change topics' end offsets), then written (the
sink's PostgreSQL offsets past the clean topics' end offsets).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pacs_sync import dbapi
from pacs_sync.errors import ErrorCode, RetriableError
from pacs_sync.lsn import Lsn
from pipeline.settings import PipelineSettings

Partition = tuple[str, int]

TABLE_ENTITIES: dict[str, str] = {
    "Property": "properties",
    "PropertyOwner": "owners",
    "PropertyValue": "valuations",
    "Structure": "structures",
}


def change_topic(settings: PipelineSettings, table: str) -> str:
    """The producer's change topic of a PACS table."""
    return f"{settings.topic_prefix}.{settings.db_name}.dbo.{table}"


def clean_topic(settings: PipelineSettings, entity: str) -> str:
    """The processors' clean topic of an entity."""
    return f"{settings.clean_topic_prefix}.{entity}"


def dlq_topic(settings: PipelineSettings) -> str:
    """The dead-letter topic."""
    return f"{settings.clean_topic_prefix}.dlq"


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


@dataclass
class KafkaPositions:
    """End offsets of topics and committed offsets of consumer groups."""

    bootstrap: str

    def __post_init__(self) -> None:
        """One metadata client for the run."""
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"pacs-sync-observer-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        """Every partition of the topics that exist."""
        try:
            metadata = self._consumer.list_topics(timeout=15)
        except KafkaException as exc:
            raise RetriableError(f"Kafka at {self.bootstrap} does not answer: {exc}") from exc
        return [
            TopicPartition(topic, p)
            for topic in topics
            if topic in metadata.topics
            for p in metadata.topics[topic].partitions
        ]

    def topics_matching(self, prefix: str, suffix: str) -> list[str]:
        """Existing topics named ``prefix…suffix`` (e.g. Faust's repartition topics)."""
        metadata = self._consumer.list_topics(timeout=15)
        return sorted(t for t in metadata.topics if t.startswith(prefix) and t.endswith(suffix))

    def end_offsets(self, topics: Iterable[str]) -> dict[Partition, int]:
        """The high watermark of every partition."""
        ends: dict[Partition, int] = {}
        for tp in self.partitions(topics):
            _, high = self._consumer.get_watermark_offsets(tp, timeout=15)
            ends[(tp.topic, tp.partition)] = high
        return ends

    def data_ends(self, topics: Iterable[str], *, window: int = 64) -> dict[Partition, int]:
        """Per partition, one past the last record a read_committed consumer sees.

        Transactional topics end with commit markers that no consumer receives: a consumer that
        committed "last record + 1" stays one short of the high watermark forever, so catch-up is
        measured against this instead.
        """
        ends = self.end_offsets(topics)
        found: dict[Partition, int] = {}
        for tp, high in ends.items():
            if high <= 0:
                found[tp] = 0
                continue
            low, _ = self._consumer.get_watermark_offsets(TopicPartition(*tp), timeout=15)
            start = max(high - window, low)
            last = self._last_visible(tp, start, high)
            if last is None and start > low:
                last = self._last_visible(tp, low, high)
            found[tp] = 0 if last is None else last + 1
        return found

    def _last_visible(self, tp: Partition, start: int, high: int) -> int | None:
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
        last = None
        try:
            reader.assign([TopicPartition(tp[0], tp[1], start)])
            idle = 0
            while idle < 10:
                messages = reader.consume(num_messages=500, timeout=0.5)
                idle = 0 if messages else idle + 1
                eof = False
                for message in messages:
                    error = message.error()
                    if error is not None:
                        eof = eof or error.code() == KafkaError._PARTITION_EOF
                        continue
                    offset = message.offset() or 0
                    if offset < high:
                        last = offset if last is None else max(last, offset)
                if eof:
                    break
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
            found = reader.committed(partitions, timeout=15)
        except KafkaException as exc:
            raise RetriableError(
                f"cannot read the offsets of group {group}: {exc}", code=ErrorCode.KAFKA_DELIVERY_FAILED
            ) from exc
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
        """Close the metadata client."""
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
