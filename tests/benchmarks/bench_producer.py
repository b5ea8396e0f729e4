"""Producer throughput on the real local stack: snapshot and streaming events per second.

A script, not a pytest test::

    .venv/bin/python tests/benchmarks/bench_producer.py [--runs 3] [--scale benton] \
        [--output bench-results/producer.json] [--snapshot-only] [--reuse-db] [--seed 1] [--timeout 900]

What it does, against the running local stack (``pacs-sync stack up``; nothing is started or stopped):

1. ``sim init --scale <scale>`` into a database of its own (``bench_producer_<pid>``) with a read-only
   login of its own, so the shared ``pacs`` database and the ``pacs_sync`` login are never touched.
2. Per run: a :class:`~producer.runner.ProducerRunner` in-process (fresh ``CollectorRegistry``,
   ``metrics_port=0``) with a topic prefix of its own, so it snapshots from scratch, run with
   ``until_caught_up``. Snapshot events/s = published snapshot rows / seconds from the start of
   ``run()`` to its return.
3. Per run (unless ``--snapshot-only``): ``sim churn --rate 100000 --changes 20000`` against the same
   database, wait until the capture agent has drained ``cdc_emu.txn_commit``, then a second producer
   on the same prefix resumes from its saved offset and streams the backlog with ``until_caught_up``.
   Streaming events/s = change events published / seconds of that ``run()``. The event count is
   checked against the change tables (every row except update before-images, ``__$operation = 3``,
   which are folded into the following after-image).

   Before each run after the first the database is re-created with the same seed (about 3 s, not
   timed), so every run snapshots the same rows and streams the same backlog; ``--reuse-db`` keeps
   one database instead (each run then also snapshots the earlier runs' churn). After each (re)creation
   the benchmark waits until the new capture agent has connected, plus a second: the agent's own
   start-up (a Python process) would otherwise compete with the producer for the CPU.
4. Prints a table, writes JSON (machine, settings, every run, medians, the 20,000 events/s snapshot
   target and whether the median met it) and cleans up: the benchmark database, its login, its
   capture agent (and the agent's log), and every topic with a benchmark prefix.

To profile one snapshot run (cProfile sees only the calling thread; librdkafka's own threads are C)::

    .venv/bin/python -m cProfile -o /tmp/prof.out tests/benchmarks/bench_producer.py --runs 1 --snapshot-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import secrets
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pg8000.native import identifier
from prometheus_client import CollectorRegistry

from pacs_sync import dbapi
from pacs_sync.errors import PacsSyncError
from pacs_sync.lsn import Lsn
from pacs_sync.metrics import ProducerMetrics
from pacs_sync.sim.agent import AgentProcess
from pacs_sync.sim.churn import run_churn
from pacs_sync.sim.emulator import PACS_TABLES, EmulatorAdmin
from pacs_sync.sim.generator import scale_for
from pacs_sync.sim.loader import init_database
from pacs_sync.sim.settings import SimSettings
from pacs_sync.stack import StackSettings
from pacs_sync.stack.postgres import PostgresServer, connection_kwargs
from producer.runner import ProducerRunner, RunSummary
from producer.settings import ProducerSettings
from schemas.codec import AvroCodec, SchemaRegistry

logger = logging.getLogger("bench_producer")

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT_TARGET_EVENTS_PER_S = 20_000.0
CHURN_RATE = 100_000.0
CHURN_CHANGES = 20_000
_DRAIN_POLL_S = 0.2
_ATTEMPTS = 3
"""A producer run that raises (e.g. a broker hiccup right after topic creation) is retried, and recorded."""
_AGENT_SETTLE_S = 1.0
"""After the agent connects: let its first capture scan and the new database's caches settle."""


# ---- results ----


@dataclass
class SnapshotRun:
    """One snapshot measurement."""

    run: int
    topic_prefix: str
    source_rows: int
    rows: int
    rows_by_table: dict[str, int]
    seconds: float
    events_per_s: float
    start_seconds: float
    """From the start of ``run()`` to the start of the snapshot (connect, checks, topics, fencing, offset)."""
    snapshot_seconds: float
    """The snapshot itself (read chunks, encode, produce, commit a transaction per chunk)."""
    tail_seconds: float
    """After the snapshot until ``run()`` returned (one idle poll and a heartbeat transaction)."""
    complete: bool


