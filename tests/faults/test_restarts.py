"""Restarts of the shared services while the pipeline works: the Kafka broker during churn, and
PostgreSQL (the target, which here also holds the source) while the sink is inside a batch.

These disturb everyone on the stack, so each outage is a few seconds and the service is always
started again in a ``finally``. Each test shows the fault happened where it matters: the broker did
not answer while the producer process ran (and the producer's log shows the failed connections); the
sink's session was inside a transaction when PostgreSQL went down (and the sink reported the lost
connection and retried from the offsets PostgreSQL had committed).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import FaultSettings
from tests.faults.harness import FaultPipeline, process_alive, wait_for

BROKER_DOWN_S = 4.0


def broker_errors(log: str) -> list[str]:
    """librdkafka's and the stage's own lines about an unreachable broker."""
    needles = ("Connect to ipv4#", "Connection refused", "brokers are down", "PACS-010", "transport failure")
    return [line for line in log.splitlines() if any(n in line for n in needles)]


@pytest.mark.timeout(600)
def test_a_broker_restart_during_churn_loses_nothing(
    fault_pipeline: Callable[..., FaultPipeline], fault_settings: FaultSettings
) -> None:
    p = fault_pipeline("broker")
    p.init_source("300", seed=21)
    p.prepare_target()
    p.start()
    p.settle(timeout=300)
    p.start_churn(fault_settings.churn_rate, seed=fault_settings.seed)
    time.sleep(3)
    kafka = p.stack.kafka
    before = p.stage_pids()
    log_mark = len(p.read_log("producer"))
    published = sum(p.offsets(p.change_topics(), committed_only=True).values())
    stopped_at = time.monotonic()
    try:
        assert kafka.stop(), "the broker was not running"
        stopped_s = time.monotonic() - stopped_at
        down_at = time.monotonic()
        answered = kafka.ping(timeout_s=1.0)
        time.sleep(BROKER_DOWN_S)
        alive_while_down = {s: process_alive(pid) for s, pid in before.items()}
    finally:
        restarted = kafka.start()
    down_s = time.monotonic() - down_at
    wait_for(
        lambda: sum(p.offsets(p.change_topics(), committed_only=True).values()) > published,
        timeout=180,
        what="change events committed after the restart",
    )
    time.sleep(3)
    p.stop_churn()
    p.settle(timeout=300)
    errors = broker_errors(p.read_log("producer")[log_mark:])
    p.note(
        "broker-restart",
        stop_took_s=round(stopped_s, 1),
        broker_unreachable_s=round(down_s, 1),
        answered_while_down=answered,
        stages_alive_while_down=alive_while_down,
        producer_errors=len(errors),
        first_errors=[e[-160:] for e in errors[:3]],
        restarted=restarted,
        pids={"before": before, "after": p.stage_pids()},
    )
    assert answered is None
    assert restarted
    assert alive_while_down["producer"], "the producer did not run while the broker was down"
    assert errors, "the producer's log does not show the unreachable broker"
    p.check_nothing_lost_nothing_twice()


@pytest.mark.timeout(600)
def test_a_postgres_restart_during_a_sink_batch_loses_nothing(
    fault_pipeline: Callable[..., FaultPipeline], fault_settings: FaultSettings
) -> None:
    p = fault_pipeline("pgrestart")
    p.init_source("300", seed=22)
    p.prepare_target()
    p.start()
    p.settle(timeout=300)
    p.start_churn(fault_settings.churn_rate * 2, seed=fault_settings.seed)
    postgres = p.stack.postgres
    before = p.stage_pids()
    log_mark = len(p.read_log("sink"))
    sessions = wait_for(p.sink_sessions, timeout=60, interval=0.01, what="the sink inside a transaction")
    try:
        stopped = postgres.stop()
        down_at = time.monotonic()
        answered = postgres.ping()
    finally:
        started = postgres.start()
    down_s = time.monotonic() - down_at
    applied = p.audit().applied
    wait_for(lambda: p.audit().applied > applied, timeout=180, what="the sink to write again")
    time.sleep(3)
    p.stop_churn()
    p.settle(timeout=300)
    sink_log = p.read_log("sink")[log_mark:]
    reported = [line for line in sink_log.splitlines() if "PACS-0" in line]
    after = p.stage_pids()
    p.note(
        "postgres-restart",
        sink_sessions_in_transaction=[state for _, state, _ in sessions],
        postgres_down_s=round(down_s, 1),
        answered_while_down=answered,
        sink_reported=[line[-200:] for line in reported[:3]],
        # Every form of the cut connection (asyncpg's InternalClientError "cannot switch to state"
        # included) is PACS-001: the sink retries in-process; the supervisor must not be needed.
        # When the batch sampled in its transaction commits before the server goes down, the sink
        # meets only idle pooled connections, which the pool replaces without an error to report.
        sink_recovered="retried in-process" if after.get("sink") == before["sink"] else "exited, restarted",
        pids={"before": before, "after": after},
    )
    assert stopped
    assert started
    assert answered is None
    assert all("PACS-001" in line for line in reported), reported
    assert not [line for line in reported if "PACS-013" in line], "the lost connection was fatal"
    assert after.get("sink") == before["sink"], "the sink exited instead of retrying in-process"
    p.check_nothing_lost_nothing_twice()
