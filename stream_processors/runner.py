"""The ``pacs-sync processor`` process: metrics endpoint and the Faust worker."""

from __future__ import annotations

import logging

import faust
from prometheus_client import CollectorRegistry

from pacs_sync.metrics import ProcessorMetrics, serve
from stream_processors.app import create_app
from stream_processors.settings import ProcessorSettings

logger = logging.getLogger(__name__)


def serve_processor(settings: ProcessorSettings) -> None:
    """Run one worker until SIGTERM/Ctrl-C; workers with the same app id share the partitions."""
    registry = CollectorRegistry()
    serve(registry, settings.metrics_port)
    app = create_app(settings, metrics=ProcessorMetrics.create(registry))
    # Faust's default DEBUG-level logging and spinner cost ~15 % (STACK-NOTES): run it quiet.
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