@dataclass
class StreamingRun:
    """One streaming measurement: the churn backlog, the capture drain and the producer run."""

    run: int
    topic_prefix: str
    churn_seed: int
    churn_transactions: int
    churn_row_changes: int
    churn_seconds: float
    drain_seconds: float
    expected_events: int
    events: int
    events_by_op: dict[str, int]
    windows: int
    seconds: float
    events_per_s: float
    start_seconds: float
    """From the start of ``run()`` to the first poll (connect, checks, topics, fencing, the offset)."""
    poll_seconds: float
    """Time inside ``poll()`` (query, merge, encode, produce, commit per window)."""
    complete: bool


@dataclass
class Results:
    """Everything the JSON file holds."""

    timestamp: str
    machine: dict[str, Any]
    config: dict[str, Any]
    dataset: dict[str, Any]
    snapshot_runs: list[SnapshotRun] = field(default_factory=list)
    streaming_runs: list[StreamingRun] = field(default_factory=list)
    failed_attempts: list[dict[str, Any]] = field(default_factory=list)
    """Producer runs that raised and were retried: phase, run, attempt, topic prefix, error."""

    def to_json(self) -> dict[str, Any]:
        snapshot_rates = [r.events_per_s for r in self.snapshot_runs]
        streaming_rates = [r.events_per_s for r in self.streaming_runs]
        snapshot_median = statistics.median(snapshot_rates) if snapshot_rates else None
        return {
            "benchmark": "producer",
            "timestamp": self.timestamp,
            "machine": self.machine,
            "config": self.config,
            "dataset": self.dataset,
            "snapshot": {
                "runs": [asdict(r) for r in self.snapshot_runs],
                "median_events_per_s": snapshot_median,
                "target_events_per_s": SNAPSHOT_TARGET_EVENTS_PER_S,
                "median_met_target": (
                    None if snapshot_median is None else snapshot_median >= SNAPSHOT_TARGET_EVENTS_PER_S
                ),
            },
            "streaming": {
                "runs": [asdict(r) for r in self.streaming_runs],
                "median_events_per_s": statistics.median(streaming_rates) if streaming_rates else None,
            },
            "failed_attempts": self.failed_attempts,
        }


# ---- instrumented runner (measures phases; behaviour unchanged) ----


