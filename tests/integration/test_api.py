"""The management API on a real target database, in-process (httpx ASGI transport, real lifespan).

Jobs run as real detached executor processes with short real command lines (PACS_API_JOB_COMMANDS),
so a job's record, its survival of an API restart, the 409 on a second start and the audit rows are
the real thing; only the pipeline commands themselves are stand-ins.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import jwt
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import Role, issue_token
from api.settings import ApiSettings
from pacs_sync.stack import LocalStack
from tests.integration.conftest import EmulatedPacs

SECRET = "integration-test-secret-0123456789abcdef"
KEY = bytes(range(32))
PREFIX = "/api/v1/pacs-sync"
END_STATES = {"succeeded", "failed", "cancelled"}
PY = sys.executable


def _script(code: str) -> list[str]:
    return [PY, "-c", code]


QUICK = _script("print('quick job done')")
SLOW = _script("import time; print('slow job running', flush=True); time.sleep(4); print('slow job done')")
SHOW_ENV = _script(
    "import os; print('host=' + os.environ.get('PACS_DB_HOST', '-')); "
    "print('secret-leaked' if 'PACS_API_JWT_SECRET' in os.environ else 'secret-withheld'); "
    "print('job=' + os.environ.get('PACS_API_JOB_ID', '-'))"
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(dsn: str, state_dir: Path, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "target_dsn": dsn,
        "api_jwt_secret": SECRET,
        "api_credentials_key": base64.b64encode(KEY).decode(),
        "state_dir": state_dir,
        "api_scheduled_job": "none",
        "api_job_commands": {"full": SLOW, "incremental": QUICK, "resync": QUICK, "verify": QUICK},
        "api_stage_metrics": {
            stage: f"http://127.0.0.1:{_closed_port()}/metrics" for stage in ("producer", "processor", "sink")
        },
        "api_scrape_timeout_s": 0.5,
    }
    values.update(overrides)
    return ApiSettings.load(**values)


def token(
    settings: ApiSettings, role: Role | str, *, ttl: timedelta = timedelta(hours=1), ago: float = 0
) -> str:
    keys = settings.token_keys()
    if isinstance(role, Role):
        now = datetime.now(tz=UTC) - timedelta(seconds=ago)
        return issue_token(keys, subject=f"test-{role.value}", role=role, ttl=ttl, now=now)
    now = datetime.now(tz=UTC)
    claims = {"sub": "test-odd", "role": role, "aud": keys.audience, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def auth(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan (database opened and migrated) and a client on it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=30) as client:
            yield client


async def wait_for_job(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: int, timeout: float = 60
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"{PREFIX}/sync/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        if response.json()["state"] in END_STATES:
            return response.json()
        await asyncio.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish within {timeout} s")


@dataclass
class Endpoint:
    method: str
    path: str
    role: Role
    body: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def endpoints(emulated: dict[str, Any] | None = None) -> list[Endpoint]:
    connection = emulated or {
        "host": "127.0.0.1",
        "port": _closed_port(),
        "database": "pacs",
        "username": "nobody",
        "password": "x",
        "encrypt": False,
        "timeout_s": 2,
    }
    return [
        Endpoint("GET", f"{PREFIX}/whoami", Role.VIEWER),
        Endpoint("GET", f"{PREFIX}/sync/status", Role.VIEWER),
        Endpoint("GET", f"{PREFIX}/sync/jobs", Role.VIEWER),
        Endpoint("GET", f"{PREFIX}/sync/jobs/1", Role.VIEWER),
        Endpoint("GET", f"{PREFIX}/metrics", Role.VIEWER),
        Endpoint("GET", "/metrics", Role.VIEWER),
        Endpoint("GET", f"{PREFIX}/openapi.json", Role.VIEWER),
        Endpoint("GET", f"{PREFIX}/audit", Role.OPERATOR),
        Endpoint("GET", f"{PREFIX}/connection", Role.OPERATOR),
        Endpoint("POST", f"{PREFIX}/test-connection", Role.OPERATOR, connection),
        Endpoint("POST", f"{PREFIX}/sync/start", Role.OPERATOR, {"sync_type": "incremental"}),
        Endpoint(
            "PUT",
            f"{PREFIX}/connection",
            Role.ADMIN,
            {
                "host": "pacs-sql.test",
                "port": 1433,
                "database": "PACS",
                "username": "sync",
                "password": "pw-1",
            },
        ),
    ]


@pytest.fixture
def api_settings(target_database: str, tmp_path: Path) -> ApiSettings:
    return settings_for(target_database, tmp_path / "state")


@pytest.fixture
def api_target(stack: LocalStack, target_dsn: str, unique_name: str) -> Iterator[str]:
    """A fresh target database beside an emulated PACS one (``target_database`` would take its name)."""
    parts = urlsplit(target_dsn)
    name = f"{unique_name}_tgt"
    root = stack.postgres.connect()
    root.cursor().execute(f'CREATE DATABASE "{name}" OWNER "{parts.username}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        root.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        root.close()


@pytest.fixture
def emulated_connection(emulated_pacs: EmulatedPacs, stack: LocalStack) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": stack.settings.stack_postgres_port,
        "database": emulated_pacs.database,
        "username": emulated_pacs.reader_user,
        "password": emulated_pacs.reader_password,
        "encrypt": False,
        "timeout_s": 10,
    }


# ---- authentication and roles: every endpoint x (no token, expired, wrong role, right role) ----


async def test_health_needs_no_token(api_settings: ApiSettings) -> None:
    async with running(create_app(api_settings)) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up"}


async def test_every_endpoint_refuses_a_missing_token(api_settings: ApiSettings) -> None:
    async with running(create_app(api_settings)) as client:
        for endpoint in endpoints():
            response = await client.request(endpoint.method, endpoint.path, json=endpoint.body)
            assert response.status_code == 401, f"{endpoint}: {response.text}"
            assert response.json()["code"] == "PACS-002", str(endpoint)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), str(endpoint)
            # a malformed header is no better than none
            bad = await client.request(
                endpoint.method,
                endpoint.path,
                json=endpoint.body,
                headers={"Authorization": "Basic dXNlcg=="},
            )
            assert bad.status_code == 401, f"{endpoint}: {bad.text}"


async def test_every_endpoint_refuses_an_expired_token(api_settings: ApiSettings) -> None:
    expired = token(api_settings, Role.ADMIN, ttl=timedelta(minutes=5), ago=3600)
    async with running(create_app(api_settings)) as client:
        for endpoint in endpoints():
            response = await client.request(
                endpoint.method, endpoint.path, json=endpoint.body, headers=auth(expired)
            )
            assert response.status_code == 401, f"{endpoint}: {response.text}"
            assert "expired" in response.json()["message"], str(endpoint)


async def test_every_endpoint_refuses_a_token_for_another_audience_or_key(api_settings: ApiSettings) -> None:
    other_audience = jwt.encode(
        {
            "sub": "x",
            "role": "admin",
            "aud": "other",
            "iat": datetime.now(tz=UTC),
            "exp": datetime.now(tz=UTC) + timedelta(hours=1),
        },
        SECRET,
        algorithm="HS256",
    )
    other_key = jwt.encode(
        {
            "sub": "x",
            "role": "admin",
            "aud": "pacs-sync",
            "iat": datetime.now(tz=UTC),
            "exp": datetime.now(tz=UTC) + timedelta(hours=1),
        },
        "another-secret-another-secret-another",
        algorithm="HS256",
    )
    async with running(create_app(api_settings)) as client:
        for endpoint in endpoints():
            for bad in (other_audience, other_key):
                response = await client.request(
                    endpoint.method, endpoint.path, json=endpoint.body, headers=auth(bad)
                )
                assert response.status_code == 401, f"{endpoint}: {response.text}"


async def test_every_endpoint_refuses_the_wrong_role(api_settings: ApiSettings, target_database: str) -> None:
    """A role below the endpoint's gets 403 (mutations are audited as denied); an unknown role gets 401."""
    lower = {Role.OPERATOR: Role.VIEWER, Role.ADMIN: Role.OPERATOR}
    async with running(create_app(api_settings)) as client:
        for endpoint in endpoints():
            unknown = await client.request(
                endpoint.method, endpoint.path, json=endpoint.body, headers=auth(token(api_settings, "guest"))
            )
            assert unknown.status_code == 401, f"{endpoint}: {unknown.text}"
            if endpoint.role not in lower:
                continue
            response = await client.request(
                endpoint.method,
                endpoint.path,
                json=endpoint.body,
                headers=auth(token(api_settings, lower[endpoint.role])),
            )
            assert response.status_code == 403, f"{endpoint}: {response.text}"
            assert response.json()["code"] == "PACS-002"
            assert endpoint.role.value in response.json()["message"]
    conn = await asyncpg.connect(target_database)
    try:
        denied = await conn.fetch(
            "SELECT actor, role, action FROM pacs_sync_api.audit WHERE outcome = 'denied'"
        )
        jobs = await conn.fetchval("SELECT count(*) FROM pacs_sync_api.jobs")
    finally:
        await conn.close()
    assert {(r["actor"], r["role"], r["action"]) for r in denied} == {
        ("test-viewer", "viewer", "connection.test"),
        ("test-viewer", "viewer", "sync.start"),
        ("test-operator", "operator", "connection.update"),
    }
    assert jobs == 0  # nothing was started by a refused call


