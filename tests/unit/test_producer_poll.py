"""The producer's poll loop against a fake source: the order of its reads, and its retries."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pacs_sync.lsn import LSN_SIZE, Lsn, SourcePosition
from pacs_sync.metrics import ProducerMetrics
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


def runner_at(position: SourcePosition, source: Any) -> ProducerRunner:
    settings = ProducerSettings(db_name="pacs", metrics_port=0)
    runner = ProducerRunner(
        settings, AvroCodec(SchemaRegistry.from_package()), ProducerMetrics.create(CollectorRegistry())
    )
    runner._source = source
    runner.offset = SourceOffset(position=position, snapshot_completed=True, snapshot_lsn=position.commit_lsn)
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
