"""Fault-injection scenarios on the real local stack (marker ``faults``, run by ``make test`` / .ci/run).

Size knobs (environment; the defaults fit the CI time limit):

* ``PACS_FAULT_SEED``: seed of the random kill moments and targets (default: a new one per run,
  printed at the start and in the summary, so a failing run can be replayed);
* ``PACS_FAULT_ROUNDS``: kill -9 rounds of the kill scenario (default 20);
* ``PACS_FAULT_SCALE``: properties in the kill scenario's generated PACS database (default 4000);
* ``PACS_FAULT_CHURN_RATE``: row changes per second while faults are injected (default 150);
* ``PACS_FAULT_KEEP_DATA=1``: a failed scenario's databases and topics are kept for inspection.

Every scenario records what it injected and observed (``FaultPipeline.note``); the session writes
them to ``bench-results/faults.json`` (``faults-partial.json`` without the kill scenario) and prints
the figures at the end.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pacs_sync.stack import LocalStack, StackSettings
from tests.faults.harness import REPO_ROOT, FaultPipeline, new_pipeline


@dataclass(frozen=True)
class FaultSettings:
    """How big the suite is (see the module docstring)."""

    seed: int
    rounds: int
    scale: int
    churn_rate: float


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _settings() -> FaultSettings:
    seed_text = os.environ.get("PACS_FAULT_SEED", "").strip()
    return FaultSettings(
        seed=int(seed_text) if seed_text else random.SystemRandom().randrange(1, 1_000_000),
        rounds=_int_env("PACS_FAULT_ROUNDS", 20),
        scale=_int_env("PACS_FAULT_SCALE", 4000),
        churn_rate=float(os.environ.get("PACS_FAULT_CHURN_RATE", "").strip() or 150),
    )


SETTINGS = _settings()


@dataclass
class SessionRecord:
    """What the fault scenarios did in this session."""

    started: float = field(default_factory=time.time)
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, test: str, outcome: str, seconds: float, events: list[dict[str, Any]]) -> None:
        """Record one scenario."""
        self.tests[test] = {"outcome": outcome, "seconds": round(seconds, 1), "events": events}

    def figures(self) -> dict[str, Any]:
        """The headline figures (RELIABILITY.md quotes them)."""
        events = [e for t in self.tests.values() for e in t["events"]]
        kills = [e for e in events if e["kind"] == "kill"]
        checks = [e for e in events if e["kind"] == "checked"]
        return {
            "seed": SETTINGS.seed,
            "rounds_planned": SETTINGS.rounds,
            "kill_rounds_survived": len(kills),
            "processes_killed": sum(len(e.get("targets", [])) for e in kills),
            "kills_shown_mid_batch": sum(1 for e in kills if e.get("mid_batch")),
            "changes_applied_checked": sum(int(e.get("changes_applied", 0)) for e in checks),
            "changes_applied_twice": sum(int(e.get("applied_twice", 0)) for e in checks),
            "verify_runs_passed": sum(1 for e in checks if e.get("verify_exit") == 0),
            "scenarios": {name: t["outcome"] for name, t in self.tests.items()},
            "seconds": {name: t["seconds"] for name, t in self.tests.items()},
        }


RECORD = SessionRecord()


def _unavailable(what: str) -> None:
    message = f"{what} does not answer; start the local stack with `pacs-sync stack up`"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def fault_settings() -> FaultSettings:
    """The suite's size and seed."""
    return SETTINGS


@pytest.fixture(scope="session")
def stack() -> LocalStack:
    """The shared local stack (skipped, or failed under CI, when it does not answer)."""
    stack = LocalStack(StackSettings.load())
    if stack.kafka.ping(timeout_s=10) is None:
        _unavailable(f"Kafka at {stack.kafka.address}")
    if stack.postgres.ping() is None:
        _unavailable(f"PostgreSQL at {stack.postgres.address}")
    return stack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Keep each phase's report on the item, so fixtures know whether the test failed."""
    report: Any = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def fault_pipeline(
    stack: LocalStack, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaultPipeline]]:
    """Creates isolated pipelines for one scenario; stops and drops them afterwards (logs kept on failure)."""
    created: list[FaultPipeline] = []
    started = time.monotonic()

    def create(kind: str, extra_env: dict[str, str] | None = None) -> FaultPipeline:
        pipeline = new_pipeline(stack, kind, extra_env=extra_env)
        created.append(pipeline)
        pipeline.note("pipeline", db=pipeline.db_name, prefix=pipeline.prefix, logs=str(pipeline.log_dir))
        return pipeline

    yield create
    report = getattr(request.node, "report_call", None)
    failed = report is None or report.failed
    outcome = "passed" if report is not None and report.passed else (report.outcome if report else "error")
    if report is not None and getattr(report, "wasxfail", None) is not None:
        outcome = "xfailed"
    events = [e for p in created for e in p.events]
    RECORD.add(request.node.name, outcome, time.monotonic() - started, events)
    for pipeline in created:
        pipeline.destroy(keep_logs=failed)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the session's fault record: bench-results/faults.json for a run with the kill scenario
    (the figures RELIABILITY.md quotes), faults-partial.json for a run of some other scenarios."""
    if not RECORD.tests:
        return
    full = any(name.startswith("test_kill_9") for name in RECORD.tests)
    out = REPO_ROOT / "bench-results" / ("faults.json" if full else "faults-partial.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": SETTINGS.__dict__,
        "figures": RECORD.figures(),
        "tests": RECORD.tests,
    }
    out.write_text(json.dumps(body, indent=2, default=str) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the seed and the headline figures of the fault scenarios."""
    if not RECORD.tests:
        return
    figures = RECORD.figures()
    terminalreporter.section("fault injection")
    terminalreporter.write_line(
        f"seed {figures['seed']} (replay: PACS_FAULT_SEED={figures['seed']}); "
        f"{figures['kill_rounds_survived']} kill rounds survived, {figures['processes_killed']} processes "
        f"killed, {figures['kills_shown_mid_batch']} shown mid-batch"
    )
    terminalreporter.write_line(
        f"{figures['changes_applied_checked']:,} applied changes checked, "
        f"{figures['changes_applied_twice']} applied twice; "
        f"{figures['verify_runs_passed']} verify runs passed"
    )
    for name, outcome in figures["scenarios"].items():
        terminalreporter.write_line(f"  {outcome:<8} {figures['seconds'][name]:>7.1f} s  {name}")
    full = any(name.startswith("test_kill_9") for name in RECORD.tests)
    terminalreporter.write_line(
        f"record: {Path('bench-results') / ('faults.json' if full else 'faults-partial.json')}"
    )