async def test_every_endpoint_answers_the_right_role(
    api_target: str, tmp_path: Path, emulated_connection: dict[str, Any]
) -> None:
    api_settings = settings_for(api_target, tmp_path)
    async with running(create_app(api_settings)) as client:
        for endpoint in endpoints(emulated_connection):
            for role in Role:
                if not role.allows(endpoint.role):
                    continue
                headers = auth(token(api_settings, role))
                response = await client.request(
                    endpoint.method, endpoint.path, json=endpoint.body, headers=headers
                )
                if endpoint.path.endswith("/sync/start"):
                    expected = {202, 409}  # a second role's start may find the first one's job still active
                elif endpoint.path.endswith("/sync/jobs/1"):
                    expected = {200, 404}
                else:
                    expected = {200}
                assert response.status_code in expected, f"{endpoint} as {role}: {response.text}"
                if response.status_code == 202:
                    await wait_for_job(client, headers, response.json()["job_id"])
        whoami = await client.get(f"{PREFIX}/whoami", headers=auth(token(api_settings, Role.OPERATOR)))
        assert whoami.json()["role"] == "operator"
        assert "start_sync" in whoami.json()["permissions"]
        assert "change_connection" not in whoami.json()["permissions"]


# ---- malformed requests ----


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("POST", "/sync/start", {"sync_type": "weekly"}, "sync_type"),
        ("POST", "/sync/start", {}, "sync_type"),
        ("POST", "/sync/start", {"sync_type": "full", "entities": ["parcels"]}, "entities"),
        ("POST", "/sync/start", {"sync_type": "full", "entities": []}, "entities"),
        ("POST", "/sync/start", {"sync_type": "full", "priority": 1}, "priority"),
        ("POST", "/sync/start", "not json", "body"),
        ("POST", "/test-connection", {"host": "h", "port": 70000, "database": "d", "username": "u"}, "port"),
        ("POST", "/test-connection", {"host": "h", "port": 1433, "database": "d"}, "username"),
        ("POST", "/test-connection", {"host": "a b", "port": 1433, "database": "d", "username": "u"}, "host"),
        (
            "POST",
            "/test-connection",
            {"host": "h", "port": 1433, "database": "d", "username": "u"},
            "password",
        ),
        ("PUT", "/connection", {"host": "h", "port": 1433, "database": "d", "username": "u"}, "password"),
        ("GET", "/sync/jobs?limit=0", None, "limit"),
        ("GET", "/sync/jobs/abc", None, "job_id"),
        ("GET", "/sync/jobs/99999999999999999999", None, "job_id"),
    ],
)
async def test_malformed_requests_get_422_with_a_message(
    api_settings: ApiSettings, method: str, path: str, body: Any, fragment: str
) -> None:
    headers = auth(token(api_settings, Role.ADMIN))
    async with running(create_app(api_settings)) as client:
        if isinstance(body, str):
            response = await client.request(
                method, PREFIX + path, content=body, headers={**headers, "Content-Type": "application/json"}
            )
        else:
            response = await client.request(method, PREFIX + path, json=body, headers=headers)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_request"
    assert answer["code"] == "PACS-008"
    assert fragment in answer["message"] or fragment in json.dumps(answer.get("details")), answer


