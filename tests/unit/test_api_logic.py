"""The API's pure parts: job plans, verify reports, status from Prometheus text, the schedule, settings,
and the committed OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.auth import Role, verify_token
from api.jobs import JobKind, failing_entities, job_environment, normalise_entities, plan_job
from api.models import EntityName
from api.schedule import Scheduler, next_fire
from api.settings import ApiSettings, is_loopback
from api.status import Scrape, build_status, entity_status, histogram_quantile, parse_exposition
from api.store import EntityRows, JobRecord
from pacs_sync.errors import ConfigurationError
from sink.tables import ENTITIES

SECRET = "unit-test-secret-0123456789abcdefghijkl"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def settings(**overrides: object) -> ApiSettings:
    values: dict[str, object] = {"api_jwt_secret": SECRET, "api_pacs_sync_command": ["pacs-sync"]}
    values.update(overrides)
    return ApiSettings.load(**values)


# ---- plans ----


def test_full_and_incremental_plans() -> None:
    s = settings()
    full = plan_job(s, JobKind.FULL, ["owners", "properties"])
    assert full["entities"] == ["properties", "owners"]
    assert full["steps"] == [
        {
            "name": "full sync",
            "argv": [
                "pacs-sync", "sync", "--until-caught-up", "--full",
                "--entities", "properties", "--entities", "owners",
            ],
        }
    ]  # fmt: skip
    everything = plan_job(s, JobKind.INCREMENTAL, [])
    assert everything["entities"] == list(ENTITIES)
    assert everything["steps"][0]["argv"] == ["pacs-sync", "sync", "--until-caught-up"]  # all: no flags


def test_resync_and_reconcile_plans() -> None:
    s = settings()
    resync = plan_job(s, JobKind.RESYNC, ["valuations"])
    assert resync["steps"][0]["argv"] == ["pacs-sync", "resync", "--entity", "valuations"]
    reconcile = plan_job(s, JobKind.RECONCILE, [])
    assert reconcile["steps"] == [{"name": "verify", "argv": ["pacs-sync", "verify", "--json"]}]
    assert reconcile["resync_command"] == ["pacs-sync", "resync"]


def test_default_command_is_this_interpreter() -> None:
    import sys

    s = ApiSettings.load(api_jwt_secret=SECRET)
    assert s.job_command("resync") == (sys.executable, "-m", "pacs_sync", "resync")


def test_command_overrides() -> None:
    s = settings(api_job_commands={"full": ["sh", "-c", "true"]})
    assert plan_job(s, JobKind.FULL, ["owners"])["steps"][0]["argv"] == [
        "sh",
        "-c",
        "true",
        "--entities",
        "owners",
    ]
    with pytest.raises(ConfigurationError, match="PACS_API_JOB_COMMANDS"):
        settings(api_job_commands={"nightly": ["true"]})


def test_unknown_entities_are_refused() -> None:
    with pytest.raises(ValueError, match="parcels"):
        normalise_entities(["parcels"])


def test_entity_literal_matches_the_sink_tables() -> None:
    assert set(typing.get_args(EntityName)) == set(ENTITIES)


@pytest.mark.parametrize(
    "report",
    [
        {"entities": {"properties": {"matched": True}, "owners": {"matched": False}}},
        {"entities": [{"entity": "properties", "matched": True}, {"entity": "owners", "matched": False}]},
        {"properties": {"matched": True}, "owners": {"matched": False}},
    ],
)
def test_failing_entities_from_a_verify_report(report: dict[str, object]) -> None:
    assert failing_entities(json.dumps(report), ["properties", "owners"]) == ["owners"]


def test_failing_entities_from_the_verify_command_s_own_shape() -> None:
    report = {
        "matched": False,
        "exit_code": 1,
        "dead_letters": {"count": 0},
        "entities": {
            "properties": {"matched": True, "source_count": 10, "target_count": 10},
            "valuations": {"matched": False, "missing": {"count": 2, "keys": [4, 5]}},
        },
        "notes": [],
    }
    text = json.dumps(report, indent=2) + "\ntrailing words"
    assert failing_entities(text, ["properties", "valuations"]) == ["valuations"]
    assert failing_entities(text, ["properties"]) == []


def test_unreadable_verify_reports() -> None:
    assert failing_entities("", []) is None
    assert failing_entities("no json here", []) is None
    assert failing_entities('{"broken": ', []) is None
    assert failing_entities('{"summary": {"ok": false}}', []) is None


def test_job_environment_withholds_the_api_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_API_JWT_SECRET", SECRET)
    monkeypatch.setenv("PACS_API_CREDENTIALS_KEY", base64.b64encode(bytes(32)).decode())
    env = job_environment(settings(target_dsn="postgresql://u:p@h:5432/db"), {"PACS_DB_HOST": "pacs.test"})
    assert "PACS_API_JWT_SECRET" not in env
    assert "PACS_API_CREDENTIALS_KEY" not in env
    assert env["PACS_TARGET_DSN"] == "postgresql://u:p@h:5432/db"
    assert env["PACS_DB_HOST"] == "pacs.test"


# ---- status ----

EXPOSITION = """\
# TYPE pacs_sync_producer_events_total counter
pacs_sync_producer_events_total{entity="owners",op="c"} 10.0
pacs_sync_producer_events_total{entity="owners",op="u"} 5.0
# TYPE pacs_sync_producer_snapshot_progress_ratio gauge
pacs_sync_producer_snapshot_progress_ratio{entity="owners"} 0.25
"""


def _scrapes(*, sink_up: bool = True, lag: float = 0.0) -> dict[str, Scrape]:
    sink_text = f'pacs_sync_sink_consumer_lag_records{{entity="owners"}} {lag}\n'
    return {
        "producer": parse_exposition("producer", "u1", EXPOSITION),
        "sink": parse_exposition("sink", "u2", sink_text)
        if sink_up
        else Scrape("sink", "u2", False, "refused"),
    }


def test_parse_and_sum() -> None:
    scrape = parse_exposition("producer", "u", EXPOSITION)
    assert scrape.total("pacs_sync_producer_events_total", entity="owners") == 15
    assert scrape.total("pacs_sync_producer_events_total", entity="owners", op="u") == 5
    assert scrape.total("pacs_sync_producer_events_total", entity="properties") == 0


def test_entity_states() -> None:
    rows = EntityRows("owners", True, 3, 1)
    assert entity_status("owners", rows, _scrapes(sink_up=False), None)["state"] == "down"
    snapshotting = entity_status("owners", rows, _scrapes(), None)
    assert snapshotting["state"] == "snapshotting"
    assert snapshotting["progress"]["snapshot"] == 0.25
    assert snapshotting["events"] == 15
    assert snapshotting["written"] == 0  # the sink answers but has written nothing yet
    settled = {"producer": parse_exposition("producer", "u", ""), "sink": _scrapes(lag=4)["sink"]}
    assert entity_status("owners", rows, settled, None)["state"] == "catching_up"
    settled["sink"] = _scrapes(lag=0)["sink"]
    assert entity_status("owners", rows, settled, None)["state"] == "streaming"


def test_a_running_job_shows_per_entity() -> None:
    now = datetime.now(tz=UTC)
    job = JobRecord(
        7, "resync", ["owners"], "running", "api", "ana", "operator", {}, {"ratio": 0.5, "entities_done": []},
        {}, None, None, "", now, now, None, now,
    )  # fmt: skip
    status = build_status(["properties", "owners"], {}, _scrapes(sink_up=False), job, now=now)
    owners = status["entities"][1]
    assert owners["state"] == "resyncing"
    assert owners["progress"]["job"] == {
        "job_id": 7,
        "kind": "resync",
        "state": "running",
        "ratio": 0.5,
        "done": False,
    }
    assert status["entities"][0]["state"] == "down"
    assert status["running_job"] == 7
    assert status["stages"]["sink"] == {"state": "down", "url": "u2", "error": "refused", "errors": {}}


def test_histogram_quantile() -> None:
    buckets = [(0.1, 10.0), (1.0, 30.0), (float("inf"), 40.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.55)
    assert histogram_quantile(0.99, buckets) == pytest.approx(1.0)  # in the +Inf bucket: its lower bound
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


# ---- the schedule ----


def test_next_fire() -> None:
    at = datetime(2026, 3, 1, 12, 7, 30, tzinfo=UTC)
    assert next_fire("*/15 * * * *", at) == datetime(2026, 3, 1, 12, 15, tzinfo=UTC)
    assert next_fire("0 2 * * *", at) == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        next_fire("* * * * *", datetime(2026, 3, 1))  # noqa: DTZ001  (naive on purpose)


async def test_scheduler_fires_on_the_schedule_and_survives_a_failed_start() -> None:
    fired: list[float] = []
    start = time.monotonic()
    base = datetime(2026, 3, 1, 12, 0, 58, tzinfo=UTC)

    def clock() -> datetime:  # a minute passes every second
        return base + timedelta(seconds=(time.monotonic() - start) * 60)

    async def fire() -> None:
        fired.append(time.monotonic() - start)
        if len(fired) == 1:
            raise RuntimeError("the first start fails")

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / 60)

    scheduler = Scheduler("* * * * *", fire, clock=clock, sleep=sleep)
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while len(fired) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await scheduler.stop()
    assert len(fired) >= 2
    assert fired[1] - fired[0] == pytest.approx(1.0, abs=0.5)


# ---- settings ----


def test_plain_http_only_on_loopback(tmp_path: Path) -> None:
    settings().check_serving()
    with pytest.raises(ConfigurationError, match="PACS_API_HOST"):
        settings(api_host="0.0.0.0").check_serving()  # noqa: S104
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    settings(api_host="0.0.0.0", api_tls_cert_file=cert, api_tls_key_file=key).check_serving()  # noqa: S104
    with pytest.raises(ConfigurationError, match="PACS_API_TLS_KEY_FILE"):
        settings(api_tls_cert_file=cert).check_serving()
    with pytest.raises(ConfigurationError, match="PACS_API_TLS_CERT_FILE"):
        settings(api_tls_cert_file=tmp_path / "none", api_tls_key_file=key).check_serving()


def test_jwt_configuration_errors_name_the_variables(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="PACS_API_JWT_SECRET"):
        ApiSettings.load().check_serving()
    with pytest.raises(ConfigurationError, match="PACS_API_JWT_SECRET") as caught:
        ApiSettings.load(api_jwt_secret="short")
    assert "short" not in str(caught.value)
    public = tmp_path / "pub.pem"
    public.write_text("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ConfigurationError, match="not both"):
        settings(api_jwt_public_key_file=public).jwt_keys()
    assert ApiSettings.load(api_jwt_public_key_file=public).jwt_keys()[0] == "RS256"
    with pytest.raises(ConfigurationError, match="PACS_API_JWT_PUBLIC_KEY_FILE"):
        ApiSettings.load(api_jwt_public_key_file=tmp_path / "missing.pem").jwt_keys()


def test_port_range_is_named() -> None:
    with pytest.raises(ConfigurationError, match="PACS_API_PORT"):
        settings(api_port=70000)


ANY_ADDRESS = "0.0.0.0"  # noqa: S104  (the address checked, not bound)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        (ANY_ADDRESS, False),
        ("10.0.0.1", False),
        ("api.county.local", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# ---- the committed OpenAPI document ----


def test_committed_openapi_document_matches_the_app() -> None:
    from api.app import openapi_document

    committed = json.loads((ROOT / "api" / "openapi.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(openapi_document())), (
        "api/openapi.json is stale: regenerate it with `pacs-sync api --openapi > api/openapi.json`"
    )


# ---- the CLI's thin commands ----


def _cli(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "pacs_sync", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def test_token_create_issues_a_verifiable_token(tmp_path: Path) -> None:
    result = _cli(
        ["token", "create", "--role", "operator", "--ttl", "10m", "--subject", "ana"],
        {"PACS_API_JWT_SECRET": SECRET},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    principal = verify_token(settings().token_keys(), result.stdout.strip())
    assert (principal.subject, principal.role) == ("ana", Role.OPERATOR)
    assert timedelta(minutes=9) < principal.expires_at - datetime.now(tz=UTC) <= timedelta(minutes=10)
    assert SECRET not in result.stdout + result.stderr


def test_token_create_refuses_bad_input(tmp_path: Path) -> None:
    bad_role = _cli(["token", "create", "--role", "root"], {"PACS_API_JWT_SECRET": SECRET}, tmp_path)
    assert bad_role.returncode == 2
    bad_ttl = _cli(
        ["token", "create", "--role", "admin", "--ttl", "forever"], {"PACS_API_JWT_SECRET": SECRET}, tmp_path
    )
    assert bad_ttl.returncode == 2
    no_secret = _cli(["token", "create", "--role", "admin"], {}, tmp_path)
    assert no_secret.returncode == 2
    assert "PACS_API_JWT_SECRET" in no_secret.stderr


def test_api_refuses_plain_http_on_a_public_address(tmp_path: Path) -> None:
    result = _cli(["api"], {"PACS_API_JWT_SECRET": SECRET, "PACS_API_HOST": ANY_ADDRESS}, tmp_path)
    assert result.returncode == 2
    assert "PACS_API_TLS_CERT_FILE" in result.stderr
