"""The worker's Kafka consumer reads read_committed and commits on the configured schedule (no broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pacs_sync.metrics import ProcessorMetrics
from stream_processors.app import create_app
from stream_processors.consumer import ProcessorConsumer, ProcessorConsumerThread
from stream_processors.settings import ProcessorSettings

_FAUST_ENV = (
    "BROKER_COMMIT_INTERVAL",
    "BROKER_COMMIT_EVERY",
    "BROKER_SESSION_TIMEOUT",
    "BROKER_HEARTBEAT_INTERVAL",
)


class _NullOutput:
    def send(self, records: Any) -> None:
        pass

    def flush(self) -> None:
        pass


def _app(monkeypatch: pytest.MonkeyPatch, guarantee: str, **overrides: Any) -> Any:
    for name in _FAUST_ENV:  # Faust's own variables would override the settings under test
        monkeypatch.delenv(name, raising=False)
    settings = ProcessorSettings.model_validate(
        {
            "processor_app_id": f"unit-consumer-{guarantee}",
            "metrics_port": 0,
            "processing_guarantee": guarantee,
            **overrides,
        }
    )
    output = None if guarantee == "exactly_once" else _NullOutput()
    return create_app(
        settings,
        metrics=ProcessorMetrics.create(CollectorRegistry()),
        output=output,  # type: ignore[arg-type]
        create_topics=False,
    )


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_worker_consumer_reads_read_committed_in_every_mode(
    monkeypatch: pytest.MonkeyPatch, guarantee: str
) -> None:
    app = _app(monkeypatch, guarantee)
    consumer = app.consumer
    assert isinstance(consumer, ProcessorConsumer)
    thread = consumer._thread
    assert isinstance(thread, ProcessorConsumerThread)

    async def isolation_level() -> Any:  # aiokafka wants a running loop; it connects only in start()
        kafka_consumer = thread._create_worker_consumer(app.transport)
        await kafka_consumer.stop()
        return kafka_consumer._isolation_level  # what aiokafka hands to its fetcher in start()

    assert asyncio.run(isolation_level()) == "read_committed"


def test_commit_and_session_settings_reach_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = _app(monkeypatch, "at_least_once").conf
    assert defaults.broker_commit_interval == 0.5
    assert defaults.broker_commit_every == 10_000
    assert defaults.broker_session_timeout == 60.0
    assert defaults.broker_heartbeat_interval == 3.0
    tuned = _app(
        monkeypatch,
        "at_least_once",
        processor_commit_interval_s=0.2,
        processor_commit_every=500,
        processor_session_timeout_s=9,
    ).conf
    assert tuned.broker_commit_interval == 0.2
    assert tuned.broker_commit_every == 500
    assert tuned.broker_session_timeout == 9.0
    assert tuned.broker_heartbeat_interval == 3.0


def test_commit_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_PROCESSOR_COMMIT_INTERVAL_S", "1.5")
    monkeypatch.setenv("PACS_PROCESSOR_COMMIT_EVERY", "2000")
    monkeypatch.setenv("PACS_PROCESSOR_SESSION_TIMEOUT_S", "12")
    settings = ProcessorSettings()
    assert (settings.processor_commit_interval_s, settings.processor_commit_every) == (1.5, 2000)
    assert settings.processor_session_timeout_s == 12.0
    monkeypatch.setenv("PACS_PROCESSOR_SESSION_TIMEOUT_S", "3")
    with pytest.raises(ValueError, match="processor_session_timeout_s"):
        ProcessorSettings()


def test_one_commit_gets_past_every_transaction_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of two-event transactions (offsets 0, 1, marker 2, 3, 4, marker 5…), read and
    acknowledged the way Faust's fetch loop does: the next commit covers all of them, not one
    transaction (Faust's own gaps include the next record, whose offset is then listed twice)."""
    from faust.types import TP

    app = _app(monkeypatch, "at_least_once")
    consumer = app.consumer
    tp = TP("changes", 0)
    records = [offset for offset in range(60) if offset % 3 != 2]
    read: int | None = None

    async def fetch_and_ack() -> None:
        nonlocal read
        for offset in records:
            if read is not None and offset - read > 1:
                await consumer._add_gap(tp, read + 1, offset)  # as Consumer._drain_messages calls it
            consumer._acked[tp].append(offset)
            consumer._acked_index[tp].add(offset)
            read = offset

    asyncio.run(fetch_and_ack())
    assert consumer._new_offset(tp) == records[-1] + 1
    assert not consumer._acked[tp]
