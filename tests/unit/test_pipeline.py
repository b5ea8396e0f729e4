"""The pipeline package: supervisor restarts and stops, catch-up arithmetic, dead-letter attribution."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pacs_sync.lsn import Lsn
from pacs_sync.metrics import SupervisorMetrics
from pipeline.catchup import behind, lsn_reached, progress
from pipeline.display import describe
from pipeline.settings import PipelineSettings
from pipeline.supervisor import StageCommand, Supervisor, pipeline_stages
from pipeline.sync import EntityProgress, dead_letter_of


def settings(tmp_path: Path, **overrides: object) -> PipelineSettings:
    values: dict[str, object] = {
        "state_dir": tmp_path,
        "restart_backoff_initial_s": 0.2,
        "restart_backoff_max_s": 0.8,
        "healthy_after_s": 30.0,
        "stop_grace_s": 1.0,
        **overrides,
    }
    return PipelineSettings(**values)  # type: ignore[arg-type]


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_a_crashed_stage_is_restarted_with_a_doubling_backoff(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    crashing = StageCommand("crashy", python("import sys; print('boom', flush=True); sys.exit(3)"))
    steady = StageCommand("steady", python("import time; time.sleep(60)"))
    supervisor = Supervisor(settings(tmp_path), [crashing, steady], SupervisorMetrics.create(registry))
    supervisor.start()
    try:
        restart_times: list[float] = []
        deadline = time.monotonic() + 10
        while len(restart_times) < 3 and time.monotonic() < deadline:
            if "crashy" in supervisor.check():
                restart_times.append(time.monotonic())
            time.sleep(0.02)
        assert len(restart_times) == 3
        gaps = [b - a for a, b in itertools.pairwise(restart_times)]
        assert gaps[1] > gaps[0], f"backoff did not grow: {gaps}"
        assert supervisor.restarts() == {"crashy": 3, "steady": 0}
        assert registry.get_sample_value("pacs_sync_stage_restarts_total", {"stage": "crashy"}) == 3
        assert registry.get_sample_value("pacs_sync_stage_up", {"stage": "steady"}) == 1
        assert "boom" in supervisor.log_file("crashy").read_text()
    finally:
        supervisor.stop()
    assert registry.get_sample_value("pacs_sync_stage_up", {"stage": "steady"}) == 0


def test_stop_terminates_every_stage_and_kills_one_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = StageCommand(
        "stubborn",
        python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"),
    )
    polite = StageCommand("polite", python("import time; time.sleep(60)"))
    supervisor = Supervisor(
        settings(tmp_path), [stubborn, polite], SupervisorMetrics.create(CollectorRegistry())
    )
    supervisor.start()
    time.sleep(0.5)  # let the stubborn one install its handler
    pids = supervisor.pids()
    started = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started < 5
    for pid in pids.values():
        assert pid is not None
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
        )


def test_pipeline_stages_give_each_worker_its_own_metrics_port(tmp_path: Path) -> None:
    stages = pipeline_stages(settings(tmp_path, processor_workers=3))
    names = [s.name for s in stages]
    assert names == ["producer", "processor", "processor-2", "processor-3", "sink"]
    ports = [s.env["PACS_METRICS_PORT"] for s in stages]
    assert ports == ["9101", "9102", "9112", "9122", "9103"]
    assert all(s.argv[1:3] == ("-m", "pacs_sync") for s in stages)


def test_behind_and_progress() -> None:
    ends = {("t", 0): 10, ("t", 1): 5, ("t", 2): 0}
    assert behind({("t", 0): 10, ("t", 1): 3}, ends) == {("t", 1): 2}
    assert behind({}, {("t", 0): 0}) == {}
    assert progress({("t", 0): 4}, {("t", 0): 7}, {("t", 0): 10}) == pytest.approx(0.5)
    assert progress({}, {}, {}) == 1.0
    assert progress({("t", 0): 10}, {}, {("t", 0): 10}) == 1.0  # nothing new to do


def test_lsn_reached_needs_a_complete_transaction_at_or_past_the_target() -> None:
    target = Lsn.parse("0000002a:00000100:0001")
    assert lsn_reached(None, False, None)
    assert not lsn_reached(None, False, target)
    assert not lsn_reached(target, False, target)
    assert lsn_reached(target, True, target)
    assert not lsn_reached(target.decrement(), True, target)


def test_dead_letters_are_attributed_to_their_entity() -> None:
    change, clean = "pacs.pacs.dbo.PropertyOwner", "terrafusion.owners"
    assert dead_letter_of(change, change, clean)
    assert dead_letter_of(clean, change, clean)
    assert dead_letter_of(
        f"pacs-sync-processors-owners-{change}-pacs-sync-processors-by-property-repartition", change, clean
    )
    # The Property change topic's name is a prefix of PropertyOwner's: it must not match it.
    assert not dead_letter_of(change, "pacs.pacs.dbo.Property", "terrafusion.properties")


def test_progress_line_names_the_entity_and_both_shares() -> None:
    line = describe(EntityProgress("owners", published=True, processed=0.5, written=0.25))
    assert line.startswith("owners")
    assert "50.0%" in line
    assert "25.0%" in line


def test_a_failure_after_a_stage_started_stops_the_started_stages(tmp_path: Path) -> None:
    """A later stage that cannot start (its log cannot be opened) must not leave the first one running."""
    import threading

    from pacs_sync.errors import ConfigurationError

    first = StageCommand("first", python("import time; time.sleep(60)"))
    second = StageCommand("second", python("import time; time.sleep(60)"))
    supervisor = Supervisor(
        settings(tmp_path), [first, second], SupervisorMetrics.create(CollectorRegistry())
    )
    supervisor.log_file("second").mkdir(parents=True)  # opening it as a file fails
    started: list[int] = []
    spawn = supervisor._spawn

    def record(running: object) -> None:
        spawn(running)  # type: ignore[arg-type]
        started.extend(pid for pid in supervisor.pids().values() if pid is not None)

    supervisor._spawn = record  # type: ignore[method-assign]
    with pytest.raises(ConfigurationError, match=r"second\.log"):
        supervisor.run_until(threading.Event())
    assert started, "the first stage never started"
    for pid in started:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
        ), "a started stage was left running"


def test_kafka_positions_ask_again_while_the_cluster_settles(monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import KafkaError, KafkaException

    from pacs_sync.errors import ErrorCode, FatalError, RetriableError
    from pipeline import catchup

    slept: list[float] = []
    monkeypatch.setattr(catchup.time, "sleep", slept.append)
    kafka = catchup.KafkaPositions("127.0.0.1:1", retry_s=5.0)
    try:
        answers = iter([KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION, None])

        def settling() -> str:
            code = next(answers)
            if code is not None:
                raise KafkaException(KafkaError(code))
            return "ends"

        assert kafka._retrying("list offsets", settling) == "ends"
        assert slept == [0.2, 0.4]

        def no_leader() -> str:
            raise KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE))

        with pytest.raises(RetriableError, match="still failing") as caught:
            kafka._retrying("list offsets", no_leader)
        assert caught.value.code is ErrorCode.KAFKA_DELIVERY_FAILED

        def unreachable() -> str:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

        with pytest.raises(RetriableError) as down:
            kafka._retrying("list offsets", unreachable)
        assert down.value.code is ErrorCode.CONNECTION_UNAVAILABLE

        def denied() -> str:
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

        slept.clear()
        with pytest.raises(FatalError, match="PACS-010"):
            kafka._retrying("list offsets", denied)
        assert slept == []
    finally:
        kafka.close()


def test_only_settling_kafka_errors_are_transient() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from pipeline.catchup import kafka_error_is_transient

    assert kafka_error_is_transient(KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE)))
    assert kafka_error_is_transient(KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)))
    assert kafka_error_is_transient(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert not kafka_error_is_transient(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not kafka_error_is_transient(ValueError("not Kafka"))
