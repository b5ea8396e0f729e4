"""``pacs-sync run``: the stages as supervised child processes.

Each stage runs as its own ``python -m pacs_sync <stage>`` process (a crash in one cannot take the
others down, and each gets its own core). A stage that exits without being asked is restarted
after a backoff that doubles per crash in a row (reset once it has run ``healthy_after_s``), and
the crash is logged with the tail of its log and counted in ``pacs_sync_stage_restarts_total``.
SIGINT/SIGTERM stop every stage with SIGTERM (each finishes or rolls back its batch), then SIGKILL
after the grace period.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pacs_sync.metrics import SupervisorMetrics
from pacs_sync.stack.processes import tail
from pacs_sync.state_files import state_dir_error, write_atomic
from pipeline.settings import PipelineSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageCommand:
    """How to start one stage process."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment (on top of this process's)."""


def pipeline_stages(settings: PipelineSettings, *, extra: Sequence[StageCommand] = ()) -> list[StageCommand]:
    """Producer, N processor workers and the sink, each with its own metrics port."""
    python = (sys.executable, "-m", "pacs_sync")
    stages = [
        StageCommand(
            "producer", (*python, "producer"), {"PACS_METRICS_PORT": str(settings.producer_metrics_port)}
        )
    ]
    for worker in range(settings.processor_workers):
        port = settings.processor_metrics_port + 10 * worker if settings.processor_metrics_port else 0
        name = "processor" if worker == 0 else f"processor-{worker + 1}"
        stages.append(StageCommand(name, (*python, "processor"), {"PACS_METRICS_PORT": str(port)}))
    stages.append(
        StageCommand("sink", (*python, "sink"), {"PACS_METRICS_PORT": str(settings.sink_metrics_port)})
    )
    return [*stages, *extra]


@dataclass
class _Running:
    command: StageCommand
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes_in_a_row: int = 0
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Starts the stages, restarts the ones that crash, stops them all on request."""

    def __init__(
        self,
        settings: PipelineSettings,
        stages: Sequence[StageCommand],
        metrics: SupervisorMetrics,
        *,
        log_dir: Path | None = None,
        pids_file: Path | None = None,
    ) -> None:
        """Prepare; nothing starts before :meth:`start`. ``pids_file`` gets {stage: pid} as JSON."""
        self.settings = settings
        self.metrics = metrics
        self.log_dir = (
            log_dir
            or settings.state_dir / "logs" / f"pipeline.{settings.db_name}.{settings.clean_topic_prefix}"
        )
        self.pids_file = pids_file
        self._stages = {s.name: _Running(s) for s in stages}
        self._lock = threading.Lock()

    def log_file(self, name: str) -> Path:
        """Where a stage's stdout and stderr go (appended across restarts)."""
        return self.log_dir / f"{name}.log"

    def start(self) -> None:
        """Start every stage (on failure the ones already started keep running: see :meth:`run_until`)."""
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise state_dir_error(self.log_dir, exc, "create the log directory") from exc
        for running in self._stages.values():
            self._spawn(running)

    def _spawn(self, running: _Running) -> None:
        command = running.command
        try:
            log = self.log_file(command.name).open("ab")
        except OSError as exc:
            raise state_dir_error(self.log_file(command.name), exc, "open the log") from exc
        with log:
            running.process = subprocess.Popen(
                command.argv,
                env={**os.environ, **command.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops the stages in order
            )
        running.started_at = time.monotonic()
        running.restart_at = None
        self.metrics.stage_up.labels(command.name).set(1)
        self._write_pids()
        logger.info(
            "started %s (pid %d), log %s", command.name, running.process.pid, self.log_file(command.name)
        )

    def _write_pids(self) -> None:
        if self.pids_file is not None:
            write_atomic(self.pids_file, json.dumps(self.pids()))

    def check(self) -> list[str]:
        """Reap crashed stages and restart those whose backoff has passed; returns the names restarted."""
        restarted = []
        now = time.monotonic()
        with self._lock:
            for running in self._stages.values():
                process, name = running.process, running.command.name
                if process is not None and process.poll() is not None:
                    self._crashed(running, process.returncode, now)
                if running.process is None and running.restart_at is not None and now >= running.restart_at:
                    running.restarts += 1
                    self.metrics.restarts.labels(name).inc()
                    self._spawn(running)
                    restarted.append(name)
        return restarted

    def _crashed(self, running: _Running, code: int, now: float) -> None:
        name = running.command.name
        if now - running.started_at >= self.settings.healthy_after_s:
            running.crashes_in_a_row = 0
        delay = min(
            self.settings.restart_backoff_initial_s * 2**running.crashes_in_a_row,
            self.settings.restart_backoff_max_s,
        )
        running.crashes_in_a_row += 1
        running.process = None
        running.restart_at = now + delay
        self.metrics.stage_up.labels(name).set(0)
        logger.error(
            "stage %s exited with code %s after %.0f s; restarting in %.1f s. Last lines of %s:\n%s",
            name,
            code,
            now - running.started_at,
            delay,
            self.log_file(name),
            tail(self.log_file(name), 15),
        )

    def pids(self) -> dict[str, int | None]:
        """The pid of each stage (None while it waits for a restart)."""
        return {n: (r.process.pid if r.process else None) for n, r in self._stages.items()}

    def restarts(self) -> dict[str, int]:
        """How many times each stage was restarted."""
        return {n: r.restarts for n, r in self._stages.items()}

    def stop(self) -> None:
        """SIGTERM every stage, wait up to the grace period, SIGKILL what is left."""
        with self._lock:
            live = [
                (r.command.name, r.process)
                for r in self._stages.values()
                if r.process is not None and r.process.poll() is None
            ]
            for _, process in live:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.settings.stop_grace_s
            for name, process in live:
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    logger.warning("%s ignored SIGTERM; killing it", name)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            for running in self._stages.values():
                running.process = None
                running.restart_at = None  # a check() racing this stop must not start it again
                self.metrics.stage_up.labels(running.command.name).set(0)
        logger.info("all stages stopped")

    def run_until(self, stop: threading.Event, *, interval_s: float = 0.5) -> None:
        """Start, supervise until ``stop`` is set, then stop everything.

        Whatever fails once a stage started (a later stage's start, a restart, writing the pids),
        every stage started is stopped before the error propagates: none is left unsupervised.
        """
        try:
            self.start()
            self.supervise(stop, interval_s=interval_s)
        finally:
            self.stop()

    def supervise(self, stop: threading.Event, *, interval_s: float = 0.5) -> None:
        """Restart crashed stages until ``stop`` is set (the caller started and will stop them)."""
        while not stop.wait(interval_s):
            self.check()
