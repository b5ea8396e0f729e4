"""The processors' schema resolver on the real broker: committed schemas only, cached, waits for an
open transaction, unknown fingerprints answered None (then dead-lettered by the codec's caller)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from producer.evolution import evolved_envelope
from schemas.codec import AvroCodec, SchemaRegistry, UndecodableEventError, fingerprint
from stream_processors.schema_topic import SchemaTopicResolver
from tests.unit.property_events import property_insert_envelope

SHIPPED = SchemaRegistry.from_package()


def _evolved(column: str) -> dict[str, Any]:
    base = SHIPPED.by_name("pacs.dbo.PropertyEnvelope").schema
    return evolved_envelope(base, "pacs.dbo.Property", [(column, "string")])


@pytest.fixture
def schemas_topic(kafka_bootstrap: str, unique_name: str) -> str:
    topic = f"{unique_name}.pacs._schemas"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1, compacted=True)])
    return topic


def _producer(bootstrap: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"schemas-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    return producer


def _announce(producer: Producer, topic: str, schema: dict[str, Any]) -> bytes:
    fp = fingerprint(schema)
    producer.produce(topic, key=fp.hex().encode(), value=json.dumps(schema).encode())
    return fp


def _event(schema: dict[str, Any], column: str) -> bytes:
    registry = SchemaRegistry.from_package()
    registry.register(schema)
    envelope = property_insert_envelope(1, "99336", capture_instance="dbo_Property_v2", **{column: "R-1"})
    return AvroCodec(registry).encode("pacs.dbo.PropertyEnvelope", envelope)


def test_committed_schemas_resolve_and_aborted_or_unknown_ones_do_not(
    kafka_bootstrap: str, schemas_topic: str
) -> None:
    committed, aborted = _evolved("ZoningCode"), _evolved("FloodZone")
    producer = _producer(kafka_bootstrap)
    producer.begin_transaction()
    fp_committed = _announce(producer, schemas_topic, committed)
    producer.commit_transaction(30)
    producer.begin_transaction()
    fp_aborted = _announce(producer, schemas_topic, aborted)
    producer.flush(30)
    producer.abort_transaction(30)

    resolver = SchemaTopicResolver(kafka_bootstrap, schemas_topic)
    codec = AvroCodec(SchemaRegistry.from_package(resolver))
    try:
        decoded = codec.decode(_event(committed, "ZoningCode"))
        assert decoded.fingerprint == fp_committed
        assert decoded.value["after"]["ZoningCode"] == "R-1"
        assert codec.registry.by_name("pacs.dbo.PropertyEnvelope").fingerprint != fp_committed  # not current

        started = time.monotonic()
        with pytest.raises(UndecodableEventError) as caught:
            codec.decode(_event(aborted, "FloodZone"))
        assert caught.value.context["reason"] == "unknown_fingerprint"
        assert resolver(fp_aborted) is None
        assert resolver(b"\x01" * 8) is None
        assert time.monotonic() - started < 3  # no open transaction: no wait
    finally:
        resolver.close()


def test_a_schema_whose_transaction_is_still_open_is_waited_for(
    kafka_bootstrap: str, schemas_topic: str
) -> None:
    schema = _evolved("ZoningCode")
    producer = _producer(kafka_bootstrap)
    producer.begin_transaction()
    fp = _announce(producer, schemas_topic, schema)
    producer.flush(30)
    committer = threading.Timer(1.0, producer.commit_transaction, args=(30,))
    resolver = SchemaTopicResolver(kafka_bootstrap, schemas_topic)
    try:
        committer.start()
        started = time.monotonic()
        found = resolver(fp)
        waited = time.monotonic() - started
    finally:
        committer.join()
        resolver.close()
    assert found is not None
    assert fingerprint(found) == fp
    assert 0.5 < waited < 5


def test_a_missing_schemas_topic_resolves_nothing(kafka_bootstrap: str, unique_name: str) -> None:
    resolver = SchemaTopicResolver(kafka_bootstrap, f"{unique_name}.absent._schemas")
    try:
        assert resolver(b"\x02" * 8) is None
    finally:
        resolver.close()
