"""The ``pacs-sync run`` process: the supervisor, its metrics, its pid file, Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from pacs_sync.errors import ConfigurationError
from pacs_sync.metrics import SupervisorMetrics, serve
from pipeline.settings import PipelineSettings
from pipeline.supervisor import StageCommand, Supervisor, pipeline_stages
from pipeline.sync import pipeline_pid_file, pipeline_running


def serve_pipeline(
    settings: PipelineSettings, *, churn_rate: float = 0.0, announce: Callable[[str], None] = lambda _: None
) -> None:
    """Run every stage until SIGINT/SIGTERM; one supervisor per state dir."""
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
    registry = CollectorRegistry()
    serve(registry, settings.supervisor_metrics_port)
    pid_file = pipeline_pid_file(settings)
    supervisor = Supervisor(
        settings,
        pipeline_stages(settings, extra=extra),
        SupervisorMetrics.create(registry),
        pids_file=pid_file.with_suffix(".stages.json"),
    )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
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
    announce(f"  logs in {supervisor.log_dir}/; Ctrl-C stops every stage")
    try:
        supervisor.run_until(stop)
    finally:
        for path in (pid_file, pid_file.with_suffix(".stages.json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
