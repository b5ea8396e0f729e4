"""The FastAPI application: ``/api/v1/pacs-sync`` (the seed's endpoints), ``/metrics``, ``/health`` and
the ``/pacs-sync`` dashboard.

Every endpoint but ``/health`` needs a bearer token (the dashboard page itself is static HTML and
JavaScript with no data; it asks for a token and sends it with each call). Roles: viewer (status,
metrics, jobs), operator (+ start syncs, test connections, read the audit trail), admin (+ change
the connection settings). Error responses are ``{"error", "code", "message"}`` with the PACS code
where one applies: 401/403 PACS-002, 422 PACS-008, 503 the database's PACS-001/002.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import crypto
from api.auth import PERMISSIONS, AuthError, Principal, Role, TokenKeys, verify_token
from api.jobs import JobKind, JobLauncher, SubprocessLauncher, job_environment, normalise_entities, plan_job
from api.models import (
    AuditEntry,
    AuditList,
    CheckLine,
    ConnectionUpdate,
    ConnectionView,
    EntityStatus,
    ErrorBody,
    Health,
    JobList,
    JobStep,
    JobView,
    MetricsFigures,
    SyncStartRequest,
    SyncStatus,
    TestConnectionRequest,
    TestConnectionResponse,
    WhoAmI,
)
from api.schedule import Scheduler
from api.settings import ApiSettings
from api.status import Scrape, build_status, scrape_stages
from api.store import ApiStore, JobConflictError, JobRecord
from pacs_sync.errors import ErrorCode, PacsSyncError
from pacs_sync.metrics import ApiMetrics
from sink.tables import ENTITIES

logger = logging.getLogger(__name__)

PREFIX = "/api/v1/pacs-sync"
API_VERSION = "1.0.0"
_CONTEXT = b"pacs-sync-api:connection_settings:pacs:v1"
_PACS_CODE = re.compile(r"\b(PACS-\d{3})\b")
_SWEEP_S = 10.0
_MAX_CONCURRENT_TESTS = 4
_JOB_ID_MAX = 2**63 - 1

Scraper = Callable[[], Awaitable[dict[str, Scrape]]]

bearer = HTTPBearer(
    auto_error=False,
    description="A token from `pacs-sync token create --role viewer|operator|admin`",
)


class ApiError(Exception):
    """An error answered as ``ErrorBody`` with ``status``."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        """Build the error response."""
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=error, code=code, message=message, **extra)
        self.headers = dict(headers or {})


@dataclass
class ApiState:
    """What the request handlers share (one per app)."""

    settings: ApiSettings
    keys: TokenKeys
    credentials_key: bytes | None
    launcher: JobLauncher
    scraper: Scraper
    metrics: ApiMetrics
    schedule_enabled: bool
    store: ApiStore | None = None
    scheduler: Scheduler | None = None
    tests: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_MAX_CONCURRENT_TESTS))
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    startup_error: BaseException | None = None

    @property
    def db(self) -> ApiStore:
        """The open store (between start-up and shutdown)."""
        if self.store is None:
            raise ApiError(503, "unavailable", "the API is starting or stopping", code=None)
        return self.store


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "no valid bearer token (PACS-002)",
        403: "the token's role may not do this (PACS-002)",
        404: "no such object",
        409: "another job is queued or running",
        422: "malformed request (PACS-008)",
        503: "the target database or a required key is unavailable",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}


def state_of(request: Request) -> ApiState:
    """The app's shared state."""
    state: ApiState = request.app.state.api
    return state


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency: a valid token whose role covers ``role`` (401/403 otherwise, 403s audited)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    ) -> Principal:
        state = state_of(request)
        if credentials is None:
            raise ApiError(
                401,
                "unauthorized",
                "no bearer token: send Authorization: Bearer <token> (pacs-sync token create)",
                code=ErrorCode.AUTHENTICATION_FAILED.value,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            principal = verify_token(state.keys, credentials.credentials)
        except AuthError as exc:
            raise ApiError(
                401,
                "unauthorized",
                exc.reason,
                code=ErrorCode.AUTHENTICATION_FAILED.value,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None
        request.state.principal = principal
        if not principal.allows(role):
            if request.method not in ("GET", "HEAD"):
                await state.db.audit(
                    principal.subject,
                    principal.role.value,
                    _action(request),
                    "denied",
                    detail={"needs": role.value},
                    client=_client(request),
                )
            raise ApiError(
                403,
                "forbidden",
                f"role {principal.role.value} may not do this; it needs {role.value} or higher",
                code=ErrorCode.AUTHENTICATION_FAILED.value,
            )
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def _action(request: Request) -> str:
    path = request.url.path.removeprefix(PREFIX).strip("/") or "/"
    return {
        "sync/start": "sync.start",
        "connection": "connection.update",
        "test-connection": "connection.test",
    }.get(path, f"{request.method.lower()} {path}")


# ---- conversions -------------------------------------------------------------------------------


def job_view(job: JobRecord) -> JobView:
    """A job record as the API shows it."""
    return JobView(
        job_id=job.job_id,
        kind=job.kind,  # type: ignore[arg-type]  # checked by the table's CHECK constraint
        entities=job.entities,
        state=job.state,  # type: ignore[arg-type]
        trigger=job.trigger,  # type: ignore[arg-type]
        requested_by=job.requested_by,
        requested_role=job.requested_role,
        steps=[JobStep(name=s["name"], argv=list(s["argv"])) for s in job.plan.get("steps", [])],
        progress=job.progress,
        result=job.result,
        exit_code=job.exit_code,
        error=job.error,
        output_tail=job.output_tail,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _safe_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Location, message and type of each error; never the input (it may hold a password)."""
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": err.get("type"),
        }
        for err in exc.errors()
    ]


# ---- connection settings -------------------------------------------------------------------------


async def _open_connection(state: ApiState) -> dict[str, Any] | None:
    """The saved connection settings, decrypted (None when none are saved)."""
    sealed = await state.db.load_connection()
    if sealed is None:
        return None
    if state.credentials_key is None:
        raise ApiError(
            503,
            "credentials_key_missing",
            "connection settings are saved but no PACS_API_CREDENTIALS_KEY (or _KEY_FILE) is configured",
            code=ErrorCode.CONFIGURATION_INVALID.value,
        )
    try:
        plain = crypto.open_sealed(state.credentials_key, sealed.sealed, context=_CONTEXT)
    except crypto.SealError as exc:
        raise ApiError(
            503, "credentials_unreadable", str(exc), code=ErrorCode.CONFIGURATION_INVALID.value
        ) from None
    values: dict[str, Any] = json.loads(plain)
    values["updated_at"] = sealed.updated_at
    values["updated_by"] = sealed.updated_by
    return values


def _connection_env(saved: Mapping[str, Any] | None) -> dict[str, str]:
    if not saved:
        return {}
    return {
        "PACS_DB_HOST": str(saved["host"]),
        "PACS_DB_PORT": str(saved["port"]),
        "PACS_DB_NAME": str(saved["database"]),
        "PACS_DB_USER": str(saved["username"]),
        "PACS_DB_PASSWORD": str(saved["password"]),
        "PACS_DB_ENCRYPT": "true" if saved.get("encrypt", True) else "false",
    }


def _connection_view(saved: Mapping[str, Any] | None) -> ConnectionView:
    if not saved:
        return ConnectionView(saved=False)
    return ConnectionView(
        saved=True,
        host=saved["host"],
        port=saved["port"],
        database=saved["database"],
        username=saved["username"],
        encrypt=saved.get("encrypt", True),
        password_set=bool(saved.get("password")),
        updated_at=saved.get("updated_at"),
        updated_by=saved.get("updated_by"),
    )


def _check_connection_blocking(values: Mapping[str, Any], timeout_s: float) -> list[tuple[str, bool, str]]:
    from producer.check import check_connection
    from producer.settings import ProducerSettings

    settings = ProducerSettings.load(
        db_host=values["host"],
        db_port=values["port"],
        db_name=values["database"],
        db_user=values["username"],
        db_password=values["password"],
        db_encrypt=values["encrypt"],
        db_login_timeout_s=max(1, math.ceil(timeout_s)),
    )
    return [(r.name, r.ok, r.detail) for r in check_connection(settings)]


# ---- jobs ----------------------------------------------------------------------------------------


async def start_job(
    state: ApiState, kind: JobKind, entities: list[str] | None, *, trigger: str, actor: str, role: str
) -> JobRecord:
    """Record and launch a job (JobConflictError when one is active)."""
    plan = plan_job(state.settings, kind, normalise_entities(entities))
    env = job_environment(state.settings, _connection_env(await _open_connection(state)))
    job = await state.db.create_job(
        kind=kind.value,
        entities=plan["entities"],
        trigger=trigger,
        requested_by=actor,
        requested_role=role,
        plan=plan,
        stale_after_s=state.settings.api_job_stale_after_s,
    )
    try:
        await state.launcher.launch(job.job_id, env)
    except Exception as exc:
        logger.exception("job %d: the executor could not be started", job.job_id)
        await state.db.finish_job(
            job.job_id,
            state="failed",
            exit_code=None,
            error=f"the executor could not be started: {exc}",
            output_tail="",
            progress={},
            result={},
        )
        raise
    state.metrics.jobs_started.labels(kind.value, trigger).inc()
    logger.info("job %d (%s %s) started by %s", job.job_id, kind.value, ",".join(job.entities), actor)
    return job


async def _scheduled_fire(state: ApiState) -> None:
    kind = JobKind(state.settings.api_scheduled_job)
    try:
        job = await start_job(state, kind, None, trigger="schedule", actor="schedule", role="system")
    except JobConflictError as exc:
        await state.db.audit(
            "schedule",
            "system",
            "schedule.fire",
            "refused",
            detail={"kind": kind.value, "reason": str(exc)},
        )
        logger.info("schedule: %s; skipped", exc)
        return
    await state.db.audit(
        "schedule",
        "system",
        "schedule.fire",
        "succeeded",
        target=f"job/{job.job_id}",
        detail={"kind": kind.value},
    )


async def _sweep(state: ApiState) -> None:
    while True:
        await asyncio.sleep(_SWEEP_S)
        try:
            await state.db.fail_stale_jobs(state.settings.api_job_stale_after_s)
        except PacsSyncError as exc:
            logger.warning("stale-job sweep: %s", exc)


# ---- the app -------------------------------------------------------------------------------------


def create_app(
    settings: ApiSettings,
    *,
    launcher: JobLauncher | None = None,
    scraper: Scraper | None = None,
    schedule: bool | None = None,
) -> FastAPI:
    """Build the app; the database is opened and migrated when it starts (lifespan)."""
    keys = settings.token_keys()
    metrics = ApiMetrics.create()

    async def default_scraper() -> dict[str, Scrape]:
        return await scrape_stages(settings.api_stage_metrics, timeout_s=settings.api_scrape_timeout_s)

    state = ApiState(
        settings=settings,
        keys=keys,
        credentials_key=settings.credentials_key(),
        launcher=launcher or SubprocessLauncher(settings.state_dir / "api" / "jobs"),
        scraper=scraper or default_scraper,
        metrics=metrics,
        schedule_enabled=(settings.api_scheduled_job != "none") if schedule is None else schedule,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            store = await ApiStore.connect(settings.target_parts)
        except BaseException as exc:
            state.startup_error = exc
            raise
        state.store = store
        try:
            await store.migrate()
            await store.fail_stale_jobs(settings.api_job_stale_after_s)
            state.tasks.append(asyncio.create_task(_sweep(state), name="pacs-sync-api-sweep"))
            if state.schedule_enabled:
                state.scheduler = Scheduler(settings.sync_schedule, lambda: _scheduled_fire(state))
                state.scheduler.start()
            logger.info("API ready (%s)", store.server)
        except BaseException as exc:
            state.startup_error = exc
            await store.close()
            state.store = None
            raise
        try:
            yield
        finally:
            if state.scheduler is not None:
                await state.scheduler.stop()
            for task in state.tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.tasks.clear()
            await state.launcher.aclose()
            await store.close()
            state.store = None

    app = FastAPI(
        title="TerraFusion PACS Sync management API",
        version=API_VERSION,
        description=__doc__,
        lifespan=lifespan,
        openapi_url=None,  # served below, behind a token
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = state
    _install_handlers(app)
    _install_middleware(app, state)
    app.include_router(_router(state))
    _install_dashboard(app)

    @app.get("/health", response_model=Health, tags=["health"], responses=_errors(503))
    async def health() -> JSONResponse:
        """Liveness and the database connection (no token needed)."""
        try:
            await state.db.ping()
        except (PacsSyncError, ApiError):
            return JSONResponse(Health(status="degraded", database="down").model_dump(), status_code=503)
        return JSONResponse(Health(status="ok", database="up").model_dump())

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            **_errors(401, 403),
        },
    )
    async def prometheus_metrics(principal: Viewer) -> Response:
        """Prometheus exposition: the API's requests and jobs, the target's rows per entity."""
        rows = await state.db.entity_rows(list(ENTITIES))
        for entity, found in rows.items():
            metrics.entity_rows.labels(entity, "live").set(found.live)
            metrics.entity_rows.labels(entity, "deleted").set(found.deleted)
        counts = await state.db.job_counts()
        for job_state in ("queued", "running", "succeeded", "failed", "cancelled"):
            metrics.jobs.labels(job_state).set(counts.get(job_state, 0))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document (no database, no configured keys needed: it depends on neither)."""
    settings = ApiSettings.load(
        api_jwt_secret=secrets.token_urlsafe(48),
        api_jwt_public_key_file=None,
        api_credentials_key=None,
        api_credentials_key_file=None,
    )
    document: dict[str, Any] = create_app(settings, schedule=False).openapi()
    return document


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            exc.body.model_dump(exclude_none=True), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _safe_details(exc)
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p not in ("body",)) or "request"
        message = f"{where}: {first['msg']}" + (f" (and {len(details) - 1} more)" if len(details) > 1 else "")
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is not None and request.method not in ("GET", "HEAD"):
            with contextlib.suppress(PacsSyncError, ApiError):
                await state_of(request).db.audit(
                    principal.subject,
                    principal.role.value,
                    _action(request),
                    "invalid",
                    detail={"errors": details[:10]},
                    client=_client(request),
                )
        body = ErrorBody(
            error="invalid_request",
            code=ErrorCode.CONFIGURATION_INVALID.value,
            message=message,
            details=details,
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI cannot even decode: a malformed request like any other
            body = ErrorBody(
                error="invalid_request",
                code=ErrorCode.CONFIGURATION_INVALID.value,
                message=f"body: {exc.detail}",
            )
            return JSONResponse(body.model_dump(exclude_none=True), status_code=422)
        slug = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = ErrorBody(error=slug, message=str(exc.detail))
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(PacsSyncError)
    async def pacs_error(request: Request, exc: PacsSyncError) -> JSONResponse:
        unavailable = exc.retriable or exc.code in (
            ErrorCode.CONNECTION_UNAVAILABLE,
            ErrorCode.AUTHENTICATION_FAILED,
        )
        logger.error("%s %s: %s", request.method, request.url.path, exc)
        body = ErrorBody(
            error="unavailable" if unavailable else "internal",
            code=exc.code.value,
            message="the target database is unavailable"
            if unavailable
            else "internal error; see the API log",
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503 if unavailable else 500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        body = ErrorBody(error="internal", message="internal error; see the API log")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=500)


_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


def _install_middleware(app: FastAPI, state: ApiState) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        state.metrics.requests.labels(template, request.method, str(response.status_code)).inc()
        state.metrics.request_duration.labels(template).observe(time.perf_counter() - started)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.url.path.startswith(PREFIX) or request.url.path == "/metrics":
            response.headers.setdefault("Cache-Control", "no-store")
        if state.settings.tls:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response


def _dashboard_dir() -> Path:
    return Path(str(resources.files("api") / "dashboard"))


def _install_dashboard(app: FastAPI) -> None:
    folder = _dashboard_dir()
    app.mount("/pacs-sync/assets", StaticFiles(directory=folder), name="dashboard-assets")

    @app.get("/pacs-sync", include_in_schema=False)
    async def dashboard() -> FileResponse:
        """The dashboard page (static: it holds no data and asks for a token)."""
        return FileResponse(folder / "index.html", media_type="text/html")


def _router(state: ApiState) -> APIRouter:
    router = APIRouter(prefix=PREFIX)
    settings = state.settings

    @router.get("/whoami", response_model=WhoAmI, tags=["auth"], responses=_errors(401, 403))
    async def whoami(principal: Viewer) -> WhoAmI:
        """The caller's subject, role, token expiry and what it may do."""
        return WhoAmI(
            subject=principal.subject,
            role=principal.role.value,
            expires_at=principal.expires_at,
            permissions=[name for name, needed in PERMISSIONS.items() if principal.allows(needed)],
        )

    @router.get("/openapi.json", tags=["meta"], responses=_errors(401, 403))
    async def openapi(request: Request, principal: Viewer) -> JSONResponse:
        """This API's OpenAPI document."""
        return JSONResponse(request.app.openapi())

    @router.post(
        "/test-connection",
        response_model=TestConnectionResponse,
        tags=["connection"],
        responses=_errors(401, 403, 422),
    )
    async def test_connection(
        body: TestConnectionRequest, request: Request, principal: Operator
    ) -> TestConnectionResponse:
        """Try to log in to a PACS server and read its CDC set-up; ok, or the PACS code and cause."""
        timeout_s = body.timeout_s or settings.api_test_connection_timeout_s
        values: dict[str, Any] = body.model_dump(exclude={"password", "timeout_s"})
        if body.password is not None:
            values["password"] = body.password.get_secret_value()
        else:
            values["password"] = await _saved_password_for(state, values)
        started = time.monotonic()
        answer = await _run_check(state, values, timeout_s)
        answer.seconds = round(time.monotonic() - started, 3)
        await state.db.audit(
            principal.subject,
            principal.role.value,
            "connection.test",
            "succeeded" if answer.ok else "failed",
            target=f"{body.host}:{body.port}/{body.database}",
            detail={"code": answer.code, "seconds": answer.seconds},
            client=_client(request),
        )
        return answer

    @router.get(
        "/connection", response_model=ConnectionView, tags=["connection"], responses=_errors(401, 403, 503)
    )
    async def get_connection(principal: Operator) -> ConnectionView:
        """The saved PACS connection settings, without the password."""
        return _connection_view(await _open_connection(state))

    @router.put(
        "/connection",
        response_model=ConnectionView,
        tags=["connection"],
        responses=_errors(401, 403, 422, 503),
    )
    async def put_connection(body: ConnectionUpdate, request: Request, principal: Admin) -> ConnectionView:
        """Save the PACS connection settings, sealed with AES-256-GCM; jobs started later use them."""
        shown = body.model_dump(exclude={"password"})
        if state.credentials_key is None:
            await state.db.audit(
                principal.subject,
                principal.role.value,
                "connection.update",
                "failed",
                detail={"reason": "no credentials key configured"},
                client=_client(request),
            )
            raise ApiError(
                503,
                "credentials_key_missing",
                "cannot save connection settings: "
                "set PACS_API_CREDENTIALS_KEY or PACS_API_CREDENTIALS_KEY_FILE",
                code=ErrorCode.CONFIGURATION_INVALID.value,
            )
        plain = json.dumps({**shown, "password": body.password.get_secret_value()}).encode()
        sealed = crypto.seal(state.credentials_key, plain, context=_CONTEXT)
        await state.db.save_connection(sealed, crypto.key_id(state.credentials_key).hex(), principal.subject)
        await state.db.audit(
            principal.subject,
            principal.role.value,
            "connection.update",
            "succeeded",
            target=f"{body.host}:{body.port}/{body.database}",
            detail=shown,
            client=_client(request),
        )
        logger.info("connection settings changed by %s (%s:%d)", principal.subject, body.host, body.port)
        return _connection_view(await _open_connection(state))

    @router.post(
        "/sync/start",
        response_model=JobView,
        status_code=202,
        tags=["sync"],
        responses=_errors(401, 403, 409, 422, 503),
    )
    async def sync_start(body: SyncStartRequest, request: Request, principal: Operator) -> JobView:
        """Start a full, incremental or resync job (one at a time: 409 while another is active)."""
        kind = JobKind(body.sync_type)
        entities: list[str] | None = [str(e) for e in body.entities] if body.entities else None
        try:
            job = await start_job(
                state, kind, entities, trigger="api", actor=principal.subject, role=principal.role.value
            )
        except JobConflictError as exc:
            await state.db.audit(
                principal.subject,
                principal.role.value,
                "sync.start",
                "refused",
                detail={"sync_type": kind.value, "entities": entities, "reason": str(exc)},
                client=_client(request),
            )
            raise ApiError(
                409,
                "conflict",
                str(exc),
                running_job=exc.active.job_id if exc.active else None,
            ) from None
        except (ApiError, PacsSyncError) as exc:
            with contextlib.suppress(PacsSyncError, ApiError):
                await state.db.audit(
                    principal.subject,
                    principal.role.value,
                    "sync.start",
                    "failed",
                    detail={"sync_type": kind.value, "reason": str(exc)},
                    client=_client(request),
                )
            raise
        await state.db.audit(
            principal.subject,
            principal.role.value,
            "sync.start",
            "succeeded",
            target=f"job/{job.job_id}",
            detail={"sync_type": kind.value, "entities": job.entities},
            client=_client(request),
        )
        return job_view(job)

    @router.get("/sync/status", response_model=SyncStatus, tags=["sync"], responses=_errors(401, 403, 503))
    async def sync_status(principal: Viewer) -> SyncStatus:
        """Per entity: state, rows, events, invalid, lag, latency, last position, progress."""
        return SyncStatus.model_validate(await _status(state))

    @router.get("/sync/jobs", response_model=JobList, tags=["sync"], responses=_errors(401, 403, 422, 503))
    async def list_jobs(principal: Viewer, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> JobList:
        """Recent jobs, newest first."""
        return JobList(jobs=[job_view(j) for j in await state.db.list_jobs(limit)])

    @router.get(
        "/sync/jobs/{job_id}",
        response_model=JobView,
        tags=["sync"],
        responses=_errors(401, 403, 404, 422, 503),
    )
    async def get_job(principal: Viewer, job_id: Annotated[int, PathParam(ge=1, le=_JOB_ID_MAX)]) -> JobView:
        """One job."""
        job = await state.db.get_job(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id}")
        return job_view(job)

    @router.get("/metrics", response_model=MetricsFigures, tags=["metrics"], responses=_errors(401, 403, 503))
    async def metrics_json(principal: Viewer) -> MetricsFigures:
        """The figures behind the dashboard, as JSON (Prometheus text is at /metrics)."""
        status = await _status(state)
        entities: dict[str, dict[str, float | int | None]] = {}
        for item in status["entities"]:
            entities[item["entity"]] = {
                "rows_live": item["rows"]["live"],
                "rows_deleted": item["rows"]["deleted"],
                "events": item["events"],
                "processed": item["processed"],
                "written": item["written"],
                "invalid": item["invalid"],
                "dlq": item["dlq"],
                "lag": item["lag"],
                "latency_count": item["latency"]["count"],
                "latency_sum_s": item["latency"]["sum_s"],
                "latency_mean_s": item["latency"]["mean_s"],
                "latency_p95_s": item["latency"]["p95_s"],
                "snapshot_progress": item["progress"]["snapshot"],
            }
        totals: dict[str, float | int | None] = {}
        for name in (
            "rows_live",
            "rows_deleted",
            "events",
            "processed",
            "written",
            "invalid",
            "dlq",
            "lag",
            "latency_count",
            "latency_sum_s",
        ):
            values = [float(v) for e in entities.values() if (v := e[name]) is not None]
            totals[name] = (
                (int(sum(values)) if name != "latency_sum_s" else round(sum(values), 6)) if values else None
            )
        count, total = totals.get("latency_count"), totals.get("latency_sum_s")
        totals["latency_mean_s"] = round(total / count, 6) if count and total is not None else None
        return MetricsFigures(
            generated_at=status["generated_at"],
            stages={name: s["state"] == "up" for name, s in status["stages"].items()},
            entities=entities,
            totals=totals,
            jobs=await state.db.job_counts(),
        )

    @router.get("/audit", response_model=AuditList, tags=["audit"], responses=_errors(401, 403, 422, 503))
    async def audit(principal: Operator, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> AuditList:
        """Recent audit entries, newest first."""
        return AuditList(entries=[AuditEntry(**vars(e)) for e in await state.db.list_audit(limit)])

    return router


async def _status(state: ApiState) -> dict[str, Any]:
    entities = list(ENTITIES)
    rows, scrapes, running = await asyncio.gather(
        state.db.entity_rows(entities), state.scraper(), state.db.active_job()
    )
    for name, scrape in scrapes.items():
        state.metrics.stage_up.labels(name).set(1 if scrape.up else 0)
    status = build_status(entities, rows, scrapes, running, now=datetime.now(tz=UTC))
    for item in status["entities"]:
        EntityStatus.model_validate(item)  # the shape the spec promises
    return status


async def _saved_password_for(state: ApiState, values: Mapping[str, Any]) -> str:
    """The saved password, only for the saved server and login (else the test fails with PACS-002)."""
    saved = await _open_connection(state)
    same = saved is not None and all(
        saved.get(k) == values[k] for k in ("host", "port", "database", "username")
    )
    if saved is None or not same:
        raise ApiError(
            422,
            "invalid_request",
            "password: required unless host, port, database and username are the saved connection's",
            code=ErrorCode.CONFIGURATION_INVALID.value,
        )
    return str(saved["password"])


async def _run_check(state: ApiState, values: Mapping[str, Any], timeout_s: float) -> TestConnectionResponse:
    async with state.tests:
        try:
            lines = await asyncio.wait_for(
                asyncio.to_thread(_check_connection_blocking, values, timeout_s), timeout=timeout_s
            )
        except TimeoutError:
            return TestConnectionResponse(
                ok=False,
                code=ErrorCode.CONNECTION_UNAVAILABLE.value,
                cause=f"no answer from {values['host']}:{values['port']} within {timeout_s:g} s",
                seconds=timeout_s,
            )
        except PacsSyncError as exc:
            return TestConnectionResponse(ok=False, code=exc.code.value, cause=exc.message, seconds=0.0)
        except Exception as exc:  # noqa: BLE001  # a driver's own error for an odd host name (IDNA): unreachable
            logger.info("test-connection to %s: %s", values["host"], type(exc).__name__)
            return TestConnectionResponse(
                ok=False,
                code=ErrorCode.CONNECTION_UNAVAILABLE.value,
                cause=f"cannot reach {values['host']}:{values['port']}: {exc}",
                seconds=0.0,
            )
    checks = [CheckLine(name=n, ok=ok, detail=d) for n, ok, d in lines]
    failed = [c for c in checks if not c.ok]
    if not failed:
        return TestConnectionResponse(ok=True, checks=checks, seconds=0.0)
    match = _PACS_CODE.search(failed[0].detail)
    return TestConnectionResponse(
        ok=False,
        code=match.group(1) if match else ErrorCode.CDC_NOT_ENABLED.value,
        cause=f"{failed[0].name}: {failed[0].detail}",
        checks=checks,
        seconds=0.0,
    )
