"""Produce and consume through the real broker, including a transactional producer."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Message, Producer


def _consume_all(
    bootstrap: str, topic: str, isolation: str, expected_max: int
) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    consumer.subscribe([topic])
    seen: list[tuple[bytes | None, bytes | None]] = []
    empty_polls = 0
    try:
        while empty_polls < 6 and len(seen) <= expected_max:
            batch = consumer.consume(num_messages=500, timeout=1.0)
            if not batch:
                empty_polls += 1
                continue
            for message in batch:
                assert message.error() is None, message.error()
                seen.append((message.key(), message.value()))
    finally:
        consumer.close()
    return seen


def test_plain_produce_and_consume_keeps_keys_values_and_headers(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for i in range(20):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers={"n": str(i).encode()})
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: list[Message] = []
    try:
        while len(got) < 20:
            batch = consumer.consume(num_messages=100, timeout=10.0)
            assert batch, "no records arrived from the broker"
            got.extend(batch)
    finally:
        consumer.close()
    assert [m.key() for m in got] == [f"k{i}".encode() for i in range(20)]
    assert [m.value() for m in got] == [f"v{i}".encode() for i in range(20)]
    assert dict(got[7].headers() or [])["n"] == b"7"


def test_transactional_producer_hides_aborted_records_from_read_committed(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"})
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=f"c{i}".encode(), value=b"committed")
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=f"a{i}".encode(), value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)

    committed = _consume_all(kafka_bootstrap, topic, "read_committed", expected_max=15)
    everything = _consume_all(kafka_bootstrap, topic, "read_uncommitted", expected_max=15)
    assert sorted(k or b"" for k, _ in committed) == sorted(f"c{i}".encode() for i in range(10))
    assert {v for _, v in committed} == {b"committed"}
    # The aborted records did reach the log; only isolation hides them.
    assert len(everything) == 15
