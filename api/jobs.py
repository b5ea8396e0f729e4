"""Sync jobs: what a job runs (pure plans), and how the API starts one (the launcher).

A job is a row in ``pacs_sync_api.jobs`` and a detached executor process (:mod:`api.executor`) that
runs the job's command lines one after another and records progress, output and the outcome in that
row. The executor runs in its own session, so restarting the API neither stops a job nor loses its
state; one job at a time is enforced by the database (a partial unique index), so a second start is
refused (409) whichever API instance receives it.

Command lines (``pacs-sync`` subcommands; PACS_API_JOB_COMMANDS may replace any of them):

* full → ``sync --until-caught-up --full [--entities E …]``
* incremental → ``sync --until-caught-up [--entities E …]``
* resync → ``resync --entity E [--entity E2 …]``
* reconcile (the scheduled default) → ``verify --json [--entity E …]``; exit 0 = everything matches,
  1 = differences: then ``resync --entity E`` for each entity whose verification failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from api.settings import ApiSettings
from sink.tables import ENTITIES

logger = logging.getLogger(__name__)

ALL_ENTITIES: tuple[str, ...] = tuple(ENTITIES)

# Variables a job's processes never need: the API's own secrets stay in the API process.
_WITHHELD_ENV = (
    "PACS_API_JWT_SECRET",
    "PACS_API_JWT_PRIVATE_KEY_FILE",
    "PACS_API_CREDENTIALS_KEY",
    "PACS_API_CREDENTIALS_KEY_FILE",
    "PACS_API_TLS_KEY_FILE",
)


class JobKind(StrEnum):
    """What a job does."""

    FULL = "full"
    INCREMENTAL = "incremental"
    RESYNC = "resync"
    RECONCILE = "reconcile"


@dataclass(frozen=True)
class Step:
    """One command line of a job."""

    name: str
    argv: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON form (stored in the job's plan)."""
        return {"name": self.name, "argv": list(self.argv)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        """Inverse of :meth:`as_dict`."""
        return cls(str(data["name"]), tuple(str(a) for a in data["argv"]))


def normalise_entities(entities: Sequence[str] | None) -> list[str]:
    """Known entities in the canonical order, without repeats (None or empty: all of them)."""
    if not entities:
        return list(ALL_ENTITIES)
    unknown = sorted(set(entities) - set(ALL_ENTITIES))
    if unknown:
        raise ValueError(f"unknown entities {unknown} (known: {', '.join(ALL_ENTITIES)})")
    return [e for e in ALL_ENTITIES if e in set(entities)]


def _entity_flags(flag: str, entities: Sequence[str], *, always: bool) -> tuple[str, ...]:
    if not always and list(entities) == list(ALL_ENTITIES):
        return ()
    return tuple(part for entity in entities for part in (flag, entity))


def resync_step(command: Sequence[str], entities: Sequence[str]) -> Step:
    """``pacs-sync resync --entity E …`` (``command``: the resync command line before the flags)."""
    return Step(f"resync {' '.join(entities)}", (*command, *_entity_flags("--entity", entities, always=True)))


def plan_job(settings: ApiSettings, kind: JobKind, entities: Sequence[str]) -> dict[str, Any]:
    """The job's plan as stored in its row: the steps to run, and for reconcile the resync template."""
    chosen = normalise_entities(entities)
    if kind in (JobKind.FULL, JobKind.INCREMENTAL):
        argv = (*settings.job_command(kind.value), *_entity_flags("--entities", chosen, always=False))
        steps = [Step(f"{kind.value} sync", argv)]
    elif kind is JobKind.RESYNC:
        steps = [resync_step(settings.job_command("resync"), chosen)]
    else:
        argv = (*settings.job_command("verify"), *_entity_flags("--entity", chosen, always=False))
        steps = [Step("verify", argv)]
    plan: dict[str, Any] = {"kind": kind.value, "entities": chosen, "steps": [s.as_dict() for s in steps]}
    if kind is JobKind.RECONCILE:
        plan["resync_command"] = list(settings.job_command("resync"))
    return plan


def failing_entities(report_text: str, verified: Sequence[str]) -> list[str] | None:
    """Entities a ``verify --json`` report says do not match; None when the report cannot be read.

    Accepted shapes (the report's per-entity objects carry ``"matched"``): ``{"entities": {name:
    {...}}}``, ``{"entities": [{"entity": name, ...}]}`` or ``{name: {...}}`` at the top level.
    """
    text = report_text.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        report, _ = json.JSONDecoder().raw_decode(text[start:])  # anything after the object is ignored
    except json.JSONDecodeError:
        return None
    if not isinstance(report, dict):
        return None
    per_entity: dict[str, Any] = {}
    container = report.get("entities", report)
    if isinstance(container, dict):
        per_entity = {k: v for k, v in container.items() if k in ENTITIES and isinstance(v, dict)}
    elif isinstance(container, list):
        per_entity = {
            str(item.get("entity")): item
            for item in container
            if isinstance(item, dict) and item.get("entity") in ENTITIES
        }
    if not per_entity:
        return None
    failing = [name for name, item in per_entity.items() if item.get("matched") is False]
    return [e for e in ALL_ENTITIES if e in set(failing) and (not verified or e in verified)]


def job_environment(settings: ApiSettings, connection_env: Mapping[str, str]) -> dict[str, str]:
    """Environment of the executor and its steps: ours minus the API's secrets, plus what they need.

    The target DSN and state dir are passed explicitly (the API may have been configured by
    arguments, not the environment); ``connection_env`` carries saved PACS connection settings.
    """
    env = {k: v for k, v in os.environ.items() if k not in _WITHHELD_ENV}
    env.update(
        {
            "PACS_TARGET_DSN": settings.target_dsn.get_secret_value(),
            "PACS_STATE_DIR": str(settings.state_dir),
            "PACS_LOG_LEVEL": settings.log_level,
            "PACS_API_JOB_TIMEOUT_S": str(settings.api_job_timeout_s),
            "PACS_API_JOB_OUTPUT_LINES": str(settings.api_job_output_lines),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(connection_env)
    return env


class JobLauncher(Protocol):
    """Starts the executor of a recorded job."""

    async def launch(self, job_id: int, env: Mapping[str, str]) -> None:
        """Start it; return at once."""

    async def aclose(self) -> None:
        """Stop waiting for executors (they keep running)."""


class SubprocessLauncher:
    """Starts ``python -m api.executor JOB_ID`` detached (own session), logging to the state dir."""

    def __init__(self, log_dir: Path) -> None:
        """Executor logs go to ``log_dir/job-<id>.log``."""
        self.log_dir = log_dir
        self._waiters: set[asyncio.Task[None]] = set()

    async def launch(self, job_id: int, env: Mapping[str, str]) -> None:
        """Spawn the executor; a task reaps it when it exits (no zombies while the API runs).

        ``subprocess.Popen``, not asyncio's subprocess: an asyncio transport kills its child when it
        is closed, and the executor must outlive the API.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"job-{job_id}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "api.executor", str(job_id)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=dict(env),
                start_new_session=True,
            )
        logger.info("job %d: executor pid %d, log %s", job_id, process.pid, log_path)
        task = asyncio.create_task(self._reap(job_id, process))
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    async def _reap(self, job_id: int, process: subprocess.Popen[bytes]) -> None:
        while (code := process.poll()) is None:
            await asyncio.sleep(0.5)
        logger.info("job %d: executor exited with %d", job_id, code)

    async def aclose(self) -> None:
        """Stop reaping; the executors go on (their jobs survive an API restart)."""
        for task in list(self._waiters):
            task.cancel()
        self._waiters.clear()
