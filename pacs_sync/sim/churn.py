"""``pacs-sync sim churn``: apply a realistic assessment workload to the emulated PACS database.

Each planned transaction (revaluations, ownership transfers, new construction, parcel splits and
merges, corrections, multi-table edits) runs as one real transaction through the same DB-API
driver and qmark SQL an application would use, paced to an offered rate of row changes per second.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pacs_sync import dbapi
from pacs_sync.db_errors import translate_db_error
from pacs_sync.errors import FatalError, PacsSyncError, RetriableError
from pacs_sync.sim.generator import TABLE_COLUMNS
from pacs_sync.sim.loader import emulated_source
from pacs_sync.sim.settings import SimSettings
from pacs_sync.sim.workload import WorkloadPlanner
from pacs_sync.stack.postgres import connection_kwargs

logger = logging.getLogger(__name__)

_MAX_CONSECUTIVE_FAILURES = 20
_RECONNECT_FOR_S = 180.0  # a PostgreSQL restart or a network blip; longer is an outage worth stopping for


@dataclass
class ChurnResult:
    """What was applied: transactions by kind, row changes (rows the statements touched), failures, time."""

    transactions: int = 0
    changes: int = 0
    failed: int = 0
    seconds: float = 0.0
    by_kind: Counter[str] = field(default_factory=Counter)
    statements: dict[str, int] = field(default_factory=dict)

    reconnects: int = 0

    @property
    def rate(self) -> float:
        """Achieved row changes per second."""
        return self.changes / self.seconds if self.seconds > 0 else 0.0

    def as_record(self) -> dict[str, Any]:
        """The result as one JSON-safe object (``sim churn --json``)."""
        return {
            "transactions": self.transactions,
            "changes": self.changes,
            "failed": self.failed,
            "reconnects": self.reconnects,
            "seconds": round(self.seconds, 1),
            "by_kind": dict(self.by_kind),
        }


def read_state(conn: dbapi.Connection) -> list[list[tuple[Any, ...]]]:
    """The current rows of the four PACS tables (parents first), each in the table's column order."""
    state = []
    for table, columns in TABLE_COLUMNS.items():
        # Names come from the fixed PACS table list, never from input.
        sql = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {columns[0]}"  # noqa: S608
        state.append(dbapi.fetch_all(conn, sql))
    conn.commit()
    return state


def _planner(conn: dbapi.Connection, seed: int) -> WorkloadPlanner:
    properties, owners, valuations, structures = read_state(conn)
    # The clock stops at today: a long churn must not plan sales and tax years the pipeline's
    # validation (against the real date) rejects as future.
    return WorkloadPlanner.from_state(
        properties, owners, valuations, structures, seed=seed, latest_day=datetime.now(UTC).date()
    )


def run_churn(
    settings: SimSettings,
    *,
    rate: float,
    seed: int,
    duration_s: float | None = None,
    max_changes: int | None = None,
    stop: threading.Event | None = None,
) -> ChurnResult:
    """Apply transactions until ``duration_s`` passes, ``max_changes`` row changes are applied, or ``stop``.

    Pacing: after each commit the runner sleeps until ``changes / rate`` seconds have passed since the
    start, so the offered load is steady rather than bursty. A failed transaction is rolled back and
    the planner re-reads the database (someone else may have changed it); many failures in a row stop.
    A lost connection (PACS-001: the server restarted or is unreachable) is reopened with backoff for
    up to three minutes; a transaction cut at its commit may or may not have committed, which the
    re-read covers.
    """
    if duration_s is None and max_changes is None:
        raise ValueError("give a duration or a number of changes")
    server = emulated_source(settings)
    kwargs = connection_kwargs(server, settings.db_name)

    def connect() -> dbapi.Connection:
        return dbapi.connect(**kwargs, application_name="pacs-sync sim churn")

    conn = connect()
    result = ChurnResult()
    planner = _planner(conn, seed)
    consecutive_failures = 0
    started = time.monotonic()
    try:
        while not (stop and stop.is_set()):
            elapsed = time.monotonic() - started
            if duration_s is not None and elapsed >= duration_s:
                break
            if max_changes is not None and result.changes >= max_changes:
                break
            txn = planner.next_transaction()
            rows_changed = 0
            try:
                cursor = conn.cursor()
                for statement in txn.statements:
                    cursor.execute(statement.sql, statement.params)
                    rows_changed += max(cursor.rowcount, 0)
                conn.commit()
            except dbapi.DriverError as exc:
                error = translate_db_error(exc, server="emulated PACS")
                if not _usable(conn):
                    # The connection is gone, and its transaction with it: reconnect, then re-read.
                    conn = _reconnect(conn, connect, error, stop)
                    result.reconnects += 1
                result.failed += 1
                consecutive_failures += 1
                logger.warning("churn transaction %s failed: %s", txn.kind, error)
                if consecutive_failures >= _MAX_CONSECUTIVE_FAILURES:
                    raise FatalError(
                        f"{consecutive_failures} churn transactions failed in a row; last: {error}"
                    ) from exc
                planner = _planner(conn, seed + result.transactions + result.failed)
                continue
            consecutive_failures = 0
            result.transactions += 1
            result.changes += rows_changed
            result.by_kind[txn.kind] += 1
            ahead = started + result.changes / rate - time.monotonic()
            if ahead > 0:
                if stop is not None:
                    stop.wait(ahead)
                else:
                    time.sleep(ahead)
    finally:
        result.seconds = time.monotonic() - started
        result.statements = dict(planner.summary())
        with contextlib.suppress(dbapi.DriverError, OSError):  # a broken connection closes noisily
            conn.close()
    return result


def _usable(conn: dbapi.Connection) -> bool:
    """Whether ``conn`` still answers after a failed transaction (which this rolls back)."""
    try:
        conn.rollback()
        dbapi.fetch_all(conn, "SELECT 1")
        conn.rollback()
    except (dbapi.DriverError, OSError):
        return False
    return True


def _reconnect(
    lost: dbapi.Connection,
    connect: Callable[[], dbapi.Connection],
    cause: PacsSyncError,
    stop: threading.Event | None,
) -> dbapi.Connection:
    """A new connection after ``lost`` broke, retried with backoff for up to three minutes.

    Raises:
        RetriableError: the server stayed unreachable that long (the last connect error).
        PacsSyncError: a connect failed for good (bad credentials, the database dropped).
    """
    with contextlib.suppress(dbapi.DriverError, OSError):
        lost.close()
    logger.warning("churn lost its connection (%s); reconnecting", cause)
    deadline = time.monotonic() + _RECONNECT_FOR_S
    delay = 0.2
    while True:
        try:
            return connect()
        except RetriableError:
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            delay = min(delay * 2, 5.0)
