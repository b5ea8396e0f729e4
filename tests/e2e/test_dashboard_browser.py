"""The /pacs-sync dashboard in headless Chromium (Debian's package, driven by Playwright), on a live pipeline.

An isolated pipeline (its own emulated PACS database, topics, groups and target database) runs under
``pacs-sync run`` with a simulated workload, and ``pacs-sync api`` runs as a real process scraping
its stages. The browser signs in with a token from ``pacs-sync token create``, watches the counts
move while churn runs, starts an incremental sync (the real ``pacs-sync sync --until-caught-up``)
and sees the job finish. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Pipeline

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SECRET = "e2e-dashboard-secret-0123456789abcdefgh"
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@dataclass
class LiveSystem:
    url: str
    env: dict[str, str]


@pytest.fixture
def live_system(pipeline: Pipeline, tmp_path: Path) -> Iterator[LiveSystem]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: bash deploy/local/install-system-deps.sh")
    pipeline.cli("sim", "init", "--scale", "small")
    ports = {"producer": _free_port(), "processor": _free_port(), "sink": _free_port()}
    api_port = _free_port()
    env = {
        **pipeline.env,
        "PACS_PRODUCER_METRICS_PORT": str(ports["producer"]),
        "PACS_PROCESSOR_METRICS_PORT": str(ports["processor"]),
        "PACS_SINK_METRICS_PORT": str(ports["sink"]),
        "PACS_API_JWT_SECRET": SECRET,
        "PACS_API_PORT": str(api_port),
        "PACS_API_SCHEDULED_JOB": "none",
        "PACS_API_STAGE_METRICS": json.dumps({s: f"http://127.0.0.1:{p}/metrics" for s, p in ports.items()}),
    }
    env.pop("PACS_METRICS_PORT", None)
    run_log = (tmp_path / "run.log").open("wb")
    api_log = (tmp_path / "api.log").open("wb")
    run = subprocess.Popen(
        [PY, "-m", "pacs_sync", "run", "--churn-rate", "40", "--no-api"],
        env=env,
        stdout=run_log,
        stderr=run_log,
    )
    api = subprocess.Popen([PY, "-m", "pacs_sync", "api"], env=env, stdout=api_log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if api.poll() is not None or run.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the pipeline or the API did not start:\n{(tmp_path / 'run.log').read_text()[-3000:]}\n"
                    f"{(tmp_path / 'api.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield LiveSystem(url, env)
    finally:
        api.terminate()
        run.send_signal(signal.SIGINT)
        for process in (api, run):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        run_log.close()
        api_log.close()


def test_dashboard_follows_a_live_pipeline_and_runs_a_sync(live_system: LiveSystem) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, env = live_system.url, live_system.env
    operator = _token(env, "operator")
    viewer = _token(env, "viewer")
    ARTIFACTS.mkdir(exist_ok=True)
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

            # The snapshot lands, then the counts keep moving while churn runs.
            live = page.locator("#entity-valuations-live")
            expect(live).not_to_have_attribute("data-value", "0", timeout=90_000)
            written = page.locator("#entity-valuations-written")
            expect(written).not_to_have_attribute("data-value", "0", timeout=60_000)
            first = int(written.get_attribute("data-value") or "0")
            page.wait_for_function(
                "n => Number(document.getElementById('entity-valuations-written').dataset.value) > n",
                arg=first,
                timeout=60_000,
            )
            second = int(written.get_attribute("data-value") or "0")
            assert second > first > 0
            page.wait_for_timeout(2500)  # a few chart samples
            page.screenshot(path=str(ARTIFACTS / "dashboard-02-live-counts.png"), full_page=True)

            # Start an incremental sync (the real `pacs-sync sync --until-caught-up`) and see it finish.
            page.click("#start-incremental")
            expect(page.locator("#sync-message")).to_contain_text("started", timeout=10_000)
            job_row = page.locator("#jobs-body tr").first
            expect(job_row).to_have_attribute("data-state", "running", timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-03-sync-running.png"), full_page=True)
            # a second start while it runs is refused
            page.click("#start-full")
            expect(page.locator("#sync-message")).to_contain_text("Refused", timeout=10_000)
            expect(job_row).to_have_attribute("data-state", "succeeded", timeout=180_000)
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
            browser.close()
