"""Operator requests to a running producer, as files in its state dir: a re-snapshot of some tables.

``pacs-sync sync --full`` (or the management API) asks for a re-snapshot by writing the request;
the producer picks it up at its next poll, re-publishes those tables at the current high-water mark
(the sink keeps the newest by position, so rows already there are untouched) and removes the
request only after the re-snapshot is committed: a crash in between repeats it, which is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pacs_sync.state_files import write_atomic
from producer.mapping import TABLES


def request_file(state_dir: Path, topic_prefix: str, db_name: str) -> Path:
    """Where the re-snapshot request of one producer (prefix + database) lives."""
    return state_dir / "requests" / f"resnapshot.{topic_prefix}.{db_name}.json"


def request_resnapshot(path: Path, tables: Iterable[str]) -> list[str]:
    """Ask for a re-snapshot of ``tables`` (merged with a request not yet served); returns them all."""
    asked = set(tables)
    unknown = asked - set(TABLES)
    if unknown:
        raise ValueError(f"unknown tables {sorted(unknown)}; expected some of {list(TABLES)}")
    wanted = [t for t in TABLES if t in asked | set(pending_resnapshot(path))]
    _write(path, wanted)
    return wanted


def _write(path: Path, tables: list[str]) -> None:
    # Atomic: the producer never reads half a request, and a failed write leaves no temporary file.
    write_atomic(path, json.dumps({"tables": tables}))


def pending_resnapshot(path: Path) -> list[str]:
    """The tables a pending request names (empty if none)."""
    try:
        tables = json.loads(path.read_text()).get("tables", [])
    except (FileNotFoundError, ValueError):
        return []
    return [t for t in TABLES if t in tables]


def clear_request(path: Path, served: Iterable[str]) -> None:
    """Remove the request once ``served`` tables are re-published (keeps tables asked for meanwhile)."""
    left = [t for t in pending_resnapshot(path) if t not in set(served)]
    if left:
        _write(path, left)
    else:
        path.unlink(missing_ok=True)
