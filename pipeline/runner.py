"""The ``pacs-sync run`` process: the supervisor, its metrics, its pid file, Ctrl-C."""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from pacs_sync.errors import ConfigurationError
from pacs_sync.metrics import SupervisorMetrics, serve
from pacs_sync.state_files import SETTING as STATE_DIR_SETTING
from pacs_sync.state_files import create_once, ensure_state_dir, write_atomic
from pipeline.settings import PipelineSettings
from pipeline.supervisor import StageCommand, Supervisor, pipeline_stages
from pipeline.sync import pipeline_pid_file, pipeline_running


def local_api_env(settings: PipelineSettings) -> dict[str, str]:
    """Token and credential keys for an API on this machine when none are configured.

    Generated once into the state dir's secrets (mode 0600), like the local PostgreSQL password;
    a configured ``PACS_API_JWT_*`` / ``PACS_API_CREDENTIALS_KEY*`` always wins.
    """
    secrets_dir = settings.state_dir / "secrets"
    env: dict[str, str] = {}
    if not (os.environ.get("PACS_API_JWT_SECRET") or os.environ.get("PACS_API_JWT_PUBLIC_KEY_FILE")):
        env["PACS_API_JWT_SECRET"] = _secret_file(secrets_dir / "api-jwt.secret", secrets.token_urlsafe(48))
    if not (os.environ.get("PACS_API_CREDENTIALS_KEY") or os.environ.get("PACS_API_CREDENTIALS_KEY_FILE")):
        key_file = secrets_dir / "api-credentials.key"
        _secret_file(key_file, base64.b64encode(secrets.token_bytes(32)).decode())
        env["PACS_API_CREDENTIALS_KEY_FILE"] = str(key_file)
    return env


def _secret_file(path: Path, fresh: str) -> str:
    # Created complete or not at all (a secret cut short by a full disk would be reused by every
    # later run); the first writer wins if two runs race.
    secret = create_once(path, fresh)
    if len(secret) < len(fresh):  # generated secrets have a fixed length: this one was cut off
        raise ConfigurationError(
            f"the generated secret {path} is shorter than it was generated (cut off by an earlier "
            "failed write?); delete it so that a new one is generated",
            setting=STATE_DIR_SETTING,
            path=str(path),
        )
    return secret


def demo_token(jwt_secret: str, ttl: timedelta = timedelta(hours=12)) -> str:
    """An admin token for the person running the local demo (the API listens on loopback only)."""
    from api.auth import Role, TokenKeys, issue_token

    keys = TokenKeys("HS256", jwt_secret, jwt_secret, audience="pacs-sync", issuer="pacs-sync")
    return issue_token(keys, subject=getpass.getuser(), role=Role.ADMIN, ttl=ttl)


def serve_pipeline(
    settings: PipelineSettings,
    *,
    churn_rate: float = 0.0,
    with_api: bool = True,
    announce: Callable[[str], None] = lambda _: None,
) -> None:
    """Run every stage until SIGINT/SIGTERM; one supervisor per state dir.

    The state dir is checked first (PACS-008 naming ``PACS_STATE_DIR`` if it cannot take a file), so
    an unusable one fails before any stage starts; a failure after that stops the stages started.
    """
    ensure_state_dir(settings.state_dir)
    if pipeline_running(settings):
        raise ConfigurationError(
            f"a pipeline already runs for state dir {settings.state_dir} (PACS_STATE_DIR); stop it first"
        )
    extra = []
    if churn_rate > 0:
        argv = (
            sys.executable,
            "-m",
            "pacs_sync",
            "sim",
            "churn",
            "--rate",
            str(churn_rate),
            "--duration",
            "1e9",
        )
        extra.append(StageCommand("churn", argv))
    api_env: dict[str, str] = {}
    if with_api:
        api_env = local_api_env(settings)
        extra.append(StageCommand("api", (sys.executable, "-m", "pacs_sync", "api"), api_env))
    registry = CollectorRegistry()
    serve(registry, settings.supervisor_metrics_port)
    pid_file = pipeline_pid_file(settings)
    supervisor = Supervisor(
        settings,
        pipeline_stages(settings, extra=extra),
        SupervisorMetrics.create(registry),
        pids_file=pid_file.with_suffix(".stages.json"),
    )
    write_atomic(pid_file, f"{os.getpid()}\n")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    announce(
        "pipeline running: producer, "
        f"{settings.processor_workers} processor worker(s), sink"
        + (f", churn at {churn_rate:g} changes/s" if churn_rate else "")
    )
    ports = {
        "supervisor": settings.supervisor_metrics_port,
        "producer": settings.producer_metrics_port,
        "processor": settings.processor_metrics_port,
        "sink": settings.sink_metrics_port,
    }
    for name, port in ports.items():
        if port:
            announce(f"  metrics {name:<10} http://127.0.0.1:{port}/metrics")
    if with_api:
        scheme = "https" if os.environ.get("PACS_API_TLS_CERT_FILE") else "http"
        api_port = os.environ.get("PACS_API_PORT", "8080")
        announce(f"  dashboard        {scheme}://127.0.0.1:{api_port}/pacs-sync")
        if "PACS_API_JWT_SECRET" in api_env:
            announce(f"  admin token (12 h, this machine only): {demo_token(api_env['PACS_API_JWT_SECRET'])}")
    announce(f"  logs in {supervisor.log_dir}/; Ctrl-C stops every stage")
    try:
        supervisor.run_until(stop)
    finally:
        for path in (pid_file, pid_file.with_suffix(".stages.json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
