"""Process bookkeeping for the local stack: pid files, liveness, stopping, log tails, waiting."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file``, or None if there is none (or it cannot be read: a state dir
    under a regular file, no permission; whoever writes there next reports why)."""
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_running(pid: int, *, cmdline_contains: str | None = None) -> bool:
    """Whether ``pid`` is alive (and, if asked, its command line contains a marker, to rule out reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if cmdline_contains is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return False
    return cmdline_contains in cmdline


def terminate(pid: int, *, grace_s: float = 60.0) -> None:
    """SIGTERM the process group of ``pid``, wait for it, then SIGKILL if it will not go."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    logger.warning("process %d ignored SIGTERM for %.0f s; killing it", pid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so it does not linger as a zombie that still "exists".
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = _proc_state(pid)
    return state != "Z"


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(check: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.5) -> bool:
    """Poll ``check`` until it returns True or ``timeout_s`` passes; return the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
