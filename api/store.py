"""The API's adapter to the target PostgreSQL (asyncpg): its own schema, jobs, audit, sealed settings.

The API keeps its state in schema ``pacs_sync_api`` of the target database, migrated at start-up from
``api/migrations`` (versioned, digests checked, serialised by an advisory lock, as the sink does for
its schema). It also reads the sink's ``pacs_sync.<entity>`` tables for the status. Driver errors
are translated here: an unreachable server → PACS-001, credentials → PACS-002, anything else PACS-013.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from pacs_sync.errors import ErrorCode, FatalError, PacsSyncError
from pacs_sync.pg_async import apply_migrations, open_pool, server_name, translate_async_error
from sink.tables import ENTITIES, SYNC_SCHEMA

logger = logging.getLogger(__name__)

API_SCHEMA = "pacs_sync_api"
_MIGRATION_LOCK = 7340033  # the sink migrates under 7340032
_ACTIVE_INDEX = "jobs_one_active_idx"
ACTIVE_STATES = ("queued", "running")
END_STATES = ("succeeded", "failed", "cancelled")


_JOB_COLUMNS = (
    "job_id, kind, entities, state, trigger, requested_by, requested_role, plan, progress, result, "
    "exit_code, error, output_tail, created_at, started_at, finished_at, heartbeat_at"
)


@dataclass(frozen=True)
class JobRecord:
    """One row of ``pacs_sync_api.jobs``."""

    job_id: int
    kind: str
    entities: list[str]
    state: str
    trigger: str
    requested_by: str
    requested_role: str
    plan: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any]
    exit_code: int | None
    error: str | None
    output_tail: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.state in ACTIVE_STATES

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        """Build from a fetched row (jsonb columns arrive as text)."""
        values = dict(row)
        for name in ("plan", "progress", "result"):
            raw = values[name]
            values[name] = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        values["entities"] = list(values["entities"])
        return cls(**values)


@dataclass(frozen=True)
class AuditRecord:
    """One row of ``pacs_sync_api.audit``."""

    audit_id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any]
    client: str | None


@dataclass(frozen=True)
class SealedSettings:
    """The sealed connection settings row (never the plaintext)."""

    sealed: bytes
    key_id: str
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class EntityRows:
    """What the target holds of one entity."""

    entity: str
    present: bool
    """False until the sink has created the table."""
    live: int = 0
    deleted: int = 0
    last_synced_at: datetime | None = None
    last_position: str | None = None
    """The newest ``source_commit_lsn`` written."""


class JobConflictError(Exception):
    """Another job is queued or running (HTTP 409)."""

    def __init__(self, active: JobRecord | None) -> None:
        """Carry the job in the way (None if it finished in between)."""
        what = f"job {active.job_id} ({active.kind}) is {active.state}" if active else "another job is active"
        super().__init__(f"{what}; one job runs at a time")
        self.active = active


@dataclass
class ApiStore:
    """A pool to the target database and the API's statements on it."""

    pool: asyncpg.Pool
    server: str
    _closed: bool = field(default=False, init=False)

    @classmethod
    async def connect(
        cls, parts: Mapping[str, Any], *, pool_size: int = 4, timeout: float = 10.0
    ) -> ApiStore:
        """Open a pool (``PacsSettings.target_parts``); PACS-001/002 when it cannot."""
        pool = await open_pool(parts, application_name="pacs-sync-api", pool_size=pool_size, timeout=timeout)
        return cls(pool, server_name(parts))

    async def close(self) -> None:
        """Close the pool."""
        if not self._closed:
            self._closed = True
            await self.pool.close()

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the API's migrations not yet applied; a changed shipped migration is refused."""
        return await apply_migrations(
            self.pool, "api", schema=API_SCHEMA, lock_id=_MIGRATION_LOCK, server=self.server
        )

    async def ping(self) -> None:
        """One round trip (health)."""
        await self._fetchval("SELECT 1")

    # -- jobs ----------------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        kind: str,
        entities: Sequence[str],
        trigger: str,
        requested_by: str,
        requested_role: str,
        plan: Mapping[str, Any],
        stale_after_s: float,
    ) -> JobRecord:
        """Record a queued job, or raise :class:`JobConflictError` when one is queued or running."""
        await self.fail_stale_jobs(stale_after_s)
        try:
            row = await self.pool.fetchrow(
                f"INSERT INTO {API_SCHEMA}.jobs "
                "(kind, entities, trigger, requested_by, requested_role, plan) "
                f"VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING {_JOB_COLUMNS}",
                kind,
                list(entities),
                trigger,
                requested_by,
                requested_role,
                json.dumps(plan),
            )
        except asyncpg.UniqueViolationError as exc:
            if getattr(exc, "constraint_name", None) == _ACTIVE_INDEX:
                raise JobConflictError(await self.active_job()) from None
            raise _translate(exc, self.server) from exc
        except Exception as exc:
            raise _translate(exc, self.server) from exc
        if row is None:  # INSERT … RETURNING always answers one row
            raise FatalError("the job was not recorded", code=ErrorCode.DATABASE_ERROR)
        return JobRecord.from_row(row)

    async def get_job(self, job_id: int) -> JobRecord | None:
        """One job, or None."""
        row = await self._fetchrow(f"SELECT {_JOB_COLUMNS} FROM {API_SCHEMA}.jobs WHERE job_id = $1", job_id)
        return JobRecord.from_row(row) if row else None

    async def list_jobs(self, limit: int = 20) -> list[JobRecord]:
        """The newest jobs first."""
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS} FROM {API_SCHEMA}.jobs ORDER BY job_id DESC LIMIT $1", limit
        )
        return [JobRecord.from_row(r) for r in rows]

    async def active_job(self) -> JobRecord | None:
        """The queued or running job, if any."""
        row = await self._fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM {API_SCHEMA}.jobs WHERE state IN ('queued', 'running') "
            "ORDER BY job_id DESC LIMIT 1"
        )
        return JobRecord.from_row(row) if row else None

    async def job_counts(self) -> dict[str, int]:
        """Jobs by state."""
        rows = await self._fetch(f"SELECT state, count(*) AS n FROM {API_SCHEMA}.jobs GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    async def fail_stale_jobs(self, stale_after_s: float) -> list[JobRecord]:
        """Mark failed every active job whose executor has not reported for ``stale_after_s``."""
        rows = await self._fetch(
            f"UPDATE {API_SCHEMA}.jobs SET state = 'failed', finished_at = now(), "
            "error = $2 WHERE state IN ('queued', 'running') "
            "AND heartbeat_at < now() - make_interval(secs => $1) "
            f"RETURNING {_JOB_COLUMNS}",
            float(stale_after_s),
            f"{ErrorCode.SYNC_TIMEOUT}: the job's executor stopped reporting (killed, or its host went "
            "down); the job may have done part of its work",
        )
        stale = [JobRecord.from_row(r) for r in rows]
        for job in stale:
            logger.warning("job %d (%s): executor vanished, marked failed", job.job_id, job.kind)
            await self.audit(
                "system",
                "system",
                "job.finish",
                "failed",
                target=f"job/{job.job_id}",
                detail={"kind": job.kind, "reason": "executor stopped reporting"},
            )
        return stale

    async def claim_job(self, job_id: int, *, pid: int, host: str) -> JobRecord | None:
        """queued → running for the executor ``pid``; None if the job is not queued any more."""
        row = await self._fetchrow(
            f"UPDATE {API_SCHEMA}.jobs SET state = 'running', started_at = now(), heartbeat_at = now(), "
            "executor_pid = $2, executor_host = $3 WHERE job_id = $1 AND state = 'queued' "
            f"RETURNING {_JOB_COLUMNS}",
            job_id,
            pid,
            host,
        )
        return JobRecord.from_row(row) if row else None

    async def report_job(self, job_id: int, *, progress: Mapping[str, Any], output_tail: str) -> None:
        """The executor's heartbeat: progress and the output so far."""
        await self._execute(
            f"UPDATE {API_SCHEMA}.jobs SET heartbeat_at = now(), progress = $2::jsonb, output_tail = $3 "
            "WHERE job_id = $1 AND state = 'running'",
            job_id,
            json.dumps(progress),
            output_tail,
        )

    async def finish_job(
        self,
        job_id: int,
        *,
        state: str,
        exit_code: int | None,
        error: str | None,
        output_tail: str,
        progress: Mapping[str, Any],
        result: Mapping[str, Any],
    ) -> JobRecord | None:
        """Record a job's end state (only if it is still active)."""
        row = await self._fetchrow(
            f"UPDATE {API_SCHEMA}.jobs SET state = $2, finished_at = now(), heartbeat_at = now(), "
            "exit_code = $3, error = $4, output_tail = $5, progress = $6::jsonb, result = $7::jsonb "
            f"WHERE job_id = $1 AND state IN ('queued', 'running') RETURNING {_JOB_COLUMNS}",
            job_id,
            state,
            exit_code,
            error,
            output_tail,
            json.dumps(progress),
            json.dumps(result, default=str),
        )
        return JobRecord.from_row(row) if row else None

    # -- audit ---------------------------------------------------------------------------------

    async def audit(
        self,
        actor: str,
        role: str,
        action: str,
        outcome: str,
        *,
        target: str | None = None,
        detail: Mapping[str, Any] | None = None,
        client: str | None = None,
    ) -> None:
        """Append one audit entry."""
        await self._execute(
            f"INSERT INTO {API_SCHEMA}.audit (actor, role, action, outcome, target, detail, client) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
            actor,
            role,
            action,
            outcome,
            target,
            json.dumps(dict(detail or {}), default=str),
            client,
        )

    async def list_audit(self, limit: int = 50) -> list[AuditRecord]:
        """The newest audit entries first."""
        rows = await self._fetch(
            "SELECT audit_id, at, actor, role, action, target, outcome, detail, client "
            f"FROM {API_SCHEMA}.audit ORDER BY audit_id DESC LIMIT $1",
            limit,
        )
        return [
            AuditRecord(**{**dict(r), "detail": json.loads(r["detail"]) if r["detail"] else {}}) for r in rows
        ]

    # -- sealed connection settings --------------------------------------------------------------

    async def save_connection(self, sealed: bytes, key_id: str, updated_by: str) -> None:
        """Store the sealed settings (one row)."""
        await self._execute(
            f"INSERT INTO {API_SCHEMA}.connection_settings (name, sealed, key_id, updated_by) "
            "VALUES ('pacs', $1, $2, $3) ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, "
            "key_id = excluded.key_id, updated_by = excluded.updated_by, updated_at = now()",
            sealed,
            key_id,
            updated_by,
        )

    async def load_connection(self) -> SealedSettings | None:
        """The sealed settings, or None when none were saved."""
        row = await self._fetchrow(
            f"SELECT sealed, key_id, updated_at, updated_by FROM {API_SCHEMA}.connection_settings "
            "WHERE name = 'pacs'"
        )
        return (
            SealedSettings(bytes(row["sealed"]), row["key_id"], row["updated_at"], row["updated_by"])
            if row
            else None
        )

    # -- the sink's tables -------------------------------------------------------------------------

    async def entity_rows(self, entities: Sequence[str]) -> dict[str, EntityRows]:
        """Live and deleted rows, the newest sync time and source position of each entity's table."""
        present = {
            r["name"]
            for r in await self._fetch(
                "SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind = 'r'",
                SYNC_SCHEMA,
                list(entities),
            )
        }
        found: dict[str, EntityRows] = {}
        for entity in entities:
            if entity not in present:
                found[entity] = EntityRows(entity, present=False)
                continue
            table = ENTITIES[entity].table  # identifiers from the entity specs, never from a request
            row = await self._fetchrow(
                "SELECT count(*) FILTER (WHERE NOT deleted) AS live, "
                "count(*) FILTER (WHERE deleted) AS deleted, max(synced_at) AS last_synced_at, "
                f"max(source_commit_lsn) AS last_position FROM {table}"
            )
            if row is None:  # an aggregate always answers one row
                raise FatalError(f"no answer counting {table}", code=ErrorCode.DATABASE_ERROR)
            found[entity] = EntityRows(
                entity,
                present=True,
                live=int(row["live"]),
                deleted=int(row["deleted"]),
                last_synced_at=row["last_synced_at"],
                last_position=row["last_position"].strip() if row["last_position"] else None,
            )
        return found

    # -- plumbing ------------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return list(await self.pool.fetch(sql, *args))
        except Exception as exc:
            raise _translate(exc, self.server) from exc

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        try:
            return await self.pool.fetchrow(sql, *args)
        except Exception as exc:
            raise _translate(exc, self.server) from exc

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self.pool.fetchval(sql, *args)
        except Exception as exc:
            raise _translate(exc, self.server) from exc

    async def _execute(self, sql: str, *args: Any) -> None:
        try:
            await self.pool.execute(sql, *args)
        except Exception as exc:
            raise _translate(exc, self.server) from exc


def _translate(exc: BaseException, server: str) -> PacsSyncError:
    return translate_async_error(exc, server)
