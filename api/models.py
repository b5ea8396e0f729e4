"""Request and response bodies of the management API (they make its OpenAPI spec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

EntityName = Literal["properties", "owners", "valuations", "structures"]
"""The four entities (kept equal to ``sink.tables.ENTITIES`` by a unit test)."""

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
_HOST = r"^[A-Za-z0-9._:\[\]-]+$"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ErrorBody(BaseModel):
    """Every error response: a stable slug, the PACS code where one applies, and a message."""

    error: str = Field(description="unauthorized, forbidden, invalid_request, conflict, not_found, …")
    code: str | None = Field(default=None, description="PACS-00x code, where one applies")
    message: str
    details: list[dict[str, Any]] | None = Field(default=None, description="invalid fields (422)")
    running_job: int | None = Field(default=None, description="the job in the way (409)")


class Health(BaseModel):
    """``GET /health``."""

    status: Literal["ok", "degraded"]
    database: Literal["up", "down"]


class WhoAmI(BaseModel):
    """The caller, as its token says."""

    subject: str
    role: Literal["viewer", "operator", "admin"]
    expires_at: datetime
    permissions: list[str]


# ---- test-connection / connection settings ----


class TestConnectionRequest(_Request):
    """A PACS server to try (the seed's fields)."""

    __test__ = False  # not a pytest class

    host: str = Field(min_length=1, max_length=253, pattern=_HOST, examples=["pacs-sql.county.local"])
    port: int = Field(ge=1, le=65535, examples=[1433])
    database: str = Field(min_length=1, max_length=128, pattern=_NO_CONTROL, examples=["PACS"])
    username: str = Field(min_length=1, max_length=128, pattern=_NO_CONTROL)
    password: SecretStr | None = Field(
        default=None,
        max_length=512,
        description="omit to use the saved password (only for the saved host, port, database and user)",
    )
    encrypt: bool = True
    timeout_s: float | None = Field(
        default=None, ge=1, le=60, description="default PACS_API_TEST_CONNECTION_TIMEOUT_S"
    )


class CheckLine(BaseModel):
    """One line of the connection check."""

    name: str
    ok: bool
    detail: str


class TestConnectionResponse(BaseModel):
    """ok, or the PACS code and its cause."""

    __test__ = False

    ok: bool
    code: str | None = None
    cause: str | None = None
    checks: list[CheckLine] = Field(default_factory=list)
    seconds: float


class ConnectionUpdate(_Request):
    """New PACS connection settings (admin)."""

    host: str = Field(min_length=1, max_length=253, pattern=_HOST)
    port: int = Field(ge=1, le=65535)
    database: str = Field(min_length=1, max_length=128, pattern=_NO_CONTROL)
    username: str = Field(min_length=1, max_length=128, pattern=_NO_CONTROL)
    password: SecretStr = Field(min_length=1, max_length=512)
    encrypt: bool = True


class ConnectionView(BaseModel):
    """The saved settings, without the password (never returned)."""

    saved: bool
    host: str | None = None
    port: int | None = None
    database: str | None = None
    username: str | None = None
    encrypt: bool | None = None
    password_set: bool = False
    updated_at: datetime | None = None
    updated_by: str | None = None


# ---- jobs ----


class SyncStartRequest(_Request):
    """Start a sync job."""

    sync_type: Literal["full", "incremental", "resync"]
    entities: list[EntityName] | None = Field(
        default=None, min_length=1, max_length=4, description="default: all four entities"
    )


class JobStep(BaseModel):
    """One command line of a job."""

    name: str
    argv: list[str]


class JobView(BaseModel):
    """A sync job and how it went."""

    job_id: int
    kind: Literal["full", "incremental", "resync", "reconcile"]
    entities: list[str]
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    trigger: Literal["api", "schedule"]
    requested_by: str
    requested_role: str
    steps: list[JobStep]
    progress: dict[str, Any]
    result: dict[str, Any]
    exit_code: int | None
    error: str | None
    output_tail: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    """Recent jobs, newest first."""

    jobs: list[JobView]


# ---- status and metrics ----


class Latency(BaseModel):
    """End-to-end latency (source commit → PostgreSQL commit) from the sink's histogram."""

    count: int | None
    sum_s: float | None
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None


class Rows(BaseModel):
    """What the target holds."""

    present: bool
    live: int
    deleted: int


class JobProgress(BaseModel):
    """The running job, as far as this entity is concerned."""

    job_id: int
    kind: str
    state: str
    ratio: float | None
    done: bool


class Progress(BaseModel):
    """Snapshot progress (producer gauge, 0..1) and the running job's."""

    snapshot: float | None
    job: JobProgress | None


class EntityStatus(BaseModel):
    """One entity (figures from a stage that is down are null)."""

    entity: str
    state: Literal["streaming", "catching_up", "snapshotting", "syncing", "resyncing", "down"]
    rows: Rows
    events: int | None = Field(description="change events the producer published")
    processed: int | None = Field(description="events the processors handled")
    written: int | None = Field(description="rows the sink wrote (upserts and deletes)")
    invalid: int | None = Field(description="events that failed validation")
    dlq: int | None = Field(description="dead-lettered: invalid, undecodable, rejected by PostgreSQL")
    lag: int | None = Field(description="clean-topic records the sink has not written")
    latency: Latency
    last_position: str | None = Field(description="newest source commit LSN in the target")
    last_synced_at: datetime | None
    progress: Progress


class StageStatus(BaseModel):
    """A pipeline stage's metrics endpoint."""

    state: Literal["up", "down"]
    url: str
    error: str | None
    errors: dict[str, int] = Field(description="error counters by PACS code")


class SyncStatus(BaseModel):
    """``GET /sync/status``."""

    generated_at: datetime
    stages: dict[str, StageStatus]
    entities: list[EntityStatus]
    running_job: int | None


class MetricsFigures(BaseModel):
    """``GET /metrics`` (JSON): the figures behind the dashboard."""

    generated_at: datetime
    stages: dict[str, bool]
    entities: dict[str, dict[str, float | int | None]]
    totals: dict[str, float | int | None]
    jobs: dict[str, int]


class AuditEntry(BaseModel):
    """One audit-trail entry."""

    audit_id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any]
    client: str | None


class AuditList(BaseModel):
    """Recent audit entries, newest first."""

    entries: list[AuditEntry]
