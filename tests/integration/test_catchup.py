"""Where the stages stand, read from a real broker: the topics' data ends in one pass."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Producer

from pipeline.catchup import KafkaPositions


def _transactional(bootstrap: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"t-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    return producer


def test_data_ends_are_one_past_the_last_committed_record_of_every_partition(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Commit markers and aborted records are not data: a consumer that read everything committed
    "last record + 1", which is what data_ends must give (not the high watermark)."""
    topic = topic_factory("changes", partitions=3)
    other = topic_factory("other", partitions=1)
    producer = _transactional(kafka_bootstrap)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=f"a{i}".encode(), partition=0)
    for i in range(3):
        producer.produce(topic, value=f"b{i}".encode(), partition=1)
    producer.produce(other, value=b"x", partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(2):
        producer.produce(topic, value=f"aborted{i}".encode(), partition=1)
    assert producer.flush(30) == 0  # on the broker, then aborted (an abort purges unsent records)
    producer.abort_transaction(30)

    kafka = KafkaPositions(kafka_bootstrap)
    try:
        ends = kafka.end_offsets([topic, other])
        started = time.monotonic()
        data = kafka.data_ends([topic, other, "no-such-topic"])
        took = time.monotonic() - started
    finally:
        kafka.close()
    assert ends == {(topic, 0): 6, (topic, 1): 7, (topic, 2): 0, (other, 0): 2}  # records + markers
    assert data == {(topic, 0): 5, (topic, 1): 3, (topic, 2): 0, (other, 0): 1}
    assert took < 10, f"data_ends took {took:.1f} s for 4 partitions"


def test_a_topic_just_created_is_read_without_a_kafka_traceback(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Right after creation a partition may have no leader yet: asked again, not a KafkaException."""
    kafka = KafkaPositions(kafka_bootstrap)
    try:
        topic = topic_factory("fresh", partitions=6)
        assert kafka.data_ends([topic]) == {(topic, p): 0 for p in range(6)}
        assert kafka.committed("nobody", [topic]) == {}
    finally:
        kafka.close()