class TimedRunner(ProducerRunner):
    """A :class:`ProducerRunner` that records when its phases start and end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_started = 0.0
        self.first_work: float | None = None
        self.snapshot_seconds = 0.0
        self.snapshot_ended: float | None = None
        self.poll_seconds = 0.0

    def run(self, stop: threading.Event, *, until_caught_up: bool = False) -> RunSummary:
        self.run_started = time.perf_counter()
        return super().run(stop, until_caught_up=until_caught_up)

    def snapshot(self, stop: threading.Event) -> None:
        started = time.perf_counter()
        if self.first_work is None:
            self.first_work = started
        try:
            super().snapshot(stop)
        finally:
            self.snapshot_ended = time.perf_counter()
            self.snapshot_seconds += self.snapshot_ended - started

    def poll(self) -> bool:
        started = time.perf_counter()
        if self.first_work is None:
            self.first_work = started
        try:
            return super().poll()
        finally:
            self.poll_seconds += time.perf_counter() - started


def run_producer(settings: ProducerSettings, timeout_s: float) -> tuple[TimedRunner, RunSummary, float, bool]:
    """Run a fresh producer until caught up; return it, its summary, the run() seconds and completeness."""
    codec = AvroCodec(SchemaRegistry.from_package())  # built before run(), as serve_producer does
    runner = TimedRunner(settings, codec, ProducerMetrics.create(CollectorRegistry()))
    stop = threading.Event()
    watchdog = threading.Timer(timeout_s, stop.set)
    watchdog.daemon = True
    watchdog.start()
    try:
        started = time.perf_counter()
        summary = runner.run(stop, until_caught_up=True)
        seconds = time.perf_counter() - started
    finally:
        watchdog.cancel()
        runner.close()
    if stop.is_set():
        logger.error("producer run on %s hit the %.0f s watchdog", settings.topic_prefix, timeout_s)
    return runner, summary, seconds, not stop.is_set()


def run_with_retries(
    settings_for: Callable[[], ProducerSettings],
    timeout_s: float,
    *,
    phase: str,
    run: int,
    failures: list[dict[str, Any]],
) -> tuple[ProducerSettings, TimedRunner, RunSummary, float, bool]:
    """:func:`run_producer`, retried when it raises (asking ``settings_for`` again); failures recorded."""
    for attempt in range(1, _ATTEMPTS + 1):
        settings = settings_for()
        try:
            return (settings, *run_producer(settings, timeout_s))
        except (KafkaException, PacsSyncError) as exc:
            logger.warning("%s run %d attempt %d failed: %s", phase, run, attempt, exc, exc_info=True)
            failures.append(
                {
                    "phase": phase,
                    "run": run,
                    "attempt": attempt,
                    "topic_prefix": settings.topic_prefix,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
            if attempt == _ATTEMPTS:
                raise
    raise AssertionError("unreachable")


# ---- the emulated PACS database ----


class BenchDatabase:
    """Superuser access to the benchmark's emulated PACS database."""

    def __init__(self, sim: SimSettings) -> None:
        self.sim = sim
        self.server = PostgresServer(StackSettings.load())
        self.kwargs = connection_kwargs(self.server, sim.db_name)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = dbapi.connect(**self.kwargs, autocommit=True, application_name="bench_producer")
        try:
            return dbapi.fetch_all(conn, sql, params)
        finally:
            conn.close()

    def row_count(self) -> int:
        """Rows in the four PACS tables."""
        counts = "+".join(f"(SELECT COUNT(*) FROM dbo.{identifier(t.lower())})" for t in PACS_TABLES)
        return int(self._query(f"SELECT {counts}")[0][0])

    def max_lsn(self) -> Lsn:
        value = self._query("SELECT sys.fn_cdc_get_max_lsn()")[0][0]
        return Lsn.zero() if value is None else Lsn(bytes(value))

    def events_after(self, lsn: Lsn) -> int:
        """Change events the producer must publish for changes after ``lsn`` (before-images fold away)."""
        total = 0
        for (ct_name,) in self._query("SELECT ct_name FROM cdc_emu.instance"):
            sql = (
                f"SELECT COUNT(*) FROM cdc.{identifier(str(ct_name))} "
                """WHERE "__$start_lsn" > ? AND "__$operation" <> 3"""
            )
            total += int(self._query(sql, (lsn.value,))[0][0])
        return total

    def wait_for_agent(self, timeout_s: float) -> float:
        """Wait until the freshly started capture agent has connected (its start-up competes for the CPU)."""
        started = time.perf_counter()
        sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = ? AND application_name = 'cdc-agent'"
        while int(self._query(sql, (self.sim.db_name,))[0][0]) == 0:
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(
                    f"the capture agent of {self.sim.db_name} did not connect in {timeout_s:.0f} s"
                )
            time.sleep(_DRAIN_POLL_S)
        time.sleep(_AGENT_SETTLE_S)
        return time.perf_counter() - started

    def wait_for_capture(self, timeout_s: float) -> float:
        """Wait until the capture job has moved every committed transaction into the change tables."""
        started = time.perf_counter()
        agent = AgentProcess(self.sim.state_dir, self.sim.db_name)
        while True:
            pending = int(self._query("SELECT COUNT(*) FROM cdc_emu.txn_commit")[0][0])
            if pending == 0:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"{pending} transactions still uncaptured after {timeout_s:.0f} s")
            if agent.running_pid() is None:  # no agent: run the capture job ourselves
                admin = EmulatorAdmin(dbapi.connect(**self.kwargs, autocommit=True))
                try:
                    admin.scan()
                finally:
                    admin.close()
            else:
                time.sleep(_DRAIN_POLL_S)


# ---- clean-up ----


