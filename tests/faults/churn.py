"""The fault scenarios' change workload: ``sim churn``'s planner, minus the kinds asked to leave out.

Run as ``python -m tests.faults.churn --rate 150 --seed 11 [--exclude ownership_transfer]`` with the
pipeline's environment (``PACS_DB_NAME``); SIGTERM ends it after the transaction in flight and it
prints what it applied as one JSON line.

Why not ``pacs-sync sim churn`` itself: its ownership transfers trip a false ``OWN-SET-OVER-100``
in the processors (the buyer's insert can be checked before the seller's end date, see
``test_churn_baseline.py``), which dead-letters valid owner rows; verify then passes with those rows
missing. A fault scenario must show that *nothing* is lost, so it leaves transfers out (the baseline
test keeps them, and fails until that bug is fixed). A left-out kind is planned as a correction.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections import Counter

from pacs_sync import dbapi
from pacs_sync.errors import PacsSyncError
from pacs_sync.sim.churn import read_state
from pacs_sync.sim.loader import emulated_source
from pacs_sync.sim.settings import SimSettings
from pacs_sync.sim.workload import WorkloadPlanner
from pacs_sync.stack.postgres import connection_kwargs


def planner_for(conn: dbapi.Connection, seed: int, exclude: frozenset[str]) -> WorkloadPlanner:
    """A planner over the database's current rows that never plans the excluded kinds."""
    planner = WorkloadPlanner.from_state(*read_state(conn), seed=seed)
    for kind in exclude:
        planner._kind_planners[kind] = list  # an empty plan: the planner falls back to a correction
    return planner


def main(argv: list[str] | None = None) -> int:
    """Apply transactions at ``--rate`` row changes per second until SIGTERM or ``--duration``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--duration", type=float, default=1e9)
    parser.add_argument("--exclude", action="append", default=[])
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = SimSettings.load()
    kwargs = connection_kwargs(emulated_source(settings), settings.db_name)

    def connect() -> dbapi.Connection:
        # PostgreSQL may be restarting (the restart scenario): keep trying for a while.
        deadline = time.monotonic() + 120
        while True:
            try:
                return dbapi.connect(**kwargs, application_name="faults churn")
            except PacsSyncError:
                if time.monotonic() > deadline:
                    raise
                stop.wait(0.5)

    conn = connect()
    exclude = frozenset(args.exclude)
    planner = planner_for(conn, args.seed, exclude)
    by_kind: Counter[str] = Counter()
    changes = failed = 0
    started = time.monotonic()
    try:
        while not stop.is_set() and time.monotonic() - started < args.duration:
            txn = planner.next_transaction()
            rows = 0
            try:
                cursor = conn.cursor()
                for statement in txn.statements:
                    cursor.execute(statement.sql, statement.params)
                    rows += max(cursor.rowcount, 0)
                conn.commit()
            except dbapi.DriverError:
                failed += 1
                if failed > 1000:
                    raise
                try:
                    conn.rollback()
                except dbapi.DriverError:  # the connection is gone: a new one
                    with contextlib.suppress(dbapi.DriverError, OSError):
                        conn.close()
                    conn = connect()
                planner = planner_for(conn, args.seed + failed, exclude)
                continue
            changes += rows
            by_kind[txn.kind] += 1
            ahead = started + changes / args.rate - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)
    finally:
        conn.close()
        seconds = time.monotonic() - started
        summary = {"changes": changes, "failed": failed, "seconds": round(seconds, 1), "by_kind": by_kind}
        sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
