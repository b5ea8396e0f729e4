"""The PACS source unreachable for a while during churn: the producer retries, says PACS-001, and
resumes without loss when the source comes back.

The source and the target share one PostgreSQL server here, so the producer reaches the source
through a TCP forwarder (:mod:`tests.faults.forwarder`) and the test closes it: connections are cut
and the port refuses new ones, for ``OUTAGE_S`` seconds. The churn and the emulated capture Agent
keep writing to the source meanwhile (they connect directly), so there is a backlog to catch up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import FaultSettings
from tests.faults.forwarder import TcpForwarder
from tests.faults.harness import FaultPipeline, free_port, scrape, wait_for

OUTAGE_S = 10.0
ERRORS = 'pacs_sync_producer_errors_total{code="PACS-001"}'
SOURCE_UP = "pacs_sync_producer_source_up"


def events_published(metrics: dict[str, float]) -> float:
    """Change events the producer published, every entity and op."""
    return sum(v for k, v in metrics.items() if k.startswith("pacs_sync_producer_events_total{"))


@pytest.mark.timeout(600)
def test_source_unreachable_is_retried_reported_and_resumed_without_loss(
    fault_pipeline: Callable[..., FaultPipeline], fault_settings: FaultSettings
) -> None:
    p = fault_pipeline("srcdown")
    p.init_source("300", seed=3)
    p.prepare_target()
    forwarder = TcpForwarder("127.0.0.1", p.stack.settings.stack_postgres_port)
    forwarder.open()
    metrics_port = free_port()
    try:
        p.start({"PACS_DB_PORT": str(forwarder.port), "PACS_PRODUCER_METRICS_PORT": str(metrics_port)})
        p.settle(timeout=300)
        p.start_churn(fault_settings.churn_rate, seed=fault_settings.seed)
        wait_for(lambda: events_published(scrape(metrics_port)) > 0, timeout=60, what="streamed events")
        producer_pid = p.stage_pids()["producer"]
        log_before = len(p.read_log("producer"))
        before = scrape(metrics_port)

        cut = forwarder.close()
        closed_at = time.monotonic()
        assert cut >= 1, "the producer had no open connection through the forwarder"
        during = wait_for(
            lambda: p.read_log("producer")[log_before:].count("PACS-001") >= 2 and scrape(metrics_port),
            timeout=OUTAGE_S * 3,
            what="the producer to report PACS-001 while the source is down",
        )
        remaining = OUTAGE_S - (time.monotonic() - closed_at)
        if remaining > 0:
            time.sleep(remaining)
        pids_during = p.stage_pids()
        log_during = p.read_log("producer")[log_before:]
        changes_during = p.change_rows()
        forwarder.open()
        reopened_at = time.monotonic()

        published = events_published(scrape(metrics_port))
        wait_for(
            lambda: events_published(scrape(metrics_port)) > published,
            timeout=120,
            what="the producer to publish again after the source came back",
        )
        resumed_after = time.monotonic() - reopened_at
        p.stop_churn()
        p.settle(timeout=300)
    finally:
        forwarder.close()

    lines = [line for line in log_during.splitlines() if "PACS-" in line]
    p.note(
        "source-down",
        outage_s=OUTAGE_S,
        connections_cut=cut,
        pacs_001_lines=sum("PACS-001" in line for line in lines),
        first_lines=lines[:4],
        errors_metric={"before": before.get(ERRORS, 0.0), "during": during.get(ERRORS, 0.0)},
        change_rows_at_reopen=changes_during,
        producer_pid={"before": producer_pid, "during": pids_during.get("producer")},
        resumed_after_s=round(resumed_after, 2),
        source_down_metric=[k for k in during if "source" in k and "up" in k],
    )
    p.check_nothing_lost_nothing_twice()
    assert any("PACS-001" in line and "cannot reach" in line for line in lines), lines[:10]
    assert changes_during > 0


@pytest.mark.timeout(300)
def test_a_lost_source_connection_is_retried_in_process_with_pacs_001(
    fault_pipeline: Callable[..., FaultPipeline],
) -> None:
    """The producer alone (no supervisor to restart it): it must survive the outage and count it."""
    p = fault_pipeline("srcretry")
    p.init_source("50", seed=5)
    forwarder = TcpForwarder("127.0.0.1", p.stack.settings.stack_postgres_port)
    forwarder.open()
    metrics_port = free_port()
    producer = p.popen(
        "producer",
        log_name="producer-alone.log",
        env={"PACS_DB_PORT": str(forwarder.port), "PACS_METRICS_PORT": str(metrics_port)},
    )
    try:
        wait_for(lambda: events_published(scrape(metrics_port)) > 0, timeout=120, what="the snapshot")
        time.sleep(1.0)  # idle polls from now on, every PACS_POLL_INTERVAL_S
        forwarder.close()
        time.sleep(OUTAGE_S / 2)
        alive_during = producer.poll() is None
        metrics_during = scrape(metrics_port)
        forwarder.open()
        published = events_published(metrics_during)
        p.source_sql(
            (
                "UPDATE dbo.property SET city = ? "
                "WHERE propertyid = (SELECT min(propertyid) FROM dbo.property)",
                ("Prosser",),
            )
        )
        p.scan()
        metrics_after: dict[str, float] = {}
        if alive_during:
            metrics_after = wait_for(
                lambda: (m := scrape(metrics_port)) and events_published(m) > published and m,
                timeout=120,
                what="the producer to publish the change made after the outage",
            )
    finally:
        forwarder.close()
        if producer.poll() is None:
            producer.terminate()
        producer.wait(timeout=60)
    log = (p.log_dir / "producer-alone.log").read_text(errors="replace")
    p.note(
        "source-retry",
        alive_during_outage=alive_during,
        exit_code=producer.returncode,
        errors_metric=metrics_during.get(ERRORS, 0.0),
        source_up={"during": metrics_during.get(SOURCE_UP), "after": metrics_after.get(SOURCE_UP)},
        codes=sorted({code for code in ("PACS-001", "PACS-013") if code in log}),
    )
    assert alive_during, f"the producer exited during the outage:\n{log[-1500:]}"
    assert "PACS-013" not in log
    assert "PACS-001" in log
    assert metrics_during.get(ERRORS, 0.0) > 0
    assert metrics_during.get(SOURCE_UP) == 0.0
    assert metrics_after.get(SOURCE_UP) == 1.0