def cleanup(sim: SimSettings, prefixes: list[str]) -> None:
    """Stop the agent, drop the database and login, delete the benchmark's topics. Each step always runs."""
    agent = AgentProcess(sim.state_dir, sim.db_name)
    try:
        agent.stop()
        agent.log_file.unlink(missing_ok=True)
    except (OSError, PacsSyncError):
        logger.exception("stopping the capture agent of %s failed", sim.db_name)
    try:
        root = PostgresServer(StackSettings.load()).connect()
        try:
            cursor = root.cursor()
            cursor.execute(f"DROP DATABASE IF EXISTS {identifier(sim.db_name)} WITH (FORCE)")
            cursor.execute(f"DROP ROLE IF EXISTS {identifier(sim.db_user)}")
        finally:
            root.close()
        logger.info("dropped database %s and login %s", sim.db_name, sim.db_user)
    except (dbapi.DriverError, PacsSyncError, OSError):
        logger.exception("dropping database %s failed", sim.db_name)
    if not prefixes:
        return
    try:
        admin = AdminClient({"bootstrap.servers": sim.kafka_bootstrap_servers, "log_level": 3})
        topics = sorted(
            name
            for name in admin.list_topics(timeout=30).topics
            if any(name.startswith(f"{prefix}.") for prefix in prefixes)
        )
        if topics:
            for name, future in admin.delete_topics(topics, operation_timeout=30).items():
                try:
                    future.result(timeout=60)
                except KafkaException:
                    logger.exception("deleting topic %s failed", name)
        logger.info("deleted %d benchmark topics", len(topics))
    except KafkaException:
        logger.exception("listing or deleting the benchmark topics failed")


# ---- the benchmark ----


def source_fingerprint() -> str:
    """SHA-256 over the producer's and the codec's source files: which code these figures measured."""
    digest = hashlib.sha256()
    for path in sorted([*REPO_ROOT.glob("producer/*.py"), *REPO_ROOT.glob("schemas/*.py")]):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def producer_settings(sim: SimSettings, prefix: str) -> ProducerSettings:
    return ProducerSettings.load(
        db_name=sim.db_name,
        db_user=sim.db_user,
        db_password=sim.db_password,
        kafka_bootstrap_servers=sim.kafka_bootstrap_servers,
        state_dir=sim.state_dir,
        topic_prefix=prefix,
        metrics_port=0,
    )


def measure_snapshot(
    db: BenchDatabase,
    new_settings: Callable[[], ProducerSettings],
    run: int,
    timeout_s: float,
    failures: list[dict[str, Any]],
) -> SnapshotRun:
    """Snapshot from scratch; a retried attempt gets a fresh topic prefix from ``new_settings``."""
    source_rows = db.row_count()
    settings, runner, summary, seconds, complete = run_with_retries(
        new_settings, timeout_s, phase="snapshot", run=run, failures=failures
    )
    rows = sum(summary.snapshot_rows.values())
    first = runner.first_work if runner.first_work is not None else runner.run_started
    ended = runner.snapshot_ended if runner.snapshot_ended is not None else first
    if rows != source_rows:
        logger.error("snapshot published %d rows, the source holds %d", rows, source_rows)
        complete = False
    return SnapshotRun(
        run=run,
        topic_prefix=settings.topic_prefix,
        source_rows=source_rows,
        rows=rows,
        rows_by_table=dict(summary.snapshot_rows),
        seconds=round(seconds, 4),
        events_per_s=round(rows / seconds, 1) if seconds > 0 else 0.0,
        start_seconds=round(first - runner.run_started, 4),
        snapshot_seconds=round(runner.snapshot_seconds, 4),
        tail_seconds=round(runner.run_started + seconds - ended, 4),
        complete=complete,
    )


