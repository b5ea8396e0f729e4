"""``python -m api.executor JOB_ID``: run one recorded job's command lines and record how it went.

Started detached by the API's launcher (:mod:`api.jobs`). It claims the job (queued → running),
runs its steps one after another in their own process group, keeps the last lines of their output,
reports progress and a heartbeat to the job's row every couple of seconds, and records the end
state: succeeded (every step exited 0), failed (a step exited non-zero, could not start, or exceeded
PACS_API_JOB_TIMEOUT_S: PACS-005) or cancelled (SIGTERM/SIGINT). The audit trail gets the job's start
and finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.jobs import JobKind, Step, failing_entities, resync_step
from api.settings import ApiSettings
from api.store import ApiStore, JobRecord
from pacs_sync.errors import ErrorCode, PacsSyncError
from pacs_sync.logging import configure_logging

logger = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
_KILL_GRACE_S = 10.0
_MAX_CAPTURED_STDOUT = 8 * 1024 * 1024
_PACS_ERROR = re.compile(r"(PACS-\d{3}: .*)$")
_RESYNC_DONE = re.compile(r"resync (\w+): swapped in")


@dataclass
class _Output:
    """The job's output: a bounded tail for the record, the log file, and one step's stdout."""

    lines: int
    tail: deque[str] = field(init=False)
    stdout: list[str] = field(default_factory=list)
    stdout_bytes: int = 0

    def __post_init__(self) -> None:
        self.tail = deque(maxlen=self.lines)

    def add(self, stream: str, line: str) -> None:
        self.tail.append(line)
        sys.stdout.write(f"[{stream}] {line}\n")
        sys.stdout.flush()
        if stream == "stdout" and self.stdout_bytes < _MAX_CAPTURED_STDOUT:
            self.stdout.append(line)
            self.stdout_bytes += len(line) + 1

    def text(self) -> str:
        return "\n".join(self.tail)


@dataclass
class _Run:
    """Mutable state of the running job, reported with each heartbeat."""

    job: JobRecord
    steps: list[Step]
    output: _Output
    step_index: int = 0
    entities_done: list[str] = field(default_factory=list)
    step_started: float = field(default_factory=time.monotonic)
    results: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def progress(self) -> dict[str, Any]:
        total = max(len(self.steps), 1)
        done = min(self.step_index, total)
        step = self.steps[min(self.step_index, len(self.steps) - 1)] if self.steps else None
        return {
            "step": min(self.step_index + 1, total),
            "steps": total,
            "current": step.name if step and self.step_index < len(self.steps) else None,
            "entities_done": list(self.entities_done),
            "ratio": round(done / total, 4),
            "step_seconds": round(time.monotonic() - self.step_started, 1),
        }


class _Cancelled(Exception):
    pass


async def run_job(
    settings: ApiSettings,
    job_id: int,
    *,
    store: ApiStore | None = None,
    stop: asyncio.Event | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run job ``job_id`` to its end; return the end state (or 'skipped' if it was not queued)."""
    own_store = store is None
    store = store or await ApiStore.connect(settings.target_parts, pool_size=2)
    stop = stop or asyncio.Event()
    try:
        job = await store.claim_job(job_id, pid=os.getpid(), host=socket.gethostname())
        if job is None:
            logger.warning("job %d is not queued (already run, or marked failed); nothing to do", job_id)
            return "skipped"
        return await _run_claimed(settings, store, job, stop, dict(env if env is not None else os.environ))
    finally:
        if own_store:
            await store.close()


async def _run_claimed(
    settings: ApiSettings, store: ApiStore, job: JobRecord, stop: asyncio.Event, env: dict[str, str]
) -> str:
    env["PACS_API_JOB_ID"] = str(job.job_id)
    steps = [Step.from_dict(s) for s in job.plan.get("steps", [])]
    run = _Run(job, steps, _Output(settings.api_job_output_lines))
    target = f"job/{job.job_id}"
    await store.audit(
        job.requested_by,
        job.requested_role,
        "job.start",
        "started",
        target=target,
        detail={"kind": job.kind, "entities": job.entities, "trigger": job.trigger},
    )
    logger.info("job %d (%s %s) started", job.job_id, job.kind, ",".join(job.entities))
    heartbeat = asyncio.create_task(_heartbeat(store, run))
    state: str = "succeeded"
    exit_code: int | None = 0
    error: str | None = None
    try:
        while run.step_index < len(run.steps):
            step = run.steps[run.step_index]
            run.step_started = time.monotonic()
            run.output.stdout.clear()
            run.output.stdout_bytes = 0
            code, step_error = await _run_step(step, env, settings.api_job_timeout_s, run, stop)
            run.results.append(
                {
                    "name": step.name,
                    "exit_code": code,
                    "seconds": round(time.monotonic() - run.step_started, 1),
                }
            )
            if step.name == "verify" and job.kind == JobKind.RECONCILE and code in (0, 1):
                follow, problem = _after_verify(job, code, run)
                if problem:
                    state, exit_code, error = "failed", code, problem
                    break
                run.steps.extend(follow)
                run.step_index += 1
                continue
            if code != 0:
                state, exit_code, error = "failed", code, step_error or _error_from(run.output, step, code)
                break
            run.step_index += 1
    except _Cancelled:
        state, exit_code, error = "cancelled", None, "the job was cancelled (its executor was told to stop)"
    except Exception as exc:  # the record must say why, whatever went wrong in here
        logger.exception("job %d: executor error", job.job_id)
        state, exit_code, error = "failed", None, str(exc) if isinstance(exc, PacsSyncError) else repr(exc)
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    result = {"steps": run.results, **run.extra}
    progress = run.progress() | {"ratio": 1.0 if state == "succeeded" else run.progress()["ratio"]}
    await store.finish_job(
        job.job_id,
        state=state,
        exit_code=exit_code,
        error=error,
        output_tail=run.output.text(),
        progress=progress,
        result=result,
    )
    await store.audit(
        job.requested_by,
        job.requested_role,
        "job.finish",
        state,
        target=target,
        detail={"kind": job.kind, "entities": job.entities, "exit_code": exit_code, "error": error},
    )
    logger.info("job %d %s%s", job.job_id, state, f": {error}" if error else "")
    return state


