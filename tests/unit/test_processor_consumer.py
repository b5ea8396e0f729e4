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


def _consumer(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """The worker's consumer, its flow running in consumer generation 1 (no broker)."""
    app = _app(monkeypatch, "at_least_once")
    app.consumer_generation_id = 1
    app.flow_control.resume()
    consumer = app.consumer
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    return app, consumer


def _message(offset: int, *, generation: int = 1, topic: str = "changes") -> Any:
    from faust.types import TP
    from faust.types.tuples import ConsumerMessage

    return ConsumerMessage(
        topic, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP(topic, 0), generation_id=generation
    )


async def _fetched(messages: list[Any]) -> Any:
    for message in messages:
        yield message.tp, message


def _hand_over(consumer: Any, messages: list[Any], *, deliver: Any = None) -> list[int]:
    """Run the fetch loop's hand-over on ``messages``; returns the offsets the streams received."""
    received: list[int] = []

    async def on_message(message: Any) -> None:
        if deliver is not None:
            await deliver(message)
        received.append(message.offset)

    consumer.callback = on_message
    epoch = consumer._seek_epoch  # as the fetch loop takes it, before the fetch
    consumer.loop.run_until_complete(consumer._hand_over(_fetched(messages), epoch))  # the Service's loop
    return received


def _ack(consumer: Any, messages: list[Any]) -> None:
    for message in messages:
        consumer.ack(message)


def test_one_commit_gets_past_every_transaction_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two-event transactions (offsets 0, 1, marker 2, 3, 4, marker 5…), read after a seek to 0 and
    acknowledged: the next commit covers all of them (Faust's gaps listed the record after each
    marker twice, and a commit got past one transaction only)."""
    _, consumer = _consumer(monkeypatch)
    tp = _message(0).tp
    consumer._next_offset[tp] = consumer._commit_floor[tp] = 0
    messages = [_message(offset) for offset in range(60) if offset % 3 != 2]
    assert _hand_over(consumer, messages) == [m.offset for m in messages]
    _ack(consumer, messages)
    assert consumer._new_offset(tp) == 59
    assert not consumer._acked[tp]


def test_a_marker_at_the_committed_offset_is_a_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart at committed offset 10, where a transaction marker sits, the first event is
    11: the commit gets past the marker (and does not wait for offset 10 forever)."""
    _, consumer = _consumer(monkeypatch)
    tp = _message(0).tp
    consumer._next_offset[tp] = consumer._commit_floor[tp] = 10
    messages = [_message(11), _message(12)]
    _hand_over(consumer, messages)
    _ack(consumer, messages)
    assert consumer._new_offset(tp) == 13


def test_an_unacknowledged_event_at_the_committed_offset_holds_the_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust accepted a run of acknowledged offsets starting one past the committed offset, so an
    event at the committed offset that was handed over but never processed was skipped for good."""
    _, consumer = _consumer(monkeypatch)
    tp = _message(0).tp
    consumer._next_offset[tp] = consumer._commit_floor[tp] = 10
    messages = [_message(offset) for offset in (10, 11, 12)]
    _hand_over(consumer, messages)
    _ack(consumer, messages[1:])
    assert consumer._new_offset(tp) is None
    _ack(consumer, messages[:1])
    assert consumer._new_offset(tp) == 13


def test_the_commit_floor_survives_a_revocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust forgets the committed offset when partitions are revoked, and then committed any run;
    the floor stays until the next seek sets it from the broker."""
    app, consumer = _consumer(monkeypatch)
    tp = _message(0).tp
    consumer._next_offset[tp] = consumer._commit_floor[tp] = 10
    consumer._committed_offset[tp] = 10
    consumer.loop.run_until_complete(consumer.on_partitions_revoked({tp}))
    assert consumer._committed_offset[tp] is None
    assert tp not in consumer._next_offset
    app.flow_control.resume()  # as after the next assignment
    _ack(consumer, [_message(12), _message(13)])
    assert consumer._new_offset(tp) is None


@pytest.mark.parametrize("case", ["older generation", "flow suspended"])
def test_events_skipped_for_a_rebalance_are_not_acknowledged(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Faust's streams acknowledge the events they skip because of a rebalance: their offsets
    would be committed although they were never processed."""
    app, consumer = _consumer(monkeypatch)
    tp = _message(0).tp
    consumer._commit_floor[tp] = 10
    message = _message(10, generation=0 if case == "older generation" else 1)
    consumer._unacked_messages.add(message)
    if case == "flow suspended":
        app.flow_control.suspend()
    assert consumer.ack(message) is False
    assert message.acked
    assert message not in consumer._unacked_messages  # so the rebalance's wait for the streams ends
    assert consumer._new_offset(tp) is None
    app.flow_control.resume()
    processed = _message(10)
    assert consumer.ack(processed) is True
    assert consumer._new_offset(tp) == 11


def test_a_fetch_across_a_seek_is_dropped_and_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust seeks with the flow running, and aiokafka one partition after another: a fetch under
    way returns records from before or after the seek. Faust's loop handed them over and took the
    jump back to the committed offset for a gap, and then committed past events it never processed."""
    _, consumer = _consumer(monkeypatch)
    tp = _message(0).tp
    consumer._next_offset[tp] = consumer._commit_floor[tp] = 10
    sought: list[tuple[Any, int]] = []

    async def seek_partition(partition: Any, offset: int) -> None:
        sought.append((partition, offset))

    monkeypatch.setattr(consumer, "_seek", seek_partition)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})

    async def seek_meanwhile(message: Any) -> None:
        if message.offset == 15:
            consumer._seek_epoch += 1  # what perform_seek does when it begins

    # 15 was being handed over when the seek began; 16 and 17 come from the same, stale, fetch.
    received = _hand_over(consumer, [_message(offset) for offset in range(10, 18)], deliver=seek_meanwhile)
    assert received == [10, 11, 12, 13, 14, 15]
    assert consumer._next_offset[tp] == 15
    assert consumer._reseek == {tp: 15}
    assert not consumer._gap[tp]  # nothing from a stale fetch is taken for a gap
    consumer.loop.run_until_complete(consumer._seek_stale())
    assert sought == [(tp, 15)]
    assert consumer._reseek == {}
    assert _hand_over(consumer, [_message(offset) for offset in (15, 16, 17)]) == [15, 16, 17]
    _ack(consumer, [_message(offset) for offset in range(10, 18)])
    assert consumer._new_offset(tp) == 18