def measure_streaming(
    db: BenchDatabase,
    settings: ProducerSettings,
    run: int,
    seed: int,
    timeout_s: float,
    failures: list[dict[str, Any]],
) -> StreamingRun:
    before = db.max_lsn()
    churn = run_churn(db.sim, rate=CHURN_RATE, seed=seed, max_changes=CHURN_CHANGES)
    logger.info(
        "churn: %d transactions, %d row changes in %.1f s (%d failed)",
        churn.transactions,
        churn.changes,
        churn.seconds,
        churn.failed,
    )
    drain = db.wait_for_capture(timeout_s)
    expected = db.events_after(before)
    _, runner, summary, seconds, complete = run_with_retries(
        lambda: settings, timeout_s, phase="streaming", run=run, failures=failures
    )
    events = sum(summary.events.values())
    if sum(summary.snapshot_rows.values()):
        logger.error("the streaming run re-snapshotted: the saved offset was not found")
        complete = False
    if events != expected:
        logger.error("streamed %d events, the change tables hold %d after %s", events, expected, before)
        complete = False
    first = runner.first_work if runner.first_work is not None else runner.run_started
    return StreamingRun(
        run=run,
        topic_prefix=settings.topic_prefix,
        churn_seed=seed,
        churn_transactions=churn.transactions,
        churn_row_changes=churn.changes,
        churn_seconds=round(churn.seconds, 3),
        drain_seconds=round(drain, 3),
        expected_events=expected,
        events=events,
        events_by_op=dict(sorted(summary.events.items())),
        windows=summary.windows,
        seconds=round(seconds, 4),
        events_per_s=round(events / seconds, 1) if seconds > 0 else 0.0,
        start_seconds=round(first - runner.run_started, 4),
        poll_seconds=round(runner.poll_seconds, 4),
        complete=complete,
    )


