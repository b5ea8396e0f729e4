"""Faust agents under Agent.test_context(): no broker; outputs captured by a stand-in producer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from confluent_kafka import KafkaException
from faust.topics import Topic
from faust.types.tuples import FutureMessage
from prometheus_client import CollectorRegistry

from pacs_sync.metrics import ProcessorMetrics
from schemas.codec import AvroCodec, SchemaRegistry
from stream_processors import app as app_module
from stream_processors.app import create_app
from stream_processors.handling import OutRecord
from stream_processors.settings import ProcessorSettings
from tests.unit.property_events import property_insert

CODEC = AvroCodec(SchemaRegistry.from_package())


class CapturingOutput:
    """Stands in for the Kafka output producer (unit tests run without a broker)."""

    def __init__(self) -> None:
        self.sent: list[OutRecord] = []
        self.flushes = 0

    def send(self, records: tuple[OutRecord, ...]) -> None:
        self.sent.extend(records)

    def flush(self) -> None:
        self.flushes += 1


def test_property_agent_emits_clean_records_and_dead_letters() -> None:
    settings = ProcessorSettings(processor_app_id="unit-test-app", metrics_port=0, clean_topic_prefix="tf")
    output = CapturingOutput()
    registry = CollectorRegistry()
    app = create_app(
        settings,
        codec=CODEC,
        metrics=ProcessorMetrics.create(registry),
        output=output,  # type: ignore[arg-type]  # duck-typed stand-in for OutputProducer
        create_topics=False,
    )

    async def run() -> None:
        app.loop = asyncio.get_running_loop()
        app.finalize()
        app.flow_control.resume()
        agent = app.agents["unit-test-app-properties"]
        async with agent.test_context() as test_agent:
            key = CODEC.encode("pacs.dbo.PropertyKey", {"PropertyID": 1})
            await test_agent.put(property_insert(1, "99336-1234"), key=key)
            await test_agent.put(
                property_insert(2, "9933"), key=CODEC.encode("pacs.dbo.PropertyKey", {"PropertyID": 2})
            )
            await test_agent.put(b"not avro at all", key=None)
            await asyncio.sleep(0.3)  # let the batch's `within` expire

    asyncio.run(run())
    topics = [record.topic for record in output.sent]
    assert topics == ["tf.properties", "tf.dlq", "tf.dlq"]
    clean: Any = CODEC.decode(output.sent[0].value or b"").value
    assert (clean["property_id"], clean["city"], clean["zip5"], clean["zip4"]) == (
        1,
        "Kennewick",
        "99336",
        "1234",
    )
    assert dict(output.sent[1].headers)["error_code"] == b"PACS-004"
    assert dict(output.sent[2].headers)["error_code"] == b"PACS-012"
    assert output.flushes >= 1  # outputs flushed before the batch is acknowledged
    assert (
        registry.get_sample_value(
            "pacs_sync_processor_events_total", {"entity": "properties", "outcome": "valid"}
        )
        == 1
    )


def _run_property_batch(settings: ProcessorSettings, output: CapturingOutput | None = None) -> None:
    """Two valid events, one invalid and one undecodable through the properties agent, one batch."""
    app = create_app(
        settings,
        codec=CODEC,
        metrics=ProcessorMetrics.create(CollectorRegistry()),
        output=output,  # type: ignore[arg-type]  # duck-typed stand-in for OutputProducer
        create_topics=False,
    )

    async def run() -> None:
        app.loop = asyncio.get_running_loop()
        app.finalize()
        app.flow_control.resume()
        agent = app.agents[f"{settings.processor_app_id}-properties"]
        async with agent.test_context() as test_agent:
            for pid, zip_code in ((1, "99336-1234"), (2, "9933"), (3, "99336")):
                key = CODEC.encode("pacs.dbo.PropertyKey", {"PropertyID": pid})
                await test_agent.put(property_insert(pid, zip_code), key=key)
            await test_agent.put(b"not avro at all", key=None)
            await asyncio.sleep(0.3)  # let the batch's `within` expire

    asyncio.run(run())


def _comparable(record: OutRecord) -> tuple[Any, ...]:
    """A record as bytes, but for the dead letter's ``failed_at`` (wall-clock, by design)."""
    value: Any = record.value
    if record.topic.endswith(".dlq"):
        value = dict(CODEC.decode(record.value or b"").value)
        value.pop("failed_at")
    return (record.topic, record.key, value, record.headers)


def test_exactly_once_agent_emits_the_same_records_through_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    """exactly_once sends every output through Faust's topic/producer path instead of the confluent
    producer; what reaches the producer must be what at_least_once produces, in the same order."""
    output = CapturingOutput()
    _run_property_batch(
        ProcessorSettings(processor_app_id="unit-alo", metrics_port=0, clean_topic_prefix="tf"), output
    )

    published: list[OutRecord] = []

    async def publish_message(self: Topic, fut: FutureMessage, wait: bool = False) -> Any:
        # Where Faust hands the serialized message to its (transactional) producer; no broker here.
        message = fut.message
        headers: Any = message.headers.items() if isinstance(message.headers, dict) else message.headers
        published.append(OutRecord(self.get_topic_name(), message.key, message.value, tuple(headers or ())))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    monkeypatch.setattr(Topic, "publish_message", publish_message)
    _run_property_batch(
        ProcessorSettings(
            processor_app_id="unit-eoo",
            metrics_port=0,
            clean_topic_prefix="tf",
            processing_guarantee="exactly_once",
        )
    )

    assert [r.topic for r in output.sent] == ["tf.properties", "tf.dlq", "tf.properties", "tf.dlq"]
    assert [_comparable(r) for r in published] == [_comparable(r) for r in output.sent]
    clean = [r for r in published if r.topic == "tf.properties"]
    assert clean == [r for r in output.sent if r.topic == "tf.properties"]  # byte-identical


class _Exited(BaseException):
    """Stands in for the end of the process (BaseException: nothing in Faust's path may swallow it)."""


class FailingOutput(CapturingOutput):
    """Delivery of the batch's outputs fails (e.g. a record the broker refuses)."""

    def flush(self) -> None:
        self.flushes += 1
        raise KafkaException("output delivery failed: Broker: Message size too large")


def test_a_batch_whose_outputs_fail_stops_the_worker_unacknowledged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Faust acks a batch whose body raised and restarts only the agent; the worker must exit instead."""
    exits: list[int] = []

    def exit_now(code: int) -> None:
        exits.append(code)
        raise _Exited(code)

    monkeypatch.setattr(app_module, "_exit_now", exit_now)
    output = FailingOutput()
    with contextlib.suppress(_Exited):
        _run_property_batch(
            ProcessorSettings(processor_app_id="unit-fail", metrics_port=0, clean_topic_prefix="tf"), output
        )
    assert exits == [app_module.BATCH_FAILED_EXIT_CODE]
    assert output.flushes == 1
    assert any(
        "PACS-010: properties batch of 4 events failed" in r.getMessage() and r.levelname == "CRITICAL"
        for r in caplog.records
    )


def test_the_processors_read_evolved_schemas_where_the_producer_writes_them() -> None:
    from producer.runner import schemas_topic as producer_schemas_topic
    from producer.settings import ProducerSettings

    common = {"topic_prefix": "tfx", "db_name": "pacs_benton"}
    assert app_module.schemas_topic(ProcessorSettings.model_validate(common)) == producer_schemas_topic(
        ProducerSettings.model_validate(common)
    )