def test_a_cancelled_hand_over_does_not_count_as_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebalance suspends the flow while an event is being handed over: the event was not
    delivered, so it is not marked read and a re-fetch hands it over."""
    _, consumer = _consumer(monkeypatch)
    tp = _message(0).tp
    consumer._next_offset[tp] = consumer._commit_floor[tp] = 10

    async def suspended(message: Any) -> None:
        consumer.stop_flow()
        await asyncio.sleep(10)

    assert _hand_over(consumer, [_message(10)], deliver=suspended) == []
    assert consumer._next_offset[tp] == 10
    consumer.resume_flow()
    assert _hand_over(consumer, [_message(9), _message(10)]) == [10]  # 9: handed over before


def test_a_partition_without_a_committed_offset_commits_from_its_first_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, consumer = _consumer(monkeypatch)
    tp = _message(0).tp
    messages = [_message(offset) for offset in (4, 5, 7)]
    _hand_over(consumer, messages)
    assert consumer._commit_floor[tp] == 4
    _ack(consumer, messages[1:])
    assert consumer._new_offset(tp) is None
    _ack(consumer, messages[:1])
    assert consumer._new_offset(tp) == 8


def test_table_changelog_records_are_never_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust re-reads a changelog from an earlier offset when its recovery restarts; its records
    (applied idempotently) are handed over again, and no position or gap is kept for them."""
    app, consumer = _consumer(monkeypatch)
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: topic != "changelog")
    records = [_message(offset, topic="changelog") for offset in (5, 7)]
    assert _hand_over(consumer, records) == [5, 7]
    assert _hand_over(consumer, records) == [5, 7]
    tp = records[0].tp
    assert tp not in consumer._next_offset
    assert not consumer._gap[tp]