def render_table(results: Results) -> str:
    data = results.to_json()
    lines = [
        "",
        f"producer throughput ({results.config['scale']} scale, {os.cpu_count()} cores, "
        f"Python {platform.python_version()})",
        "",
        f"{'phase':<10} {'run':>3} {'events':>9} {'seconds':>8} {'events/s':>10} "
        f"{'start s':>8} {'work s':>8} {'ok':>3}",
    ]
    for s in results.snapshot_runs:
        lines.append(
            f"{'snapshot':<10} {s.run:>3} {s.rows:>9,} {s.seconds:>8.2f} {s.events_per_s:>10,.0f} "
            f"{s.start_seconds:>8.2f} {s.snapshot_seconds:>8.2f} {'yes' if s.complete else 'NO':>3}"
        )
    for t in results.streaming_runs:
        lines.append(
            f"{'streaming':<10} {t.run:>3} {t.events:>9,} {t.seconds:>8.2f} {t.events_per_s:>10,.0f} "
            f"{t.start_seconds:>8.2f} {t.poll_seconds:>8.2f} {'yes' if t.complete else 'NO':>3}"
        )
    snap = data["snapshot"]
    lines.append("")
    if snap["median_events_per_s"] is not None:
        verdict = "met" if snap["median_met_target"] else "MISSED"
        lines.append(
            f"snapshot  median {snap['median_events_per_s']:>10,.0f} events/s "
            f"(target {SNAPSHOT_TARGET_EVENTS_PER_S:,.0f}: {verdict})"
        )
    streaming_median = data["streaming"]["median_events_per_s"]
    if streaming_median is not None:
        backlog = statistics.median(t.churn_transactions for t in results.streaming_runs)
        lines.append(
            f"streaming median {streaming_median:>10,.0f} events/s "
            f"(backlog of {CHURN_CHANGES:,} row changes, ~{backlog:,.0f} transactions)"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (default 3)")
    parser.add_argument("--scale", default="benton", help="sim init scale: small, benton or a number")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "bench-results" / "producer.json",
        help="JSON results file (default bench-results/producer.json)",
    )
    parser.add_argument("--seed", type=int, default=1, help="data seed; churn run i uses seed + i")
    parser.add_argument("--snapshot-only", action="store_true", help="skip the streaming measurement")
    parser.add_argument(
        "--reuse-db",
        action="store_true",
        help="keep one database for all runs (each run then snapshots the previous runs' churn too); "
        "default: re-create it before each run so every run gets identical inputs",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds before a producer run or drain is given up"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    args = parse_args(argv)
    output = args.output.resolve()
    pid = os.getpid()
    database = f"bench_producer_{pid}"
    base_prefix = f"bench_producer_{pid}"
    # Children (the capture agent) inherit the environment: point them at our database, never `pacs`.
    os.environ["PACS_DB_NAME"] = database
    os.environ["PACS_DB_USER"] = f"{database}_reader"
    os.environ["PACS_DB_PASSWORD"] = secrets.token_hex(16)
    os.environ["PACS_TOPIC_PREFIX"] = base_prefix
    os.environ.setdefault("PACS_STATE_DIR", str(REPO_ROOT / ".pacs-sync"))
    sim = SimSettings.load()
    if sim.db_name != database:
        raise RuntimeError(f"PACS_DB_NAME resolved to {sim.db_name!r}, not the benchmark's {database!r}")
    prefixes: list[str] = []
    exit_code = 0
    try:
        scale = scale_for(args.scale)
        logger.info("sim init --scale %s into database %s", args.scale, database)
        init = init_database(sim, scale, seed=args.seed, dirty_rate=0.0)
        BenchDatabase(sim).wait_for_agent(args.timeout)
        probe = producer_settings(sim, base_prefix)
        results = Results(
            timestamp=datetime.now(tz=UTC).isoformat(timespec="seconds"),
            machine={
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
            },
            config={
                "scale": args.scale,
                "runs": args.runs,
                "database": database,
                "database_per_run": "reused" if args.reuse_db else "re-created (identical inputs)",
                "data_seed": args.seed,
                "churn_rate": CHURN_RATE,
                "churn_changes": None if args.snapshot_only else CHURN_CHANGES,
                "snapshot_chunk_rows": probe.snapshot_chunk_rows,
                "topic_partitions": probe.topic_partitions,
                "max_transactions_per_poll": probe.max_transactions_per_poll,
                "page_rows": probe.page_rows,
                "min_poll_interval_s": probe.min_poll_interval_s,
                "kafka_bootstrap_servers": probe.kafka_bootstrap_servers,
                "producer_source_sha256": source_fingerprint(),
            },
            dataset={"row_counts": init.row_counts, "init_seconds": round(init.seconds, 2)},
        )
        for run in range(1, args.runs + 1):
            if run > 1 and not args.reuse_db:
                # Same seed, same data: every run snapshots the same rows and streams the same backlog.
                logger.info("re-creating database %s for run %d", database, run)
                init_database(sim, scale, seed=args.seed, dirty_rate=0.0)
                BenchDatabase(sim).wait_for_agent(args.timeout)

            def fresh_settings(run: int = run) -> ProducerSettings:
                prefix = f"{base_prefix}_{run}_{uuid.uuid4().hex[:6]}"
                prefixes.append(prefix)  # before it is used: clean-up deletes its topics whatever happens
                return producer_settings(sim, prefix)

            snap = measure_snapshot(
                BenchDatabase(sim), fresh_settings, run, args.timeout, results.failed_attempts
            )
            results.snapshot_runs.append(snap)
            logger.info(
                "snapshot run %d: %d rows in %.2f s = %.0f events/s",
                run,
                snap.rows,
                snap.seconds,
                snap.events_per_s,
            )
            if not args.snapshot_only:
                churn_seed = args.seed + run - 1 if args.reuse_db else args.seed
                settings = producer_settings(sim, snap.topic_prefix)  # resumes from the snapshot's offset
                stream = measure_streaming(
                    BenchDatabase(sim), settings, run, churn_seed, args.timeout, results.failed_attempts
                )
                results.streaming_runs.append(stream)
                logger.info(
                    "streaming run %d: %d events in %.2f s = %.0f events/s",
                    run,
                    stream.events,
                    stream.seconds,
                    stream.events_per_s,
                )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results.to_json(), indent=2) + "\n", encoding="utf-8")
        sys.stdout.write(render_table(results))
        for failure in results.failed_attempts:
            sys.stdout.write(
                f"retried: {failure['phase']} run {failure['run']} attempt {failure['attempt']}: "
                f"{failure['error']}\n"
            )
        sys.stdout.write(f"results written to {output}\n")
        complete = [r.complete for r in results.snapshot_runs] + [r.complete for r in results.streaming_runs]
        if not all(complete):
            logger.error("at least one run was incomplete or miscounted; see the log above")
            exit_code = 1
    finally:
        cleanup(sim, prefixes)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
