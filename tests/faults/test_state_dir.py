"""An unusable state dir: a disk-full or permission-like error must give a clear error, not a traceback
and not a half-written state.

Two faults that behave the same for root (CI) and for a normal user, unlike chmod:

* the state dir lies under a regular file (``ENOTDIR``): nothing can be created there;
* the disk is full for the command: its file-size limit (``RLIMIT_FSIZE``) is tiny, so writing any
  file fails with ``EFBIG`` (Python ignores SIGXFSZ), as a full disk fails with ``ENOSPC``.

Each command must exit non-zero with a ``PACS-0xx`` message naming the path, print no traceback,
start no stage, and leave no partial file behind (the re-snapshot request is written then renamed;
the pipeline's pid file must not be left empty).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import FaultPipeline

FILE_SIZE_LIMIT = 16  # bytes: smaller than any state file the commands write


def disk_full() -> None:
    """preexec_fn: writing more than a few bytes to any file fails with EFBIG."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def leftovers(state: Path) -> list[str]:
    """Half-written state: temporary files left behind, empty files, files cut off at the size limit,
    unparsable pid or JSON files (logs are append-only and not state: a full disk truncates them)."""
    found = []
    for path in sorted(state.rglob("*")) if state.is_dir() else []:
        if not path.is_file() or path.suffix == ".log":
            continue
        name, size = str(path.relative_to(state)), path.stat().st_size
        text = path.read_text(errors="replace")
        if path.suffix == ".tmp":
            found.append(f"{name} (temporary file left behind)")
        elif size == 0:
            found.append(f"{name} (empty: created, then its write failed)")
        elif size >= FILE_SIZE_LIMIT:
            found.append(f"{name} (cut off at {size} bytes by the full disk)")
        elif path.suffix == ".pid" and not text.strip().isdigit():
            found.append(f"{name} (pid file {text!r})")
        elif path.suffix == ".json":
            try:
                json.loads(text)
            except ValueError:
                found.append(f"{name} (half-written JSON {text!r})")
    return found


def processes_with_state_dir(root: Path) -> list[int]:
    """Live processes whose PACS_STATE_DIR lies under ``root`` (stages a failed command left behind)."""
    found = []
    marker = f"PACS_STATE_DIR={root}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def outcome(done: subprocess.CompletedProcess[str], state: Path) -> dict[str, object]:
    """What a failed command showed the operator, and what it left behind."""
    lines = [line for line in done.stderr.splitlines() if "PACS-0" in line]
    return {
        "exit_code": done.returncode,
        "message": lines[-1][-300:] if lines else done.stderr.strip().splitlines()[-1:],
        "traceback": "Traceback" in done.stderr,
        "names_the_path": str(state) in done.stderr,
        "leftovers": leftovers(state),
    }


@pytest.mark.timeout(300)
def test_an_unusable_state_dir_gives_a_clear_error_and_no_partial_state(
    fault_pipeline: Callable[..., FaultPipeline], tmp_path: Path
) -> None:
    p = fault_pipeline("statedir")
    p.init_source("20", seed=2)
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory\n")
    under_file = blocker / "state"
    full = tmp_path / "full-disk-state"
    full.mkdir()
    cases = {
        "run, state dir under a file": (["run", "--no-api"], under_file, None),
        "sync --full, state dir under a file": (["sync", "--full", "--timeout", "10"], under_file, None),
        "run, disk full": (["run", "--no-api"], full, disk_full),
        "run with the API, disk full": (["run"], full / "api", disk_full),
        "sync --full, disk full": (["sync", "--full", "--timeout", "10"], full, disk_full),
    }
    results: dict[str, dict[str, object]] = {}
    for name, (args, state, limit) in cases.items():
        done = p.cli(*args, env={"PACS_STATE_DIR": str(state)}, check=False, timeout=120, preexec_fn=limit)
        results[name] = outcome(done, state)
        stray = processes_with_state_dir(tmp_path)
        if stray:
            results[name]["stages_left_running"] = stray
            for pid in stray:  # started by this command: stop them before the next case
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    p.note("state-dir", results=results)

    # Every command fails, and no state file (request, pid, pids, secret) is ever half-written.
    assert all(r["exit_code"] != 0 for r in results.values()), results
    assert not any("JSON" in item for r in results.values() for item in r["leftovers"])  # type: ignore[attr-defined]
    unclear = {
        name: r
        for name, r in results.items()
        if r["traceback"]
        or "PACS-0" not in str(r["message"])
        or not r["names_the_path"]
        or r["leftovers"]
        or r.get("stages_left_running")
        or r["exit_code"] not in (1, 2)
    }
    assert not unclear, f"unclear errors or partial state: {json.dumps(unclear, indent=1)}"
