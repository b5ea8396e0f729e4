"""The producer's poll loop against a fake source: the order of its reads, and its retries."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tenacity import wait_none

from pacs_sync.errors import ErrorCode, FatalError
from pacs_sync.lsn import LSN_SIZE, Lsn, SourcePosition
from pacs_sync.metrics import ProducerMetrics
from producer.errors import KafkaPublishError, SourceUnavailableError
from producer.offsets import SourceOffset
from producer.runner import ProducerRunner
from producer.settings import ProducerSettings
from schemas.codec import AvroCodec, SchemaRegistry


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def lsn(number: int) -> Lsn:
    return Lsn(number.to_bytes(LSN_SIZE, "big"))


class CaptureLog:
    """A capture job's output: (LSN, real transaction?) entries, committed one ``capture()`` at a time."""

    def __init__(self, *entries: tuple[int, bool]) -> None:
        self.entries = list(entries)
        self.committed = 0

    def capture(self) -> None:
        self.committed += 1

    def visible(self) -> list[tuple[int, bool]]:
        return self.entries[: self.committed]


class RacingSource:
    """A CdcSource stand-in whose capture job commits right after the newest transaction is read."""

    def __init__(self, log: CaptureLog, *, capture_after_newest: bool) -> None:
        self.log = log
        self.capture_after_newest = capture_after_newest
        self.reads: list[str] = []

    def max_lsn(self) -> Lsn | None:
        self.reads.append("max_lsn")
        return max((lsn(n) for n, _ in self.log.visible()), default=None)

    def max_transaction_lsn(self) -> Lsn | None:
        self.reads.append("max_transaction_lsn")
        newest = max((lsn(n) for n, real in self.log.visible() if real), default=None)
        if self.capture_after_newest:
            self.capture_after_newest = False
            self.log.capture()  # the race: a capture commits between the poll's statements
        return newest

    def end_read(self) -> None:
        pass

    def close(self) -> None:
        pass


def runner_at(position: SourcePosition, source: Any, factory: Any = None) -> ProducerRunner:
    settings = ProducerSettings(db_name="pacs", metrics_port=0)
    runner = ProducerRunner(
        settings,
        AvroCodec(SchemaRegistry.from_package()),
        ProducerMetrics.create(CollectorRegistry()),
        source_factory=factory or (lambda _settings: source),
    )
    runner.retry_wait = wait_none()
    runner._source = source
    runner.offset = SourceOffset(position=position, snapshot_completed=True, snapshot_lsn=position.commit_lsn)
    runner._committed_offset = runner.offset
    runner._last_heartbeat = time.monotonic()  # no heartbeat: no publisher needed
    return runner


def test_an_idle_poll_keeps_a_transaction_captured_between_its_reads() -> None:
    log = CaptureLog((10, True), (11, False), (12, True))
    log.committed = 2  # transaction 10 published, an idle dummy row 11; 12 not captured yet
    source = RacingSource(log, capture_after_newest=True)
    runner = runner_at(SourcePosition(lsn(10)), source)

    assert runner.poll() is False

    assert source.reads[:2] == ["max_lsn", "max_transaction_lsn"]
    assert runner.offset.position == SourcePosition(lsn(11))  # the dummy row only, not past 12


def test_an_idle_poll_follows_the_high_water_mark() -> None:
    log = CaptureLog((10, True), (11, False), (13, False))
    log.committed = 3
    runner = runner_at(SourcePosition(lsn(10)), RacingSource(log, capture_after_newest=False))

    assert runner.poll() is False

    assert runner.offset.position == SourcePosition(lsn(13))


# ---- in-process retries (RELIABILITY.md problem 2) ----


class LostSource(RacingSource):
    """A source whose connection was cut: every statement fails as the adapter reports it."""

    def __init__(self) -> None:
        super().__init__(CaptureLog(), capture_after_newest=False)
        self.closed = False

    def max_lsn(self) -> Lsn | None:
        raise SourceUnavailableError("cannot reach PACS db: network error")

    def close(self) -> None:
        self.closed = True


def errors(runner: ProducerRunner, code: str) -> float:
    return float(runner.metrics.errors.labels(code)._value.get())


def source_up(runner: ProducerRunner) -> float:
    return float(runner.metrics.source_up._value.get())


def test_a_lost_source_is_reconnected_and_every_retry_counted() -> None:
    log = CaptureLog((10, True), (11, False))
    log.committed = 2
    healthy = RacingSource(log, capture_after_newest=False)
    refusals = 3
    opened: list[RacingSource] = []

    def factory(_settings: ProducerSettings) -> RacingSource:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise SourceUnavailableError("cannot reach PACS db: Can't create a connection")
        opened.append(healthy)
        return healthy

    lost = LostSource()
    runner = runner_at(SourcePosition(lsn(10)), lost, factory)
    seen_down: list[float] = []
    original = runner._before_retry

    def spy(state: Any) -> None:
        original(state)
        seen_down.append(source_up(runner))

    runner._before_retry = spy  # type: ignore[method-assign]

    assert runner._retry(threading.Event(), runner._poll_step) is False

    assert lost.closed
    assert opened == [healthy]
    assert errors(runner, ErrorCode.CONNECTION_UNAVAILABLE.value) == 4  # the cut, then 3 refusals
    assert seen_down == [0.0] * 4
    assert source_up(runner) == 1.0
    assert runner.offset.position == SourcePosition(lsn(11))


def test_a_retry_resumes_from_the_last_committed_offset() -> None:
    committed = SourceOffset(position=SourcePosition(lsn(10)), snapshot_completed=True)
    runner = runner_at(SourcePosition(lsn(10)), RacingSource(CaptureLog(), capture_after_newest=False))
    runner._committed_offset = committed
    attempts: list[SourceOffset] = []

    def window() -> bool:
        attempts.append(runner.offset)
        if len(attempts) == 1:
            # the window moved the offset on, then its Kafka commit failed (the events are aborted)
            runner.offset = runner.offset.advanced(SourcePosition(lsn(20)))
            raise KafkaPublishError("Kafka transaction aborted")
        return True

    assert runner._retry(threading.Event(), window) is True
    assert attempts[1] == committed
    assert errors(runner, ErrorCode.KAFKA_DELIVERY_FAILED.value) == 1


def test_a_stop_during_the_backoff_ends_the_retries_quietly() -> None:
    runner = runner_at(SourcePosition(lsn(10)), LostSource())
    stop = threading.Event()
    calls = 0

    def failing() -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        raise SourceUnavailableError("cannot reach PACS db")

    assert runner._retry(stop, failing) is None
    assert calls == 3


def test_start_up_gives_up_after_its_limit_and_fatal_errors_are_not_retried() -> None:
    runner = runner_at(SourcePosition(lsn(10)), LostSource())

    def unreachable() -> None:
        raise SourceUnavailableError("cannot reach PACS db")

    with pytest.raises(SourceUnavailableError):
        runner._retry(threading.Event(), unreachable, give_up_after=0.05)
    assert errors(runner, ErrorCode.CONNECTION_UNAVAILABLE.value) >= 1

    calls = 0

    def fatal() -> None:
        nonlocal calls
        calls += 1
        raise FatalError("lost changes", code=ErrorCode.CDC_RETENTION_EXCEEDED)

    with pytest.raises(FatalError):
        runner._retry(threading.Event(), fatal)
    assert calls == 1
