"""Property-based run of the API against its own OpenAPI document (schemathesis): no 5xx, and responses
conform to the spec.

The API runs for real (uvicorn on 127.0.0.1, its own fresh target database), called with a valid
admin token. Generated test-connection requests are pointed at 127.0.0.1 with a short timeout: the
run never sends traffic off this machine.
"""

from __future__ import annotations

import base64
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.auth import Role, issue_token
from api.settings import ApiSettings
from pacs_sync.stack import LocalStack

SECRET = "schemathesis-test-secret-0123456789abcdef"
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(dsn: str, state_dir: Path, port: int) -> ApiSettings:
    quick = [PY, "-c", "print('ok')"]
    return ApiSettings.load(
        target_dsn=dsn,
        api_jwt_secret=SECRET,
        api_credentials_key=base64.b64encode(bytes(range(32))).decode(),
        state_dir=state_dir,
        api_port=port,
        api_scheduled_job="none",
        api_job_commands={"full": quick, "incremental": quick, "resync": quick, "verify": quick},
        api_stage_metrics={
            s: f"http://127.0.0.1:{_free_port()}/metrics" for s in ("producer", "processor", "sink")
        },
        api_scrape_timeout_s=0.5,
    )


# The spec comes from the app itself (the document GET /api/v1/pacs-sync/openapi.json serves).
_SPEC_APP = create_app(_settings("postgresql://u:p@127.0.0.1:1/spec", Path("/nonexistent"), 1))
schema = schemathesis.openapi.from_dict(_SPEC_APP.openapi())


class Server:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.api_port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.api_port, log_config=None, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api-under-test", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                pytest.fail("the API did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def api_server(
    stack: LocalStack, target_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    parts = urlsplit(target_dsn)
    name = f"t_api_schemathesis_{int(time.time())}"
    root = stack.postgres.connect()
    root.cursor().execute(f'CREATE DATABASE "{name}" OWNER "{parts.username}"')
    try:
        dsn = urlunsplit(parts._replace(path=f"/{name}"))
        with Server(_settings(dsn, tmp_path_factory.mktemp("api-state"), _free_port())) as server:
            yield server
    finally:
        root.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        root.close()


@pytest.fixture(scope="module")
def admin_headers(api_server: Server) -> dict[str, str]:
    keys = api_server.settings.token_keys()
    token = issue_token(
        keys, subject="schemathesis", role=Role.ADMIN, ttl=timedelta(hours=1), now=datetime.now(tz=UTC)
    )
    return {"Authorization": f"Bearer {token}"}


def _keep_local(case: Any) -> None:
    """Generated connection tests go to 127.0.0.1 only, with a short time limit."""
    if case.operation.path.endswith("/test-connection") and isinstance(case.body, dict):
        case.body["host"] = "127.0.0.1"
        if "timeout_s" in case.body:
            case.body["timeout_s"] = 1
        else:
            case.body.setdefault("timeout_s", 1)


def test_the_spec_has_every_endpoint() -> None:
    paths = set(_SPEC_APP.openapi()["paths"])
    assert {
        "/health",
        "/metrics",
        "/api/v1/pacs-sync/test-connection",
        "/api/v1/pacs-sync/sync/start",
        "/api/v1/pacs-sync/sync/status",
        "/api/v1/pacs-sync/metrics",
        "/api/v1/pacs-sync/sync/jobs",
        "/api/v1/pacs-sync/sync/jobs/{job_id}",
        "/api/v1/pacs-sync/connection",
        "/api/v1/pacs-sync/audit",
        "/api/v1/pacs-sync/whoami",
    } <= paths
    security = _SPEC_APP.openapi()["components"]["securitySchemes"]
    assert security == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": security["HTTPBearer"]["description"],
        }
    }


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_no_server_errors_and_conforming_responses(
    case: schemathesis.Case, api_server: Server, admin_headers: dict[str, str]
) -> None:
    _keep_local(case)
    response = case.call(base_url=api_server.url, headers=admin_headers, timeout=30)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    )
    case.validate_response(
        response,
        checks=[response_schema_conformance, status_code_conformance, content_type_conformance],
    )


def test_the_server_is_still_healthy(api_server: Server) -> None:
    response = httpx.get(f"{api_server.url}/health", timeout=10)
    assert response.status_code == 200
