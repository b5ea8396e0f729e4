"""The one place that attaches log handlers; every other module only uses ``logging.getLogger``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record with its time, level, logger, message and exception."""
        body = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Send logs to stderr (stdout is for command output). Idempotent: a second call only sets the level."""
    root = logging.getLogger()
    root.setLevel(level)
    if any(getattr(h, "_pacs_sync", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_TEXT_FORMAT))
    handler._pacs_sync = True  # type: ignore[attr-defined]  # marks our handler for idempotency
    root.addHandler(handler)
    # Client libraries are chatty at INFO; their warnings still come through.
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))
