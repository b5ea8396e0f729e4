"""The emulated SQL Server Agent: runs the CDC capture job and the cleanup job in the background.

On SQL Server the Agent runs ``sp_MScdc_capture_job`` continuously (polling every
``pollinginterval`` seconds) and the cleanup job on a schedule. Here a small background process
does the same against the emulated PACS database: ``CALL sys.sp_cdc_scan()`` every capture
interval and ``CALL cdc_emu.cleanup_job()`` every cleanup interval, re-reading both intervals from
``cdc_emu.cdc_jobs`` so ``sys.sp_cdc_change_job`` takes effect without a restart.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pacs_sync import dbapi
from pacs_sync.errors import PacsSyncError, RetriableError
from pacs_sync.sim.emulator import EmulatorAdmin
from pacs_sync.stack import processes

logger = logging.getLogger(__name__)

_CMDLINE_MARKER = "sim agent run"
_MAX_BACKOFF_S = 30.0


class CaptureAgent:
    """The capture/cleanup loop. ``connect`` opens an autocommit superuser connection to the PACS db."""

    def __init__(self, connect: Callable[[], dbapi.Connection]) -> None:
        """Keep the connection factory; nothing is opened until :meth:`run`."""
        self._connect = connect

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set. A lost connection is retried with exponential backoff."""
        admin: EmulatorAdmin | None = None
        backoff = 0.5
        next_cleanup = 0.0
        while not stop.is_set():
            try:
                if admin is None:
                    admin = EmulatorAdmin(self._connect())
                    logger.info("capture agent connected")
                    backoff = 0.5
                capture_s, cleanup_s = admin.job_intervals()
                admin.scan()
                if time.monotonic() >= next_cleanup:
                    admin.cleanup()
                    next_cleanup = time.monotonic() + cleanup_s
                stop.wait(capture_s)
            except (PacsSyncError, dbapi.DriverError, OSError) as exc:
                # The PACS database may be restarting or being re-created by `sim init`: keep trying.
                level = logging.WARNING if isinstance(exc, RetriableError) else logging.ERROR
                logger.log(level, "capture agent: %s; retrying in %.1f s", exc, backoff)
                if admin is not None:
                    _close_quietly(admin)
                    admin = None
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        if admin is not None:
            _close_quietly(admin)


def _close_quietly(admin: EmulatorAdmin) -> None:
    try:
        admin.close()
    except (dbapi.DriverError, OSError):
        logger.debug("closing the agent's connection failed", exc_info=True)


class AgentProcess:
    """Start, stop and inspect the background agent of one emulated database (pid file under ``<state>/sim``).

    The child inherits this process's environment, so it reads the same settings (``PACS_DB_NAME``
    included); one agent runs per emulated database.
    """

    def __init__(self, state_dir: Path, database: str) -> None:
        """Lay out the pid and log files; nothing is started."""
        self.home = state_dir.resolve() / "sim"
        self.database = database
        self.pid_file = self.home / f"capture-agent-{database}.pid"
        self.log_file = self.home / f"capture-agent-{database}.log"

    @classmethod
    def stop_all(cls, state_dir: Path) -> list[str]:
        """Stop every agent started under ``state_dir``; return the databases whose agent was running."""
        stopped = []
        for pid_file in sorted((state_dir.resolve() / "sim").glob("capture-agent-*.pid")):
            database = pid_file.stem.removeprefix("capture-agent-")
            if cls(state_dir, database).stop():
                stopped.append(database)
        return stopped

    def running_pid(self) -> int | None:
        """The agent's pid if it is running."""
        pid = processes.read_pid(self.pid_file)
        marker = f"{_CMDLINE_MARKER} --database {self.database}"
        if pid is not None and processes.is_running(pid, cmdline_contains=marker):
            return pid
        return None

    def start(self) -> bool:
        """Start the agent in the background unless it runs; return True if started now."""
        if self.running_pid() is not None:
            return False
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pacs_sync", *_CMDLINE_MARKER.split(), "--database", self.database],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        logger.info("capture agent started (pid %d, log %s)", proc.pid, self.log_file)
        return True

    def stop(self) -> bool:
        """Stop the agent if it runs; return True if it was running."""
        pid = self.running_pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        processes.terminate(pid, grace_s=10.0)
        logger.info("capture agent stopped (pid %d)", pid)
        return True