async def test_validation_errors_never_echo_a_password(api_settings: ApiSettings) -> None:
    headers = auth(token(api_settings, Role.ADMIN))
    body = {"host": "h", "port": "not-a-port", "database": "d", "username": "u", "password": "top-secret-pw"}
    async with running(create_app(api_settings)) as client:
        response = await client.put(f"{PREFIX}/connection", json=body, headers=headers)
    assert response.status_code == 422
    assert "top-secret-pw" not in response.text


# ---- test-connection ----


async def test_test_connection_against_the_emulator_succeeds(
    api_target: str, tmp_path: Path, emulated_connection: dict[str, Any]
) -> None:
    api_settings = settings_for(api_target, tmp_path)
    async with running(create_app(api_settings)) as client:
        response = await client.post(
            f"{PREFIX}/test-connection",
            json=emulated_connection,
            headers=auth(token(api_settings, Role.OPERATOR)),
        )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["ok"] is True, answer
    assert answer["code"] is None
    assert {c["name"] for c in answer["checks"]} >= {"connect", "cdc enabled", "capture instances"}


async def test_test_connection_with_a_wrong_password_is_pacs_002(
    api_target: str, tmp_path: Path, emulated_connection: dict[str, Any]
) -> None:
    api_settings = settings_for(api_target, tmp_path)
    body = {**emulated_connection, "password": "wrong"}
    async with running(create_app(api_settings)) as client:
        response = await client.post(
            f"{PREFIX}/test-connection", json=body, headers=auth(token(api_settings, Role.OPERATOR))
        )
    assert response.json()["ok"] is False
    assert response.json()["code"] == "PACS-002"
    assert "wrong" not in response.text


