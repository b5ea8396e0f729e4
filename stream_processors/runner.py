"""The ``pacs-sync processor`` process: metrics endpoint, event loop and the Faust worker."""

from __future__ import annotations

import asyncio
import logging

import faust
from prometheus_client import CollectorRegistry

from pacs_sync.metrics import ProcessorMetrics, serve
from stream_processors.app import create_app
from stream_processors.settings import ProcessorSettings

logger = logging.getLogger(__name__)


def install_event_loop(choice: str) -> str:
    """Make ``choice`` ("uvloop" or "asyncio") the event loop of loops created from now on.

    Must run before the Faust worker exists: mode's Worker creates the main loop and Faust's
    consumer thread its own, both through the installed policy. Returns the loop actually in use:
    "asyncio" when uvloop was asked for but cannot be imported (with a warning).
    """
    if choice != "uvloop":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        logger.warning(
            "PACS_EVENT_LOOP=uvloop but uvloop cannot be imported; using the asyncio event loop "
            "(the worker is about 14 % slower). Install uvloop or set PACS_EVENT_LOOP=asyncio."
        )
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def serve_processor(settings: ProcessorSettings) -> None:
    """Run one worker until SIGTERM/Ctrl-C; workers with the same app id share the partitions."""
    loop = install_event_loop(settings.event_loop)
    logger.info(
        "processor worker: event loop %s, processing guarantee %s", loop, settings.processing_guarantee
    )
    registry = CollectorRegistry()
    serve(registry, settings.metrics_port)
    app = create_app(settings, metrics=ProcessorMetrics.create(registry))
    # Faust's default DEBUG-level logging and spinner cost ~15 % (STACK-NOTES): run it quiet.
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
