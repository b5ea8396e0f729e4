"""The /pacs-sync dashboard in headless Chromium (Debian's package, driven by Playwright).

``pacs-sync api`` runs as a real process on a fresh target database; a token comes from
``pacs-sync token create``. The browser signs in with it, watches the live row counts change while
rows are written into the target's ``pacs_sync`` tables (as the sink would), starts an incremental
sync (configured to a short real command) and sees the job finish. Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from pacs_sync import dbapi
from tests.integration.conftest import stack, target_database, target_dsn, unique_name  # noqa: F401  (fixtures)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SECRET = "e2e-dashboard-secret-0123456789abcdefgh"
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli_env(dsn: str, state_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    job = [
        PY,
        "-c",
        "import time; print('incremental sync: catching up', flush=True); time.sleep(3); print('caught up')",
    ]
    env.update(
        {
            "PACS_TARGET_DSN": dsn,
            "PACS_STATE_DIR": str(state_dir),
            "PACS_API_JWT_SECRET": SECRET,
            "PACS_API_PORT": str(port),
            "PACS_API_SCHEDULED_JOB": "none",
            "PACS_API_JOB_COMMANDS": json.dumps({"incremental": job, "full": job, "resync": job}),
            "PACS_API_STAGE_METRICS": json.dumps(
                {s: f"http://127.0.0.1:{_free_port()}/metrics" for s in ("producer", "processor", "sink")}
            ),
        }
    )
    return env


def _token(env: dict[str, str], role: str) -> str:
    result = subprocess.run(
        [
            PY,
            "-m",
            "pacs_sync",
            "token",
            "create",
            "--role",
            role,
            "--ttl",
            "15m",
            "--subject",
            f"e2e-{role}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def _migrate(dsn: str) -> None:
    import asyncio

    from pacs_sync.settings import PacsSettings
    from sink.target import TargetDatabase

    async def run() -> None:
        target = await TargetDatabase.connect(PacsSettings.load(target_dsn=dsn).target_parts)
        try:
            await target.migrate()
        finally:
            await target.close()

    asyncio.run(run())


def _connect(dsn: str) -> dbapi.Connection:
    parts = urlsplit(dsn)
    return dbapi.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "",
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        autocommit=True,
    )


class Writer(threading.Thread):
    """Writes property rows into the target every few hundred milliseconds, as a running sink would."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="target-writer", daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        conn = _connect(self.dsn)
        try:
            next_id = 1
            while not self.stop.is_set():
                cursor = conn.cursor()
                for _ in range(5):
                    position = next_id.to_bytes(10, "big")
                    lsn = f"{0:08x}:{next_id:08x}:0001"
                    cursor.execute(
                        "INSERT INTO pacs_sync.properties (property_id, parcel_number, city, state, "
                        "source_commit_lsn, source_serial, deleted, source_position) "
                        "VALUES (?, ?, 'Kennewick', 'WA', ?, 1, false, ?)",
                        (next_id, f"P-{next_id:06d}", lsn, position),
                    )
                    next_id += 1
                self.written = next_id - 1
                self.stop.wait(0.3)
        finally:
            conn.close()


@pytest.fixture
def api_process(target_database: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:  # noqa: F811
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: bash deploy/local/install-system-deps.sh")
    _migrate(target_database)
    port = _free_port()
    env = _cli_env(target_database, tmp_path / "state", port)
    log = (tmp_path / "api.log").open("wb")
    process = subprocess.Popen([PY, "-m", "pacs_sync", "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"pacs-sync api did not start:\n{(tmp_path / 'api.log').read_text()}")
            time.sleep(0.2)
        yield url, env
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_dashboard_live_counts_and_a_sync_job(
    api_process: tuple[str, dict[str, str]],
    target_database: str,  # noqa: F811
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, env = api_process
    operator = _token(env, "operator")
    viewer = _token(env, "viewer")
    ARTIFACTS.mkdir(exist_ok=True)
    writer = Writer(target_database)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1300})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/pacs-sync")
            expect(page.locator("#login")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "dashboard-01-sign-in.png"))

            # A bad token is refused on the page.
            page.fill("#token-input", "not-a-token")
            page.click("#login-button")
            expect(page.locator("#login-error")).to_contain_text("Sign-in failed")

            page.fill("#token-input", operator)
            page.click("#login-button")
            expect(page.locator("#who-role")).to_have_text("operator")
            live = page.locator("#entity-properties-live")
            expect(live).to_have_attribute("data-value", "0", timeout=15_000)

            # Live counts move while rows arrive in the target.
            writer.start()
            expect(live).not_to_have_attribute("data-value", "0", timeout=20_000)
            first = int(live.get_attribute("data-value") or "0")
            page.wait_for_function(
                "n => Number(document.getElementById('entity-properties-live').dataset.value) > n",
                arg=first,
                timeout=20_000,
            )
            second = int(live.get_attribute("data-value") or "0")
            assert second > first > 0
            page.wait_for_timeout(2500)  # a few chart samples
            page.screenshot(path=str(ARTIFACTS / "dashboard-02-live-counts.png"), full_page=True)

            # Start an incremental sync and watch it run and finish.
            page.click("#start-incremental")
            expect(page.locator("#sync-message")).to_contain_text("started", timeout=10_000)
            job_row = page.locator("#jobs-body tr").first
            expect(job_row).to_have_attribute("data-state", "running", timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-03-sync-running.png"), full_page=True)
            # a second start while it runs is refused
            page.click("#start-full")
            expect(page.locator("#sync-message")).to_contain_text("Refused", timeout=10_000)
            expect(job_row).to_have_attribute("data-state", "succeeded", timeout=30_000)
            expect(page.locator("#audit-body")).to_contain_text("job.finish", timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-04-sync-finished.png"), full_page=True)

            # A viewer sees the status but no sync buttons, connection form or audit trail.
            page.click("#logout-button")
            page.fill("#token-input", viewer)
            page.click("#login-button")
            expect(page.locator("#who-role")).to_have_text("viewer")
            expect(page.locator("#entities-body tr")).to_have_count(4)
            expect(page.locator("#sync-panel")).to_be_hidden()
            expect(page.locator("#connection-panel")).to_be_hidden()
            expect(page.locator("#audit-panel")).to_be_hidden()
            page.screenshot(path=str(ARTIFACTS / "dashboard-05-viewer.png"), full_page=True)
            assert errors == [], errors
        finally:
            writer.stop.set()
            browser.close()
    if writer.is_alive():
        writer.join(timeout=10)