async def test_test_connection_to_a_closed_port_is_pacs_001_within_its_timeout(
    api_settings: ApiSettings,
) -> None:
    body = {
        "host": "127.0.0.1",
        "port": _closed_port(),
        "database": "pacs",
        "username": "u",
        "password": "p",
        "timeout_s": 3,
    }
    async with running(create_app(api_settings)) as client:
        started = time.monotonic()
        response = await client.post(
            f"{PREFIX}/test-connection", json=body, headers=auth(token(api_settings, Role.OPERATOR))
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["ok"] is False
    assert response.json()["code"] == "PACS-001"
    assert elapsed < 3


async def test_test_connection_to_a_silent_server_is_pacs_001_at_its_timeout(
    api_settings: ApiSettings,
) -> None:
    """A server that accepts TCP but never answers: the answer comes when the timeout expires."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
    port = silent.getsockname()[1]
    body = {
        "host": "127.0.0.1",
        "port": port,
        "database": "pacs",
        "username": "u",
        "password": "p",
        "timeout_s": 2,
    }
    try:
        async with running(create_app(api_settings)) as client:
            started = time.monotonic()
            response = await client.post(
                f"{PREFIX}/test-connection", json=body, headers=auth(token(api_settings, Role.OPERATOR))
            )
            elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert response.json()["ok"] is False
    assert response.json()["code"] == "PACS-001"
    assert 1.5 <= elapsed < 4.5, elapsed


# ---- jobs ----


async def test_a_job_is_persisted_survives_an_api_restart_and_a_second_start_is_409(
    api_settings: ApiSettings, target_database: str
) -> None:
    operator = auth(token(api_settings, Role.OPERATOR))
    async with running(create_app(api_settings)) as client:
        started = await client.post(
            f"{PREFIX}/sync/start",
            json={"sync_type": "full", "entities": ["owners", "properties"]},
            headers=operator,
        )
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["kind"] == "full"
        assert job["entities"] == ["properties", "owners"]  # canonical order
        assert job["steps"][0]["argv"][-4:] == ["--entities", "properties", "--entities", "owners"]
        conflict = await client.post(f"{PREFIX}/sync/start", json={"sync_type": "resync"}, headers=operator)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["running_job"] == job["job_id"]
    # The API stops while the job runs; a new API instance sees the same job, still running, then done.
    async with running(create_app(api_settings)) as client:
        again = await client.get(f"{PREFIX}/sync/jobs/{job['job_id']}", headers=operator)
        assert again.status_code == 200
        assert again.json()["state"] in {"queued", "running"}
        conflict = await client.post(
            f"{PREFIX}/sync/start", json={"sync_type": "incremental"}, headers=operator
        )
        assert conflict.status_code == 409
        finished = await wait_for_job(client, operator, job["job_id"])
        assert finished["state"] == "succeeded", finished
        assert finished["exit_code"] == 0
        assert "slow job done" in finished["output_tail"]
        assert finished["progress"]["ratio"] == 1.0
        listed = await client.get(f"{PREFIX}/sync/jobs", headers=operator)
        assert [j["job_id"] for j in listed.json()["jobs"]] == [job["job_id"]]
        # Now a new start is accepted.
        second = await client.post(
            f"{PREFIX}/sync/start", json={"sync_type": "incremental"}, headers=operator
        )
        assert second.status_code == 202
        await wait_for_job(client, operator, second.json()["job_id"])
    conn = await asyncpg.connect(target_database)
    try:
        rows = await conn.fetch(
            "SELECT actor, role, action, outcome, target FROM pacs_sync_api.audit ORDER BY audit_id"
        )
    finally:
        await conn.close()
    seen = [(r["action"], r["outcome"]) for r in rows]
    assert ("sync.start", "succeeded") in seen
    assert seen.count(("sync.start", "refused")) == 2
    assert seen.count(("job.start", "started")) == 2
    assert seen.count(("job.finish", "succeeded")) == 2
    assert all(r["actor"] == "test-operator" and r["role"] == "operator" for r in rows)


async def test_a_failing_job_records_its_exit_code_and_output(target_database: str, tmp_path: Path) -> None:
    failing = _script(
        "import sys; print('working'); print('PACS-001: cannot reach PACS', file=sys.stderr); sys.exit(3)"
    )
    settings = settings_for(target_database, tmp_path, api_job_commands={"incremental": failing})
    headers = auth(token(settings, Role.OPERATOR))
    async with running(create_app(settings)) as client:
        started = await client.post(
            f"{PREFIX}/sync/start", json={"sync_type": "incremental"}, headers=headers
        )
        job = await wait_for_job(client, headers, started.json()["job_id"])
    assert job["state"] == "failed"
    assert job["exit_code"] == 3
    assert job["error"] == "PACS-001: cannot reach PACS"
    assert "working" in job["output_tail"]


async def test_a_job_step_over_its_timeout_fails_with_pacs_005(target_database: str, tmp_path: Path) -> None:
    settings = settings_for(
        target_database,
        tmp_path,
        api_job_timeout_s=1.0,
        api_job_commands={"incremental": _script("import time; time.sleep(30)")},
    )
    headers = auth(token(settings, Role.OPERATOR))
    async with running(create_app(settings)) as client:
        started = await client.post(
            f"{PREFIX}/sync/start", json={"sync_type": "incremental"}, headers=headers
        )
        job = await wait_for_job(client, headers, started.json()["job_id"], timeout=30)
    assert job["state"] == "failed"
    assert job["error"].startswith("PACS-005")


async def test_a_vanished_executor_is_noticed_and_unblocks_new_jobs(
    target_database: str, tmp_path: Path
) -> None:
    settings = settings_for(target_database, tmp_path, api_job_stale_after_s=5)
    headers = auth(token(settings, Role.OPERATOR))
    async with running(create_app(settings)) as client:
        conn = await asyncpg.connect(target_database)
        try:
            # A job whose executor died without a word: running, last heartbeat long ago.
            job_id = await conn.fetchval(
                "INSERT INTO pacs_sync_api.jobs (kind, entities, state, trigger, requested_by, "
                "requested_role, plan, heartbeat_at) VALUES ('full', '{properties}', 'running', 'api', 'x', "
                "'operator', '{}', now() - interval '1 hour') RETURNING job_id"
            )
        finally:
            await conn.close()
        started = await client.post(
            f"{PREFIX}/sync/start", json={"sync_type": "incremental"}, headers=headers
        )
        assert started.status_code == 202, started.text
        stale = await client.get(f"{PREFIX}/sync/jobs/{job_id}", headers=headers)
        assert stale.json()["state"] == "failed"
        assert "stopped reporting" in stale.json()["error"]
        await wait_for_job(client, headers, started.json()["job_id"])


async def test_scheduled_reconciliation_resyncs_the_failing_entities(
    target_database: str, tmp_path: Path
) -> None:
    report = {
        "entities": {
            "properties": {"matched": True},
            "owners": {"matched": False},
            "structures": {"matched": False},
        }
    }
    verify = _script(f"import json, sys; print(json.dumps({report!r})); sys.exit(1)")
    resync = _script("import sys; print('resync', ' '.join(sys.argv[1:]))")
    settings = settings_for(
        target_database,
        tmp_path,
        api_scheduled_job="reconcile",
        api_job_commands={"verify": verify, "resync": resync},
    )
    app = create_app(settings, schedule=False)
    headers = auth(token(settings, Role.VIEWER))
    async with running(app) as client:
        from api.app import _scheduled_fire

        await _scheduled_fire(app.state.api)
        jobs = (await client.get(f"{PREFIX}/sync/jobs", headers=headers)).json()["jobs"]
        assert len(jobs) == 1
        assert jobs[0]["trigger"] == "schedule"
        job = await wait_for_job(client, headers, jobs[0]["job_id"])
    assert job["state"] == "succeeded", job
    assert job["kind"] == "reconcile"
    assert job["result"]["verify"] == {"matched": False, "failing": ["owners", "structures"]}
    assert [s["name"] for s in job["result"]["steps"]] == ["verify", "resync owners", "resync structures"]
    assert "resync --entity structures" in job["output_tail"]


async def test_reconciliation_with_an_unreadable_report_fails_without_resyncing(
    target_database: str, tmp_path: Path
) -> None:
    verify = _script(
        "import sys; print('not json'); "
        "print('PACS-001: cannot reach PACS pacs:1433/PACS', file=sys.stderr); sys.exit(1)"
    )
    settings = settings_for(
        target_database,
        tmp_path,
        api_scheduled_job="reconcile",
        api_job_commands={"verify": verify, "resync": QUICK},
    )
    app = create_app(settings, schedule=False)
    headers = auth(token(settings, Role.VIEWER))
    async with running(app) as client:
        from api.app import _scheduled_fire

        await _scheduled_fire(app.state.api)
        jobs = (await client.get(f"{PREFIX}/sync/jobs", headers=headers)).json()["jobs"]
        job = await wait_for_job(client, headers, jobs[0]["job_id"])
    assert job["state"] == "failed"
    assert job["error"] == "PACS-001: cannot reach PACS pacs:1433/PACS"
    assert [s["name"] for s in job["result"]["steps"]] == ["verify"]


# ---- connection settings: sealed, never returned, used by jobs ----


async def test_connection_settings_are_sealed_never_returned_and_used_by_jobs(
    target_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_API_JWT_SECRET", SECRET)  # must not reach a job's environment
    settings = settings_for(target_database, tmp_path, api_job_commands={"incremental": SHOW_ENV})
    admin = auth(token(settings, Role.ADMIN))
    password = "Correct-Horse-Battery-Staple-42"
    body = {
        "host": "pacs-sql.county.test",
        "port": 1433,
        "database": "PACS",
        "username": "tf_sync",
        "password": password,
    }
    async with running(create_app(settings)) as client:
        empty = await client.get(f"{PREFIX}/connection", headers=admin)
        assert empty.json()["saved"] is False
        assert empty.json()["password_set"] is False
        saved = await client.put(f"{PREFIX}/connection", json=body, headers=admin)
        assert saved.status_code == 200, saved.text
        assert password not in saved.text
        shown = (await client.get(f"{PREFIX}/connection", headers=admin)).json()
        assert shown["host"] == "pacs-sql.county.test"
        assert shown["password_set"] is True
        assert shown["updated_by"] == "test-admin"
        assert "password" not in shown
        audit = await client.get(f"{PREFIX}/audit", headers=admin)
        assert password not in audit.text
        started = await client.post(f"{PREFIX}/sync/start", json={"sync_type": "incremental"}, headers=admin)
        job = await wait_for_job(client, admin, started.json()["job_id"])
        # test-connection without a password uses the saved one only for the saved server
        other = await client.post(
            f"{PREFIX}/test-connection",
            json={**{k: v for k, v in body.items() if k != "password"}, "host": "elsewhere.test"},
            headers=admin,
        )
        assert other.status_code == 422
    assert "host=pacs-sql.county.test" in job["output_tail"]
    assert "secret-withheld" in job["output_tail"]
    assert f"job={job['job_id']}" in job["output_tail"]
    assert password not in job["output_tail"]
    conn = await asyncpg.connect(target_database)
    try:
        sealed = await conn.fetchval("SELECT sealed FROM pacs_sync_api.connection_settings")
        audit_rows = await conn.fetch("SELECT detail::text AS d FROM pacs_sync_api.audit")
    finally:
        await conn.close()
    assert password.encode() not in bytes(sealed)
    assert b"pacs-sql.county.test" not in bytes(sealed)
    assert all(password not in r["d"] for r in audit_rows)
    # With another key the sealed settings are reported as unreadable, not as garbage.
    rotated = settings_for(
        target_database, tmp_path, api_credentials_key=base64.b64encode(bytes(32)).decode()
    )
    async with running(create_app(rotated)) as client:
        response = await client.get(f"{PREFIX}/connection", headers=auth(token(rotated, Role.ADMIN)))
    assert response.status_code == 503
    assert response.json()["code"] == "PACS-008"
    assert "another key" in response.json()["message"]


async def test_saving_without_a_credentials_key_is_refused(target_database: str, tmp_path: Path) -> None:
    settings = settings_for(target_database, tmp_path, api_credentials_key=None)
    body = {"host": "h", "port": 1433, "database": "d", "username": "u", "password": "p"}
    async with running(create_app(settings)) as client:
        response = await client.put(
            f"{PREFIX}/connection", json=body, headers=auth(token(settings, Role.ADMIN))
        )
    assert response.status_code == 503
    assert "PACS_API_CREDENTIALS_KEY" in response.json()["message"]


async def test_the_audit_table_is_append_only(api_settings: ApiSettings, target_database: str) -> None:
    async with running(create_app(api_settings)) as client:
        await client.put(
            f"{PREFIX}/connection",
            json={"host": "h", "port": 1433, "database": "d", "username": "u", "password": "p"},
            headers=auth(token(api_settings, Role.ADMIN)),
        )
    conn = await asyncpg.connect(target_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pacs_sync_api.audit") == 1
        for statement in (
            "UPDATE pacs_sync_api.audit SET actor = 'x'",
            "DELETE FROM pacs_sync_api.audit",
            "TRUNCATE pacs_sync_api.audit",
        ):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()


# ---- status and metrics ----


async def _fake_stage(port_holder: list[int], text: str) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = text.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_holder.append(server.sockets[0].getsockname()[1])
    return server


SINK_METRICS = """\
# TYPE pacs_sync_sink_rows_total counter
pacs_sync_sink_rows_total{entity="properties",op="upsert"} 120.0
pacs_sync_sink_rows_total{entity="properties",op="delete"} 3.0
# TYPE pacs_sync_sink_consumer_lag_records gauge
pacs_sync_sink_consumer_lag_records{entity="properties"} 7.0
# TYPE pacs_sync_sink_rejected_rows_total counter
pacs_sync_sink_rejected_rows_total{entity="properties"} 2.0
# TYPE pacs_sync_sink_errors_total counter
pacs_sync_sink_errors_total{code="PACS-011"} 2.0
# TYPE pacs_sync_end_to_end_latency_seconds histogram
pacs_sync_end_to_end_latency_seconds_bucket{entity="properties",le="0.5"} 50.0
pacs_sync_end_to_end_latency_seconds_bucket{entity="properties",le="1.0"} 100.0
pacs_sync_end_to_end_latency_seconds_bucket{entity="properties",le="+Inf"} 100.0
pacs_sync_end_to_end_latency_seconds_count{entity="properties"} 100.0
pacs_sync_end_to_end_latency_seconds_sum{entity="properties"} 45.0
"""


async def test_status_combines_the_target_rows_and_the_stages(target_database: str, tmp_path: Path) -> None:
    from sink.target import TargetDatabase

    ports: list[int] = []
    sink_server = await _fake_stage(ports, SINK_METRICS)
    settings = settings_for(
        target_database,
        tmp_path,
        api_stage_metrics={
            "sink": f"http://127.0.0.1:{ports[0]}/metrics",
            "producer": f"http://127.0.0.1:{_closed_port()}/metrics",
        },
    )
    target = await TargetDatabase.connect(settings.target_parts)
    try:
        await target.migrate()
        await target.execute(
            "INSERT INTO pacs_sync.properties (property_id, parcel_number, source_commit_lsn, source_serial, "
            "deleted, source_position) VALUES (1, 'P-1', '00000000:00000010:0001', 1, false, '\\x01'), "
            "(2, NULL, '00000000:00000020:0001', 1, true, '\\x02')"
        )
    finally:
        await target.close()
    headers = auth(token(settings, Role.VIEWER))
    try:
        async with running(create_app(settings)) as client:
            status = (await client.get(f"{PREFIX}/sync/status", headers=headers)).json()
            figures = (await client.get(f"{PREFIX}/metrics", headers=headers)).json()
            prometheus = await client.get("/metrics", headers=headers)
    finally:
        sink_server.close()
        await sink_server.wait_closed()
    assert status["stages"]["sink"]["state"] == "up"
    assert status["stages"]["sink"]["errors"] == {"PACS-011": 2}
    assert status["stages"]["producer"]["state"] == "down"
    properties = next(e for e in status["entities"] if e["entity"] == "properties")
    assert properties["rows"] == {"present": True, "live": 1, "deleted": 1}
    assert properties["last_position"] == "00000000:00000020:0001"
    assert properties["written"] == 123
    assert properties["lag"] == 7
    assert properties["dlq"] == 2
    assert properties["latency"]["mean_s"] == pytest.approx(0.45)
    assert properties["latency"]["p50_s"] == pytest.approx(0.5)
    assert properties["state"] == "down"  # the producer does not answer
    assert properties["events"] is None
    assert figures["entities"]["properties"]["rows_live"] == 1
    assert figures["totals"]["written"] == 123
    assert figures["stages"] == {"sink": True, "producer": False}
    assert prometheus.status_code == 200
    assert 'pacs_sync_api_entity_rows{entity="properties",state="live"} 1.0' in prometheus.text
    assert "pacs_sync_api_requests_total" in prometheus.text


async def test_status_before_the_sink_created_its_tables(api_settings: ApiSettings) -> None:
    async with running(create_app(api_settings)) as client:
        status = (
            await client.get(f"{PREFIX}/sync/status", headers=auth(token(api_settings, Role.VIEWER)))
        ).json()
    assert all(e["rows"]["present"] is False for e in status["entities"])
    assert all(e["state"] == "down" for e in status["entities"])  # no stage answers in this test


async def test_api_migration_is_idempotent_and_checked(
    api_settings: ApiSettings, target_database: str
) -> None:
    async with running(create_app(api_settings)):
        pass
    async with running(create_app(api_settings)):
        pass
    conn = await asyncpg.connect(target_database)
    try:
        versions = await conn.fetch("SELECT version, name FROM pacs_sync_api.schema_migrations")
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in versions] == [(1, "0001_api_schema.sql")]


def test_unreachable_database_fails_start_up(tmp_path: Path) -> None:
    from pacs_sync.errors import PacsSyncError

    settings = settings_for(f"postgresql://u:p@127.0.0.1:{_closed_port()}/x", tmp_path)
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(PacsSyncError) as caught:
        asyncio.run(start())
    assert caught.value.code.value == "PACS-001"
