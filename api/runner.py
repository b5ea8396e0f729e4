"""``pacs-sync api``: serve the management API and the dashboard with uvicorn.

HTTPS when PACS_API_TLS_CERT_FILE and PACS_API_TLS_KEY_FILE are set; plain HTTP is served only on a
loopback address (the default 127.0.0.1).
"""

from __future__ import annotations

import logging

import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from pacs_sync.errors import PacsSyncError

logger = logging.getLogger(__name__)


def serve_api(settings: ApiSettings) -> None:
    """Check the serving configuration, then run until SIGTERM/SIGINT."""
    settings.check_serving()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        ssl_certfile=str(settings.api_tls_cert_file) if settings.api_tls_cert_file else None,
        ssl_keyfile=str(settings.api_tls_key_file) if settings.api_tls_key_file else None,
        log_config=None,  # our handlers (pacs_sync.logging); uvicorn's loggers propagate to them
        access_log=True,
        proxy_headers=False,
        server_header=False,
        lifespan="on",
    )
    scheme = "https" if settings.tls else "http"
    logger.info(
        "serving the API on %s://%s:%d (dashboard /pacs-sync, API /api/v1/pacs-sync)",
        scheme,
        settings.api_host,
        settings.api_port,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        error = app.state.api.startup_error
        if isinstance(error, PacsSyncError):
            raise error
        raise PacsSyncError(f"the API did not start: {error or 'see the log above'}")