def _after_verify(job: JobRecord, code: int, run: _Run) -> tuple[list[Step], str | None]:
    """After ``verify``: nothing (0), a resync per failing entity (1), or why not."""
    if code == 0:
        run.extra["verify"] = {"matched": True, "failing": []}
        return [], None
    failing = failing_entities("\n".join(run.output.stdout), job.entities)
    if failing is None:  # verify itself failed (it exits 1 on an error too), or printed no report
        return [], _pacs_error_in(run.output) or (
            "verify exited 1 without a readable JSON report; no entity was resynced"
        )
    run.extra["verify"] = {"matched": False, "failing": failing}
    run.extra["resynced"] = failing
    if not failing:
        return [], "verify exited 1 but its report names no failing entity"
    logger.info("job %d: verification failed for %s; resyncing them", job.job_id, ", ".join(failing))
    # The command line recorded when the job was planned (the API's configuration, not this process's).
    command = [str(part) for part in job.plan.get("resync_command", [])]
    if not command:
        return [], "the job's plan has no resync command"
    return [resync_step(command, [entity]) for entity in failing], None


def _pacs_error_in(output: _Output) -> str | None:
    for line in reversed(output.tail):
        match = _PACS_ERROR.search(line)
        if match:
            return match.group(1)
    return None


def _error_from(output: _Output, step: Step, code: int) -> str:
    return _pacs_error_in(output) or f"step '{step.name}' exited with code {code}"


async def _run_step(
    step: Step, env: Mapping[str, str], timeout_s: float, run: _Run, stop: asyncio.Event
) -> tuple[int, str | None]:
    """Run one command line; (exit code, error message if it could not start or timed out)."""
    logger.info("job %d: step %s: %s", run.job.job_id, step.name, " ".join(step.argv))
    try:
        process = await asyncio.create_subprocess_exec(
            *step.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
    except OSError as exc:
        run.output.add("stderr", f"cannot start {step.argv[0]}: {exc}")
        return 127, f"step '{step.name}' could not start: {exc}"
    if process.stdout is None or process.stderr is None:  # both are PIPE above
        raise RuntimeError("the step's output pipes are missing")
    readers = asyncio.gather(_pump(process.stdout, "stdout", run), _pump(process.stderr, "stderr", run))
    waiter = asyncio.ensure_future(process.wait())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {waiter, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            await _kill(process)
            await readers
            if stopper in done:
                raise _Cancelled
            return -1, (
                f"{ErrorCode.SYNC_TIMEOUT}: step '{step.name}' ran longer than "
                f"PACS_API_JOB_TIMEOUT_S={timeout_s:g} s and was stopped"
            )
        await readers
        return int(waiter.result()), None
    finally:
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()


async def _pump(stream: asyncio.StreamReader, name: str, run: _Run) -> None:
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line longer than the stream limit: take what there is
            raw = await stream.read(65536)
        if not raw:
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        run.output.add(name, line)
        match = _RESYNC_DONE.search(line)
        if match and match.group(1) not in run.entities_done:
            run.entities_done.append(match.group(1))


async def _kill(process: asyncio.subprocess.Process) -> None:
    for sig, wait in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except TimeoutError:
            continue


async def _heartbeat(store: ApiStore, run: _Run) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        try:
            await store.report_job(run.job.job_id, progress=run.progress(), output_tail=run.output.text())
        except PacsSyncError as exc:  # keep running the job; the next beat may get through
            logger.warning("job %d: heartbeat not recorded: %s", run.job.job_id, exc)


def _install_stop(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def remove() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    return remove


async def _main(job_id: int) -> str:
    settings = ApiSettings.load()
    configure_logging(settings.log_level)
    stop = asyncio.Event()
    remove = _install_stop(stop)
    try:
        return await run_job(settings, job_id, stop=stop)
    finally:
        remove()


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 when the job succeeded, 1 otherwise, 2 on bad usage or configuration."""
    args = sys.argv[1:] if argv is None else argv
    configure_logging("INFO")
    if len(args) != 1 or not args[0].isdigit():
        logger.error("usage: python -m api.executor JOB_ID")
        sys.exit(2)
    try:
        state = asyncio.run(_main(int(args[0])))
    except PacsSyncError as exc:
        logger.error("%s", exc)
        sys.exit(2 if exc.code is ErrorCode.CONFIGURATION_INVALID else 1)
    sys.exit(0 if state in ("succeeded", "skipped") else 1)


if __name__ == "__main__":
    main()
