"""CDC retention exceeded: changes the producer had not read are removed by the cleanup job.

The emulator's clock is moved forward and its cleanup job run while the producer cannot read: either
it is not running ("detected on restart"), or it runs but is frozen with SIGSTOP and thawed after the
cleanup ("detected by a running poll", the same process, no restart). With ``PACS_SNAPSHOT_MODE``
``initial`` the producer stops with PACS-006 naming the capture instances; with ``when_needed`` it
re-snapshots the affected tables, streams on, and verify passes.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import FaultPipeline, process_alive, wait_for

DAYS = 24 * 3600


def proc_state(pid: int) -> str:
    """The one-letter state of a process (T = stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def frozen(pid: int) -> str:
    """Wait until SIGSTOP has taken effect (it is delivered asynchronously); the state, T."""
    return str(wait_for(lambda: proc_state(pid) == "T" and "T", timeout=10, interval=0.01, what="SIGSTOP"))


MIN_LSN = "SELECT encode(sys.fn_cdc_get_min_lsn('dbo_Property'), 'hex')"
AFTER_THE_GAP = (
    "UPDATE dbo.property SET legaldescription = ? "
    "WHERE propertyid = (SELECT max(propertyid) FROM dbo.property)"
)
RENAME_CITIES = (
    "UPDATE dbo.property SET city = ? "
    "WHERE propertyid IN (SELECT propertyid FROM dbo.property ORDER BY propertyid LIMIT 25)"
)
REVALUE = (
    "UPDATE dbo.propertyvalue SET assessedvalue = assessedvalue + 1000, marketvalue = marketvalue + 1000, "
    "improvementvalue = improvementvalue + 1000 WHERE propertyvalueid IN "
    "(SELECT propertyvalueid FROM dbo.propertyvalue ORDER BY propertyvalueid DESC LIMIT 40)"
)
COPY_PROPERTIES = (
    "INSERT INTO dbo.property SELECT propertyid + ?, parcelnumber, address, city, state, zipcode, "
    "legaldescription, acreage, yearbuilt FROM dbo.property WHERE propertyid IN "
    "(SELECT propertyid FROM dbo.property WHERE propertyid < ? ORDER BY propertyid LIMIT 5)"
)
COPY_VALUATIONS = (
    "INSERT INTO dbo.propertyvalue SELECT propertyvalueid + ?, propertyid + ?, taxyear, assessedvalue, "
    "marketvalue, landvalue, improvementvalue FROM dbo.propertyvalue "
    "WHERE propertyid + ? IN (SELECT propertyid FROM dbo.property)"
)


def lose_changes(p: FaultPipeline, changes: Callable[[], None]) -> dict[str, object]:
    """Make changes, capture them, then age them past retention and run cleanup: they are gone."""
    low_before = p.source_rows(MIN_LSN)[0][0]
    changes()
    p.scan()
    with p.admin() as admin:
        admin.advance_clock(5 * DAYS)
    p.source_sql((AFTER_THE_GAP, ("after the gap",)))
    p.scan()
    with p.admin() as admin:
        admin.cleanup()
    low_after = p.source_rows(MIN_LSN)[0][0]
    assert low_after != low_before, "cleanup did not move the capture instance's low end"
    return {"min_lsn_before": low_before, "min_lsn_after": low_after}


def updates_and_inserts(p: FaultPipeline, tag: str, offset: int) -> Callable[[], None]:
    """Changes without deletes or key changes: updates of existing rows and new rows copied from old."""

    def apply() -> None:
        p.source_sql(
            (RENAME_CITIES, (f"Lost {tag}",)),
            (REVALUE, ()),
            (COPY_PROPERTIES, (offset, 900_000)),
            (COPY_VALUATIONS, (offset, offset, offset)),
        )

    return apply


@pytest.mark.timeout(600)
def test_retention_loss_stops_the_producer_with_pacs_006_on_restart_and_in_a_running_poll(
    fault_pipeline: Callable[..., FaultPipeline],
) -> None:
    p = fault_pipeline("retinit", {"PACS_SNAPSHOT_MODE": "initial"})
    p.init_source("100", seed=8)
    with p.admin() as admin:
        admin.configure_jobs(idle_heartbeat_s=3600)  # no idle rows: only real commits move the LSNs

    # 1. Not running while the changes are lost: the restart says so.
    restarted = {"PACS_TOPIC_PREFIX": "pacs"}
    p.cli("producer", "--until-caught-up", env=restarted, timeout=300)
    lost = lose_changes(p, updates_and_inserts(p, "restart", 900_000))
    again = p.cli("producer", "--until-caught-up", env=restarted, check=False, timeout=300)
    p.note(
        "retention-on-restart",
        exit_code=again.returncode,
        lost=lost,
        error=again.stderr.strip().splitlines()[-1:],
    )
    assert again.returncode == 1
    assert "PACS-006" in again.stderr
    assert "dbo_Property" in again.stderr
    assert "min LSN" in again.stderr

    # 2. Running, but frozen while the changes are lost: its next poll says so (same process).
    running = {"PACS_TOPIC_PREFIX": "pacsrun", "PACS_METRICS_PORT": "0"}
    producer = p.popen("producer", log_name="producer-running.log", env=running)
    try:
        wait_for(
            lambda: "snapshot complete" in (p.log_dir / "producer-running.log").read_text(errors="replace"),
            timeout=120,
            what="the running producer's snapshot",
        )
        time.sleep(1.5)  # streaming (idle polls) from here on
        producer.send_signal(signal.SIGSTOP)
        state = frozen(producer.pid)
        lost = lose_changes(p, updates_and_inserts(p, "running", 950_000))
        producer.send_signal(signal.SIGCONT)
        thawed = time.monotonic()
        code = producer.wait(timeout=120)
        detected_after = time.monotonic() - thawed
    finally:
        if process_alive(producer.pid):
            producer.send_signal(signal.SIGCONT)
            producer.kill()
            producer.wait(timeout=30)
    log = (p.log_dir / "producer-running.log").read_text(errors="replace")
    error_lines = [line for line in log.splitlines() if "PACS-006" in line]
    p.note(
        "retention-in-running-poll",
        state_while_lost=state,
        exit_code=code,
        detected_after_s=round(detected_after, 2),
        lost=lost,
        error=error_lines[-1:],
    )
    assert state == "T"
    assert code == 1
    assert error_lines
    assert "dbo_Property" in error_lines[-1]
    assert "start-up" not in error_lines[-1]  # found by the poll loop, not by a start-up check


def _start_when_needed(p: FaultPipeline, scale: str) -> None:
    p.init_source(scale, seed=9)
    with p.admin() as admin:
        admin.configure_jobs(idle_heartbeat_s=3600)
    p.prepare_target()
    p.start()
    p.settle(timeout=300)


def _re_snapshots(p: FaultPipeline) -> list[str]:
    return [line for line in p.read_log("producer").splitlines() if "re-snapshot of" in line]


@pytest.mark.timeout(900)
def test_when_needed_re_snapshots_the_affected_tables_and_verify_passes(
    fault_pipeline: Callable[..., FaultPipeline],
) -> None:
    p = fault_pipeline("retwn", {"PACS_SNAPSHOT_MODE": "when_needed"})
    _start_when_needed(p, "200")

    # 1. The pipeline is stopped while changes (updates, inserts) are lost.
    p.stop()
    lost = lose_changes(p, updates_and_inserts(p, "stopped", 900_000))
    p.start()
    p.settle(timeout=300)
    after_restart = _re_snapshots(p)
    p.note("when-needed-on-restart", lost=lost, re_snapshots=after_restart)
    p.check_nothing_lost_nothing_twice()

    # 2. The producer runs but is frozen while changes are lost; its poll re-snapshots, no restart.
    producer = p.stage_pids()["producer"]
    time.sleep(1.0)
    subprocess.run(["kill", "-STOP", str(producer)], check=True)
    try:
        state = frozen(producer)
        lost = lose_changes(p, updates_and_inserts(p, "running", 950_000))
    finally:
        subprocess.run(["kill", "-CONT", str(producer)], check=True)
    wait_for(lambda: len(_re_snapshots(p)) > len(after_restart), timeout=120, what="the re-snapshot")
    p.settle(timeout=300)
    in_poll = _re_snapshots(p)[len(after_restart) :]
    p.note("when-needed-in-running-poll", state_while_lost=state, lost=lost, re_snapshots=in_poll)
    assert state == "T"
    assert p.stage_pids()["producer"] == producer, "the producer was restarted; the poll should have coped"
    verified, _ = p.check_nothing_lost_nothing_twice()
    assert after_restart
    assert in_poll
    assert any("Property " in line for line in in_poll)
    assert verified.counts()["properties"] == 200 + 10  # five copies made in each lost window

    # 3. The lost window holds deletes (a parcel merge, a key correction): they must go too.
    p.stop()
    structure = p.source_rows("SELECT max(structureid) FROM dbo.structure")[0][0]
    valuation = p.source_rows("SELECT max(propertyvalueid) FROM dbo.propertyvalue")[0][0]
    lost = lose_changes(
        p,
        lambda: p.source_sql(
            ("DELETE FROM dbo.structure WHERE structureid = ?", (structure,)),
            ("DELETE FROM dbo.propertyvalue WHERE propertyvalueid = ?", (valuation,)),
        ),
    )
    p.start()
    p.settle(timeout=300)
    verified = p.verify()
    extra = {e: r.get("extra", {}).get("keys") for e, r in verified.report.get("entities", {}).items()}
    swept = [line for line in p.read_log("sink").splitlines() if "re-snapshot sweep of" in line]
    p.note(
        "when-needed-with-deletes",
        lost=lost,
        deleted=[structure, valuation],
        verify_exit=verified.exit_code,
        extra=extra,
        sink_sweeps=swept,
    )
    # The re-snapshot's sweeps removed them: the sink says which entities it swept.
    assert any("structures" in line for line in swept), swept
    assert any("valuations" in line for line in swept), swept
    assert verified.exit_code == 0, f"rows deleted in the lost window are still in the target: {extra}"
    p.check_nothing_lost_nothing_twice()
