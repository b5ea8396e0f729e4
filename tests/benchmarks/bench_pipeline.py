"""The whole pipeline on the real local stack: Benton snapshot time, sustained end-to-end events/s, and
end-to-end latency (source commit → PostgreSQL commit) at a fixed offered load.

A script, not a pytest test::

    .venv/bin/python tests/benchmarks/bench_pipeline.py [--runs 1] [--changes 30000] [--processors 1,2] \
        [--modes live,backlog] [--latency-rate 1000] [--latency-seconds 60] [--warmup-seconds 10] \
        [--latency-processors 1] [--set NAME=VALUE ...] [--wait-for-commits] [--keep-logs] \
        [--output bench-results/pipeline.json] [--scale benton] [--seed 1] [--timeout 900]

Every measurement runs on an isolated pipeline on the shared stack, as the e2e fixture builds one: an
emulated PACS database, change and clean topic prefixes, processor and sink consumer groups and a
target database of its own (``bench_pipeline_<tag>``, ``bench_pipeline_target_<tag>``, prefix
``benchpipe_<tag>``), free metrics ports for the stages (scraped by this script every 0.2 s), the
supervisor's port off, ``pacs-sync run --no-api``. Everything is deleted afterwards, also when a step
fails: stages and capture agent stopped, databases dropped, topics and consumer groups deleted (and,
unless ``--keep-logs`` or a failure, the logs). A run uses one such pipeline per ``--processors`` count
and one for the latency: the churn's simulated clock advances a day per ~20 transactions and resumes
from the newest date in the database, so past ~100,000 row changes on one database it writes tax years
and years built beyond next year, which the processors rightly dead-letter (VAL-TAX-YEAR, …).

1. **Snapshot** (on each pipeline): ``pacs-sync sim init --scale benton`` (timed, not part of the
   figure), ``pacs-sync sync --until-caught-up`` (it starts the stages and stops them once everything
   is in PostgreSQL), ``pacs-sync verify``. Reported: both wall times (the commands as an operator runs
   them, Python start-up included) and their sum, "landed and verified" (target ≤ 60 s); and, from the
   sink's offsets, when the last row had landed, so the command's own bookkeeping shows separately.
2. **Sustained throughput**, per ``--processors`` count (``pacs-sync run --processors N`` as a
   subprocess, warm: every worker holds partitions and a 100-change probe went through), in two modes,
   ``--changes`` row changes each, applied as fast as the emulator takes them (``run_churn`` at
   100,000/s in a subprocess: one connection, one transaction at a time):

   * ``live``: the churn runs against the running pipeline, as in production. The pipeline can never go
     faster than the churn, whose own rate is reported next to it.
   * ``backlog``: the capture agent is stopped while the churn runs and started again afterwards, so
     the whole backlog reaches the running, warm pipeline at once (as after a paused capture job): the
     pipeline's own capacity, free of the churn's pace, with no start-up or rebalance in it.

   End-to-end events/s = change events that reached PostgreSQL (clean records the sink committed: the
   growth of its offsets in ``pacs_sync.sync_offsets``, at most the change events published) / (last
   commit − first commit), the commit times being ``synced_at`` of the phase's rows (``now()`` of the
   sink's batch transaction). Per stage (/metrics every 0.2 s): producer events published, processor
   events processed (all workers), sink records committed; a stage's rate = its count between the first
   sample that shows it moving and the first sample at its final value / the time between those
   samples. Also each stage's CPU (utime + stime from /proc) during the end-to-end span, how many cores
   the whole machine was busy, and the first stage in pipeline order that ran at the end-to-end rate
   (the limiting one). A phase has landed when the counts add up *and* nothing moved for 3 s.
3. **Latency**: ``pacs-sync run --processors 1`` (``--latency-processors``), warm, then churn at
   ``--latency-rate`` (1,000 row changes/s) for ``--warmup-seconds`` + ``--latency-seconds`` + 3 s. The
   window is ``[first churn commit + warm-up, + latency-seconds)`` in source commit time; for every row
   of ``pacs_sync.<entity>`` whose ``source_ts`` (the source commit time, ms) falls in it, latency =
   ``synced_at − source_ts``: p50/p95/p99 over those rows (target p99 ≤ 3 s, with the emulator's 1 s
   capture job). Which is more exact: the PostgreSQL rows give every change its own value to the
   millisecond, but ``synced_at`` is the *start* of the sink's transaction, so each value is short of
   the commit by that batch's write time (the sink's batch-duration histogram over the window bounds
   it: tens of ms), and a row changed twice keeps only its last change. The sink's own histogram
   (``pacs_sync_end_to_end_latency_seconds``, observed after the commit) is exact in time but has only
   buckets at 1, 2.5 and 5 s around the target: it is reported as the cross-check (interpolated
   percentiles, share ≤ 2.5 s). The stage breakdown: source commit → Kafka timestamp of the change event
   (capture job + producer) and of the clean record (+ processors), read back from the topics and
   decoded, per topic.
4. After the phases, ``pacs-sync verify`` again on each pipeline (everything the churn did must match),
   and at each stop the processors' uncommitted input records (what a restart would process again;
   ``--wait-for-commits`` waits for them first and reports how long the commits took).

Medians over ``--runs`` (default 1: a run takes about 10 minutes). Prints a table; writes JSON with the
machine (core count, load), versions, the code measured, settings, every figure, the targets and
whether they were met, and the per-stage benchmarks' medians (bench-results/producer.json,
processor.json, sink.json) for finding the stage that limits a missed target.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from pg8000.native import identifier

from pacs_sync import dbapi
from pacs_sync.errors import PacsSyncError
from pacs_sync.sim.agent import AgentProcess
from pacs_sync.stack import StackSettings
from pacs_sync.stack.kafka import KafkaServer
from pacs_sync.stack.postgres import PostgresServer, connection_kwargs
from schemas.codec import AvroCodec, SchemaRegistry

logger = logging.getLogger("bench_pipeline")

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTITIES = ("properties", "owners", "valuations", "structures")
TABLES = ("Property", "PropertyOwner", "PropertyValue", "Structure")

# The targets (2 cores).
SNAPSHOT_TARGET_S = 60.0
THROUGHPUT_TARGET = 3_000.0
THROUGHPUT_STRETCH = 10_000.0
LATENCY_P99_TARGET_S = 3.0

MAX_CHURN_RATE = 100_000.0
PROBE_CHANGES = 100
SAMPLE_INTERVAL_S = 0.2
LATENCY_TAIL_S = 3.0
"""The churn goes on this long after the window, so the window's last changes see a loaded pipeline."""
QUIET_S = 3.0
"""Nothing moved for this long: the pipeline is idle (see wait_landed)."""
COMMIT_WAIT_S = 120.0
"""Longest wait for the processors to commit what they processed before the pipeline is stopped."""
STALL_S = 60.0
"""A phase whose counts stop moving for this long before they add up is recorded as incomplete."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

CHURN_PROGRAM = """
import json, sys, time
from pacs_sync.logging import configure_logging
from pacs_sync.sim.churn import run_churn
from pacs_sync.sim.settings import SimSettings
settings = SimSettings.load()
configure_logging("WARNING")
rate, seed = float(sys.argv[1]), int(sys.argv[2])
changes = None if sys.argv[3] == "-" else int(sys.argv[3])
duration = None if sys.argv[4] == "-" else float(sys.argv[4])
r = run_churn(settings, rate=rate, seed=seed, duration_s=duration, max_changes=changes)
print(json.dumps({"transactions": r.transactions, "changes": r.changes, "failed": r.failed,
                  "seconds": r.seconds, "started_at": time.time() - r.seconds,
                  "by_kind": dict(r.by_kind)}))
"""


# ---- small helpers ----


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def median_of(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 (linear interpolation between order statistics), mean and max."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    if len(values) == 1:
        v = values[0]
        return {"p50": v, "p95": v, "p99": v, "mean": v, "max": v}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 4),
        "p95": round(cuts[94], 4),
        "p99": round(cuts[98], 4),
        "mean": round(statistics.fmean(values), 4),
        "max": round(max(values), 4),
    }


def free_port(*, also_plus: int = 0) -> int:
    """A TCP port nobody listens on (and, if asked, port + ``also_plus`` too)."""
    for _ in range(200):
        port = random.randint(20_000, 60_000 - also_plus)
        candidates = [port, port + also_plus] if also_plus else [port]
        ok = True
        for candidate in candidates:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("0.0.0.0", candidate))  # noqa: S104 - the stages bind 0.0.0.0 too
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free TCP port found")


def machine_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) of all CPUs since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


def cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after = stat.rsplit(")", 1)[1].split()
    return (int(after[11]) + int(after[12])) / CLK_TCK


def descendants(root: int) -> list[tuple[int, list[str]]]:
    """Every live descendant of ``root``: (pid, argv)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found.extend(children)
        frontier.extend(children)
    result = []
    for pid in sorted(found):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        result.append((pid, [a for a in argv if a]))
    return result


def stage_pids(root: int) -> dict[str, int]:
    """The pipeline stages among ``root``'s children: producer, processor[-2…], sink."""
    stages: dict[str, int] = {}
    workers = 0
    for pid, argv in descendants(root):
        if "pacs_sync" not in argv:
            continue
        rest = argv[argv.index("pacs_sync") + 1 :]
        stage = rest[0] if rest else ""
        if stage == "processor":
            workers += 1
            stages["processor" if workers == 1 else f"processor-{workers}"] = pid
        elif stage in ("producer", "sink"):
            stages[stage] = pid
    return stages


def kill_tree(process: subprocess.Popen[Any], *, grace_s: float) -> float:
    """SIGTERM a process we started, wait until it and its stages are gone; SIGKILL what is left after
    ``grace_s``. Returns the seconds it took."""
    started = time.monotonic()
    family = [p for p, _ in descendants(process.pid)]
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    deadline = started + grace_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not any(Path(f"/proc/{p}").exists() for p in family):
            return time.monotonic() - started
        time.sleep(0.1)
    for victim in [process.pid, *family]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
            logger.warning("killed pid %d (did not stop %.0f s after SIGTERM)", victim, grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    return time.monotonic() - started


# ---- /metrics ----


def scrape(port: int) -> list[tuple[str, dict[str, str], float]] | None:
    """The samples of a /metrics page: (name, labels, value); None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError, TimeoutError):
        return None
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, label_text = head.partition("{")
        labels = {}
        for pair in label_text.rstrip("}").split(","):
            if "=" in pair:
                key, _, raw = pair.partition("=")
                labels[key] = raw.strip('"')
        try:
            samples.append((name, labels, float(value)))
        except ValueError:
            continue
    return samples


def total(samples: Sequence[tuple[str, dict[str, str], float]], *names: str) -> float:
    return sum(value for name, _, value in samples if name in names)


def buckets(samples: Sequence[tuple[str, dict[str, str], float]], name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound, summed over its other labels."""
    found: dict[float, float] = {}
    for sample_name, labels, value in samples:
        if sample_name == f"{name}_bucket":
            bound = float(labels["le"])  # "+Inf" parses as inf
            found[bound] = found.get(bound, 0.0) + value
    return found


def histogram_delta(after: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def histogram_quantile(cumulative: Mapping[float, float], q: float) -> float | None:
    """Prometheus-style estimate: linear within the bucket that holds the q-th observation."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: at least this
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return None


def histogram_summary(cumulative: Mapping[float, float]) -> dict[str, Any]:
    bounds = sorted(cumulative)
    count = cumulative[bounds[-1]] if bounds else 0.0
    return {
        "observations": int(count),
        "p50_interpolated": rounded(histogram_quantile(cumulative, 0.50)),
        "p95_interpolated": rounded(histogram_quantile(cumulative, 0.95)),
        "p99_interpolated": rounded(histogram_quantile(cumulative, 0.99)),
        "share_le": {
            ("+Inf" if b == float("inf") else f"{b:g}"): round(cumulative[b] / count, 4) if count else None
            for b in bounds
        },
    }


# ---- the isolated pipeline ----


@dataclass
class Ports:
    producer: int
    processor: int
    """First worker; worker i serves on processor + 10·i."""
    sink: int

    def processors(self, workers: int) -> list[int]:
        return [self.processor + 10 * i for i in range(workers)]


@dataclass
class Pipeline:
    """One isolated pipeline on the shared stack: names, environment, clean-up."""

    tag: str
    db_name: str
    target_db: str
    prefix: str
    target_dsn: str
    ports: Ports
    env: dict[str, str]
    state_dir: Path
    log_dir: Path
    server: PostgresServer
    bootstrap: str
    extra_env: dict[str, str]
    run_process: subprocess.Popen[bytes] | None = None
    workers: int = 0
    run_flags: list[str] = field(default_factory=list)
    """Extra ``pacs-sync run`` flags: ``--no-api`` where the CLI has it (the API is no pipeline stage,
    and its fixed port would clash with another pipeline's on this machine)."""
    stop_seconds: list[float | None] = field(default_factory=list)
    """How long each stop of ``pacs-sync run`` took (SIGTERM until every stage had exited)."""

    @classmethod
    def create(cls, tag: str, extra_env: Mapping[str, str], log_dir: Path) -> Pipeline:
        stack = StackSettings.load()
        server = PostgresServer(stack)
        db_name, target_db, prefix = (
            f"bench_pipeline_{tag}",
            f"bench_pipeline_target_{tag}",
            f"benchpipe_{tag}",
        )
        target = urlsplit(stack.target_dsn.get_secret_value())
        target_dsn = urlunsplit(target._replace(path=f"/{target_db}"))
        ports = Ports(free_port(), free_port(also_plus=30), free_port())
        state_dir = Path(os.environ.get("PACS_STATE_DIR", REPO_ROOT / ".pacs-sync")).resolve()
        env = {
            **os.environ,
            "PACS_STATE_DIR": str(state_dir),
            "PACS_DB_NAME": db_name,
            "PACS_TARGET_DSN": target_dsn,
            "PACS_TOPIC_PREFIX": prefix,
            "PACS_OUTPUT_PREFIX": prefix,
            "PACS_CLEAN_TOPIC_PREFIX": prefix,
            "PACS_PROCESSOR_APP_ID": f"{prefix}-processors",
            "PACS_SINK_GROUP_ID": f"{prefix}-sink",
            "PACS_SINK_INSTANCE_ID": f"{prefix}-sink-1",
            "PACS_SUPERVISOR_METRICS_PORT": "0",
            "PACS_PRODUCER_METRICS_PORT": str(ports.producer),
            "PACS_PROCESSOR_METRICS_PORT": str(ports.processor),
            "PACS_SINK_METRICS_PORT": str(ports.sink),
            "PACS_METRICS_PORT": "0",
            **extra_env,
        }
        pipeline = cls(
            tag,
            db_name,
            target_db,
            prefix,
            target_dsn,
            ports,
            env,
            state_dir,
            log_dir,
            server,
            stack.kafka_bootstrap_servers,
            dict(extra_env),
        )
        usage = subprocess.run(
            [sys.executable, "-m", "pacs_sync", "run", "--help"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "--no-api" in usage:
            pipeline.run_flags.append("--no-api")
        root = server.connect()
        try:
            root.cursor().execute(
                f"CREATE DATABASE {identifier(target_db)} OWNER {identifier(target.username or '')}"
            )
        finally:
            root.close()
        return pipeline

    # -- commands --

    def cli(self, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
        """``pacs-sync <args>`` with this pipeline's environment; (result, wall seconds)."""
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "pacs_sync", *args],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process, grace_s=60)
            out, err = process.communicate()
            raise RuntimeError(f"pacs-sync {' '.join(args)} timed out after {timeout:.0f} s") from None
        seconds = time.perf_counter() - started
        done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        (self.log_dir / f"{self.tag}.{args[0]}.{int(time.time())}.log").write_text(
            out + "\n--- stderr\n" + err
        )
        return done, seconds

    def churn(
        self, *, rate: float, seed: int, changes: int | None = None, duration_s: float | None = None
    ) -> dict[str, Any]:
        """``run_churn`` in a subprocess (the emulated application); what it applied."""
        argv = [
            sys.executable,
            "-c",
            CHURN_PROGRAM,
            str(rate),
            str(seed),
            "-" if changes is None else str(changes),
            "-" if duration_s is None else str(duration_s),
        ]
        done = subprocess.run(argv, env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"churn failed ({done.returncode}): {done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        result["rate"] = result["changes"] / result["seconds"] if result["seconds"] > 0 else 0.0
        return result

    def start(self, workers: int) -> None:
        """``pacs-sync run --processors N`` in the background."""
        if self.run_process is not None:
            raise RuntimeError("the pipeline already runs")
        log = (self.log_dir / f"{self.tag}.run.{workers}.{int(time.time())}.log").open("ab")
        self.run_process = subprocess.Popen(
            [sys.executable, "-m", "pacs_sync", "run", "--processors", str(workers), *self.run_flags],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.workers = workers
        logger.info("pacs-sync run --processors %d started (pid %d)", workers, self.run_process.pid)

    def stop(self) -> None:
        """Stop ``pacs-sync run`` (SIGTERM: it stops every stage), SIGKILL after 90 s."""
        if self.run_process is None:
            return
        process, self.run_process = self.run_process, None
        if process.poll() is not None:
            logger.error("pacs-sync run had exited with %s", process.returncode)
            self.stop_seconds.append(None)
            return
        seconds = kill_tree(process, grace_s=90)
        self.stop_seconds.append(round(seconds, 2))
        logger.info("pacs-sync run stopped in %.1f s", seconds)

    def stage_ports(self) -> dict[str, int]:
        ports = {"producer": self.ports.producer, "sink": self.ports.sink}
        for i, port in enumerate(self.ports.processors(max(self.workers, 1))):
            ports["processor" if i == 0 else f"processor-{i + 1}"] = port
        return ports

    # -- the two databases --

    def source(self) -> dbapi.Connection:
        return dbapi.connect(
            **connection_kwargs(self.server, self.db_name), autocommit=True, application_name="bench_pipeline"
        )

    def target(self) -> dbapi.Connection:
        parts = urlsplit(self.target_dsn)
        return dbapi.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=parts.username or "",
            password=parts.password or "",
            database=parts.path.lstrip("/"),
            autocommit=True,
            application_name="bench_pipeline",
        )

    # -- clean-up --

    def cleanup(self, *, keep_logs: bool) -> None:
        """Stop everything this pipeline runs and delete its databases, topics, groups and files."""
        try:
            self.stop()
        except Exception:
            logger.exception("stopping pacs-sync run failed")
        agent = AgentProcess(self.state_dir, self.db_name)
        try:
            agent.stop()
            agent.log_file.unlink(missing_ok=True)
        except (OSError, PacsSyncError):
            logger.exception("stopping the capture agent of %s failed", self.db_name)
        try:
            root = self.server.connect()
            try:
                for database in (self.target_db, self.db_name):
                    root.cursor().execute(f"DROP DATABASE IF EXISTS {identifier(database)} WITH (FORCE)")
            finally:
                root.close()
        except (dbapi.DriverError, PacsSyncError, OSError):
            logger.exception("dropping the databases of %s failed", self.tag)
        try:
            admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})
            topics = [
                t
                for t in admin.list_topics(timeout=30).topics
                if self.db_name in t or t.startswith(self.prefix)
            ]
            if topics:
                for name, future in admin.delete_topics(topics, operation_timeout=30).items():
                    try:
                        future.result(timeout=60)
                    except KafkaException:
                        logger.exception("deleting topic %s failed", name)
            groups = [f"{self.prefix}-processors", f"{self.prefix}-sink"]
            for name, future in admin.delete_consumer_groups(groups, request_timeout=30).items():
                try:
                    future.result(timeout=60)
                except KafkaException as exc:
                    logger.debug("deleting group %s: %s", name, exc)
            logger.info("deleted %d topics of %s", len(topics), self.tag)
        except KafkaException:
            logger.exception("deleting the topics of %s failed", self.tag)
        for path in (self.state_dir / "faust").rglob(f"*{self.prefix}*"):
            shutil.rmtree(path, ignore_errors=True)
        stage_logs = self.state_dir / "logs" / f"pipeline.{self.db_name}.{self.prefix}"
        if keep_logs:
            logger.info("stage logs kept in %s, command logs in %s", stage_logs, self.log_dir)
        else:
            shutil.rmtree(stage_logs, ignore_errors=True)


def service_incarnations() -> dict[str, str | None]:
    """When the shared PostgreSQL started and which broker process runs: a change during a measurement
    means someone restarted a service under it (the measurement is then marked disturbed)."""
    stack = StackSettings.load()
    found: dict[str, str | None] = {"postgresql": None, "kafka": None}
    try:
        conn = PostgresServer(stack).connect()
        try:
            found["postgresql"] = str(dbapi.fetch_all(conn, "SELECT pg_postmaster_start_time()")[0][0])
        finally:
            conn.close()
    except (dbapi.DriverError, PacsSyncError, OSError):
        pass
    pid = KafkaServer(stack).running_pid()
    found["kafka"] = None if pid is None else str(pid)
    return found


# ---- the source and the target, from the outside ----


class Observer:
    """Reads where the pipeline stands: the source's capture state, topic ends, the sink's offsets."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.src = pipeline.source()
        self.dst = pipeline.target()
        self.kafka = Consumer(
            {
                "bootstrap.servers": pipeline.bootstrap,
                "group.id": f"bench-pipeline-observer-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        self.admin = AdminClient({"bootstrap.servers": pipeline.bootstrap, "log_level": 3})
        self.ct_tables = [
            str(r[0]) for r in dbapi.fetch_all(self.src, "SELECT ct_name FROM cdc_emu.instance")
        ]

    def close(self) -> None:
        for closer in (self.src.close, self.dst.close, self.kafka.close):
            with contextlib.suppress(Exception):
                closer()

    # source

    def uncaptured(self) -> int:
        return int(dbapi.fetch_all(self.src, "SELECT COUNT(*) FROM cdc_emu.txn_commit")[0][0])

    def max_lsn(self) -> bytes:
        value = dbapi.fetch_all(self.src, "SELECT sys.fn_cdc_get_max_lsn()")[0][0]
        return bytes(value) if value is not None else b"\x00" * 10

    def events_after(self, lsn: bytes) -> int:
        """Change events the producer publishes for changes after ``lsn`` (before-images fold away)."""
        found = 0
        for ct in self.ct_tables:
            sql = (
                f'SELECT COUNT(*) FROM cdc.{identifier(ct)} WHERE "__$start_lsn" > ? AND "__$operation" <> 3'
            )
            found += int(dbapi.fetch_all(self.src, sql, (lsn,))[0][0])
        return found

    def events_committed_between(self, start: datetime, end: datetime) -> int:
        """Change events of transactions whose source commit time is in [start, end)."""
        found = 0
        naive = (start.astimezone(UTC).replace(tzinfo=None), end.astimezone(UTC).replace(tzinfo=None))
        for ct in self.ct_tables:
            sql = (
                f"SELECT COUNT(*) FROM cdc.{identifier(ct)} c "
                'JOIN cdc.lsn_time_mapping m ON m.start_lsn = c."__$start_lsn" '
                'WHERE m.tran_end_time >= ? AND m.tran_end_time < ? AND c."__$operation" <> 3'
            )
            found += int(dbapi.fetch_all(self.src, sql, naive)[0][0])
        return found

    def wait_captured(self, timeout_s: float) -> float:
        started = time.monotonic()
        while self.uncaptured():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"the capture job did not drain in {timeout_s:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - started

    # kafka

    def high_watermarks(self, topics: Sequence[str]) -> int:
        """The sum of the topics' high watermarks (transient broker errors are retried for 30 s)."""
        for attempt in range(30):
            try:
                return self._high_watermarks(topics)
            except KafkaException:
                if attempt == 29:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def _high_watermarks(self, topics: Sequence[str]) -> int:
        metadata_ = self.kafka.list_topics(timeout=15)
        found = 0
        for topic in topics:
            if topic not in metadata_.topics:
                continue
            for partition in metadata_.topics[topic].partitions:
                _, high = self.kafka.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
                found += max(high, 0)
        return found

    def clean_topics(self) -> list[str]:
        return [f"{self.pipeline.prefix}.{entity}" for entity in ENTITIES]

    def dlq_topic(self) -> str:
        return f"{self.pipeline.prefix}.dlq"

    def dead_letters_since(self, base: Mapping[tuple[str, int], int]) -> dict[str, int]:
        """Dead letters after the offsets ``base``, counted by error code, rule ids and source topic
        (their headers)."""
        topic = self.dlq_topic()
        metadata_ = self.kafka.list_topics(timeout=15)
        if topic not in metadata_.topics:
            return {}
        reader = Consumer(
            {
                "bootstrap.servers": self.pipeline.bootstrap,
                "group.id": f"bench-pipeline-dlq-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "log_level": 3,
            }
        )
        counts: dict[str, int] = {}
        try:
            partitions = list(metadata_.topics[topic].partitions)
            reader.assign([TopicPartition(topic, p, base.get((topic, p), 0)) for p in partitions])
            open_partitions, idle = set(partitions), 0
            while open_partitions and idle < 10:
                messages = reader.consume(num_messages=5000, timeout=0.5)
                idle = 0 if messages else idle + 1
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            open_partitions.discard(message.partition())
                        continue
                    raw = message.headers() or []
                    headers = {
                        k: v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")
                        for k, v in (raw.items() if isinstance(raw, dict) else raw)
                    }
                    source = headers.get("source_topic", "?").replace(self.pipeline.prefix, "<prefix>")
                    source = source.replace(self.pipeline.db_name, "<db>")
                    name = f"{headers.get('error_code', '?')} {headers.get('rule_ids', '?')} from {source}"
                    counts[name] = counts.get(name, 0) + 1
        finally:
            reader.close()
        return dict(sorted(counts.items(), key=lambda item: -item[1]))

    def dlq_offsets(self) -> dict[tuple[str, int], int]:
        topic = self.dlq_topic()
        metadata_ = self.kafka.list_topics(timeout=15)
        if topic not in metadata_.topics:
            return {}
        found = {}
        for p in metadata_.topics[topic].partitions:
            _, high = self.kafka.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            found[(topic, p)] = max(high, 0)
        return found

    def processed(self) -> float:
        """The processors' events counter, summed over the workers' /metrics (0 where none answers)."""
        found = 0.0
        for port in self.pipeline.ports.processors(max(self.pipeline.workers, 1)):
            samples = scrape(port)
            if samples is not None:
                found += total(samples, "pacs_sync_processor_events_total")
        return found

    def processor_uncommitted(self) -> int:
        """Records of the processors' input topics (change topics, the owners' re-key topic) past
        their committed offsets: what a restart would process again. High watermark − committed,
        summed; a transactional topic's last commit marker counts 1 per partition."""
        metadata_ = self.kafka.list_topics(timeout=15)
        topics = [f"{self.pipeline.prefix}.{self.pipeline.db_name}.dbo.{t}" for t in TABLES]
        topics += [
            t
            for t in metadata_.topics
            if t.startswith(f"{self.pipeline.prefix}-processors") and "repartition" in t
        ]
        partitions = [
            TopicPartition(t, p)
            for t in topics
            if t in metadata_.topics
            for p in metadata_.topics[t].partitions
        ]
        if not partitions:
            return 0
        reader = Consumer(
            {
                "bootstrap.servers": self.pipeline.bootstrap,
                "group.id": f"{self.pipeline.prefix}-processors",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        try:
            committed = {
                (tp.topic, tp.partition): tp.offset for tp in reader.committed(partitions, timeout=15)
            }
        finally:
            reader.close()
        behind = 0
        for tp in partitions:
            _, high = self.kafka.get_watermark_offsets(tp, timeout=15)
            behind += max(high - max(committed.get((tp.topic, tp.partition), 0), 0), 0)
        return behind

    def input_partitions(self) -> int:
        """Partitions of the processors' input topics (each may end with a commit marker)."""
        metadata_ = self.kafka.list_topics(timeout=15)
        topics = [f"{self.pipeline.prefix}.{self.pipeline.db_name}.dbo.{t}" for t in TABLES]
        topics += [
            t
            for t in metadata_.topics
            if t.startswith(f"{self.pipeline.prefix}-processors") and "repartition" in t
        ]
        return sum(len(metadata_.topics[t].partitions) for t in topics if t in metadata_.topics)

    def group_members(self, group: str) -> int:
        """Members of a consumer group that hold partitions (0 unless the group is stable)."""
        try:
            description = self.admin.describe_consumer_groups([group], request_timeout=10)[group].result(
                timeout=15
            )
        except KafkaException:
            return 0
        if "STABLE" not in str(description.state).upper():
            return 0
        return sum(1 for m in description.members if m.assignment and m.assignment.topic_partitions)

    # target

    def sink_offsets(self) -> int:
        try:
            rows = dbapi.fetch_all(
                self.dst,
                "SELECT COALESCE(SUM(next_offset), 0) FROM pacs_sync.sync_offsets WHERE consumer = ?",
                (f"{self.pipeline.prefix}-sink",),
            )
        except dbapi.DriverError:
            return 0
        return int(rows[0][0])

    def commits_since(self, since: datetime) -> tuple[int, float | None, float | None]:
        """Rows whose source commit is at or after ``since``: count, first and last ``synced_at`` (epoch)."""
        union = " UNION ALL ".join(
            f"SELECT synced_at FROM pacs_sync.{e} WHERE source_ts >= ?" for e in ENTITIES
        )
        sql = (
            "SELECT COUNT(*), EXTRACT(EPOCH FROM MIN(synced_at))::float8, "
            f"EXTRACT(EPOCH FROM MAX(synced_at))::float8 FROM ({union}) r"
        )
        count, first, last = dbapi.fetch_all(self.dst, sql, (since,) * len(ENTITIES))[0]
        return int(count), first, last

    def latencies(self, start: datetime, end: datetime) -> dict[str, list[float]]:
        """``synced_at − source_ts`` in seconds of every row whose source commit is in [start, end)."""
        found = {}
        for entity in ENTITIES:
            sql = (
                "SELECT EXTRACT(EPOCH FROM synced_at - source_ts)::float8 "
                f"FROM pacs_sync.{entity} WHERE source_ts >= ? AND source_ts < ?"
            )
            found[entity] = [float(r[0]) for r in dbapi.fetch_all(self.dst, sql, (start, end))]
        return found


# ---- sampling the stages while a phase runs ----


@dataclass
class Sample:
    t: float
    counts: dict[str, float]
    cpu: dict[str, float]
    busy: float
    histograms: dict[str, dict[float, float]]


class Sampler(threading.Thread):
    """Every ``SAMPLE_INTERVAL_S``: each stage's counters (/metrics), the sink's offsets, the stages' CPU."""

    def __init__(self, pipeline: Pipeline, process_root: Callable[[], int | None]) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pipeline = pipeline
        self.process_root = process_root
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._last: dict[int, tuple[float, float, float, dict[str, dict[float, float]]]] = {}
        self._pids: dict[str, int] = {}
        self._pids_at = 0.0
        self._cpu_last: dict[str, float] = {}
        self._conn: dbapi.Connection | None = None
        self.counter_reset = False

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._sample()
                self._halt.wait(SAMPLE_INTERVAL_S)
            self._sample()
        except Exception:
            logger.exception("the sampler failed")
        finally:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()

    def stop(self) -> list[Sample]:
        self._halt.set()
        self.join(timeout=10)
        return self.snapshot()

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def _scrape(self, port: int) -> tuple[float, float, float, dict[str, dict[float, float]]]:
        samples = scrape(port)
        if samples is None:
            return self._last.get(port, (0.0, 0.0, 0.0, {}))
        values = (
            total(samples, "pacs_sync_producer_events_total"),  # snapshot rows included
            total(samples, "pacs_sync_processor_events_total"),
            total(samples, "pacs_sync_sink_rows_total"),
            {
                name: found
                for name in (
                    "pacs_sync_end_to_end_latency_seconds",
                    "pacs_sync_processor_latency_seconds",
                    "pacs_sync_sink_batch_duration_seconds",
                )
                if (found := buckets(samples, name))
            },
        )
        previous = self._last.get(port)
        if previous is not None and any(v < p for v, p in zip(values[:3], previous[:3], strict=True)):
            self.counter_reset = True  # a stage restarted: its counters began again
        self._last[port] = values
        return values

    def _sample(self) -> None:
        t = time.time()
        counts: dict[str, float] = {"producer": 0.0, "processor": 0.0, "sink_rows": 0.0}
        histograms: dict[str, dict[float, float]] = {}
        for port in self.pipeline.stage_ports().values():
            producer, processor, sink, hists = self._scrape(port)
            counts["producer"] += producer
            counts["processor"] += processor
            counts["sink_rows"] += sink
            for name, found in hists.items():
                merged = histograms.setdefault(name, {})
                for bound, value in found.items():
                    merged[bound] = merged.get(bound, 0.0) + value
        counts["sink_offsets"] = float(self._sink_offsets())
        root = self.process_root()
        if root is not None and (time.monotonic() - self._pids_at > 2.0 or not self._pids):
            self._pids = stage_pids(root)
            self._pids_at = time.monotonic()
        cpu = dict(self._cpu_last)
        for stage, pid in self._pids.items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                cpu[stage] = seconds
        self._cpu_last = cpu
        with self._lock:
            self.samples.append(Sample(t, counts, cpu, machine_busy()[0], histograms))

    def _sink_offsets(self) -> int:
        last = int(self.samples[-1].counts.get("sink_offsets", 0)) if self.samples else 0
        try:
            if self._conn is None:
                self._conn = self.pipeline.target()
            rows = dbapi.fetch_all(
                self._conn,
                "SELECT COALESCE(SUM(next_offset), 0) FROM pacs_sync.sync_offsets WHERE consumer = ?",
                (f"{self.pipeline.prefix}-sink",),
            )
        except (dbapi.DriverError, PacsSyncError, OSError) as exc:
            if "does not exist" not in str(exc):  # a lost connection (not a missing table): reconnect
                with contextlib.suppress(Exception):
                    if self._conn is not None:
                        self._conn.close()
                self._conn = None
            return last
        return int(rows[0][0])


def stage_rate(samples: Sequence[Sample], key: str, t0: float) -> dict[str, Any]:
    """A counter's growth over the phase and its rate while it moved (see the module docstring);
    times in seconds after ``t0`` (the phase's start)."""
    if not samples:
        return {"events": 0, "per_s": None}
    values = [(s.t, s.counts.get(key, 0.0)) for s in samples]
    base, final = values[0][1], values[-1][1]
    if final <= base:
        return {"events": 0, "per_s": None}
    first = next(i for i, (_, v) in enumerate(values) if v > base)
    last = next(i for i, (_, v) in enumerate(values) if v >= final)
    seconds = values[last][0] - values[first][0]
    rate = (values[last][1] - values[first][1]) / seconds if seconds > 0 else None
    return {
        "events": int(final - base),
        "first_moved_after_s": round(values[first][0] - t0, 3),
        "done_after_s": round(values[last][0] - t0, 3),
        "seconds": round(seconds, 3),
        "per_s": rounded(rate, 1),
    }


def limiting_stage(result: Mapping[str, Any]) -> str | None:
    """The first stage, in pipeline order, whose observed rate is within 25 % of the end-to-end rate:
    the stages before it ran clearly faster, the ones after it can only follow it. In live mode the
    churn (the source application) comes first."""
    e2e = result.get("end_to_end_events_per_s")
    if not e2e:
        return None
    order = [("source (churn)", result["churn"]["changes_per_s"])] if result["mode"] == "live" else []
    order += [
        ("producer", result["stages"]["producer"].get("per_s")),
        ("processor", result["stages"]["processor"].get("per_s")),
        ("sink", result["stages"]["sink_offsets"].get("per_s")),
    ]
    for stage, rate in order:
        if rate is not None and rate <= 1.25 * e2e:
            return stage
    return None


def at(samples: Sequence[Sample], t: float) -> Sample | None:
    """The sample closest to ``t``."""
    return min(samples, key=lambda s: abs(s.t - t)) if samples else None


def cpu_between(samples: Sequence[Sample], start: float, end: float) -> dict[str, Any]:
    """Each stage's CPU share (cores) and the machine's busy cores between two times."""
    first, last = at(samples, start), at(samples, end)
    if first is None or last is None or last.t <= first.t:
        return {}
    seconds = last.t - first.t
    shares = {
        stage: round((last.cpu[stage] - first.cpu.get(stage, 0.0)) / seconds, 3) for stage in sorted(last.cpu)
    }
    return {
        "seconds": round(seconds, 3),
        "stage_cpu_cores": shares,
        "machine_busy_cores": round((last.busy - first.busy) / seconds, 3),
    }


# ---- phases ----


@dataclass
class Landing:
    expected_events: int
    clean_records: int
    dead_letters: int
    sink_committed: int
    seconds_waited: float
    complete: bool


def wait_landed(
    obs: Observer, before_lsn: bytes, base_clean: int, base_dlq: int, timeout_s: float
) -> Landing:
    """Wait until every change event after ``before_lsn`` went through: clean + dead-lettered ≥ the
    events the producer must publish, the sink committed every clean record, and nothing (clean
    topics, dead letters, sink offsets, the processors' counters) moved for ``QUIET_S``. The last
    condition matters: records a restarted processor emits again count as clean too, so the counts
    alone can add up while new events are still on their way."""
    started = time.monotonic()
    obs.wait_captured(timeout_s)
    expected = obs.events_after(before_lsn)
    last_progress, last_state = time.monotonic(), (-1, -1, -1, -1.0)
    while True:
        clean = obs.high_watermarks(obs.clean_topics())
        dlq = obs.high_watermarks([obs.dlq_topic()])
        sink = obs.sink_offsets()
        state = (clean, dlq, sink, obs.processed())
        if state != last_state:
            last_state, last_progress = state, time.monotonic()
        quiet = time.monotonic() - last_progress >= QUIET_S
        done = (clean - base_clean) + (dlq - base_dlq) >= expected and sink >= clean and quiet
        if done or time.monotonic() - last_progress > STALL_S or time.monotonic() - started > timeout_s:
            if not done:
                logger.error(
                    "not everything landed: %d events expected, %d clean + %d dead-lettered, "
                    "sink at %d of %d",
                    expected,
                    clean - base_clean,
                    dlq - base_dlq,
                    sink,
                    clean,
                )
            return Landing(
                expected, clean - base_clean, dlq - base_dlq, sink, time.monotonic() - started, done
            )
        time.sleep(0.5)


def wait_ready(pipeline: Pipeline, obs: Observer, workers: int, seed: int, timeout_s: float) -> float:
    """Until the running pipeline is warm: every worker holds partitions and a probe churn landed."""
    started = time.monotonic()
    group = f"{pipeline.prefix}-processors"
    while obs.group_members(group) < workers:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{workers} processor worker(s) did not join {group}")
        if pipeline.run_process is not None and pipeline.run_process.poll() is not None:
            raise RuntimeError(f"pacs-sync run exited with {pipeline.run_process.returncode}")
        time.sleep(1.0)
    obs.wait_captured(timeout_s)
    before = obs.max_lsn()
    base_clean, base_dlq = obs.high_watermarks(obs.clean_topics()), obs.high_watermarks([obs.dlq_topic()])
    pipeline.churn(rate=1000, seed=seed, changes=PROBE_CHANGES)
    landing = wait_landed(obs, before, base_clean, base_dlq, timeout_s)
    if not landing.complete:
        raise RuntimeError("the warm-up probe did not land")
    # Let the probe's last batches, heartbeats and any late rebalance settle.
    time.sleep(2.0)
    while obs.group_members(group) < workers:
        time.sleep(1.0)
    return time.monotonic() - started


def measure_snapshot(pipeline: Pipeline, args: argparse.Namespace) -> dict[str, Any]:
    init, init_s = pipeline.cli("sim", "init", "--scale", args.scale, "--seed", str(args.seed), timeout=600)
    if init.returncode != 0:
        raise RuntimeError(f"sim init failed: {init.stdout}\n{init.stderr[-3000:]}")
    logger.info("sim init --scale %s: %.1f s", args.scale, init_s)
    time.sleep(1.0)  # the capture agent's own start-up
    sync_pid: list[int | None] = [None]
    sampler = Sampler(pipeline, lambda: sync_pid[0])
    pipeline.workers = 1
    sampler.start()
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs_sync", "sync", "--until-caught-up", "--timeout", str(args.timeout)],
        env=pipeline.env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sync_pid[0] = process.pid
    try:
        out, err = process.communicate(timeout=args.timeout + 60)
    except subprocess.TimeoutExpired:
        kill_tree(process, grace_s=60)
        raise
    finally:
        samples = sampler.stop()
    sync_s = time.time() - started
    (pipeline.log_dir / f"{pipeline.tag}.sync.log").write_text(out + "\n--- stderr\n" + err)
    if process.returncode != 0:
        raise RuntimeError(f"sync --until-caught-up failed ({process.returncode}):\n{out}\n{err[-3000:]}")
    reported = next(
        (float(line.split()[3]) for line in out.splitlines() if line.startswith("caught up in")), None
    )
    per_entity = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ENTITIES and len(parts) >= 3:
            per_entity[parts[0]] = {
                "events": int(parts[1].replace(",", "")),
                "invalid": int(parts[2].replace(",", "")),
            }
    steps: dict[str, float] = {}
    for line in err.splitlines():
        stamp, _, rest = line.partition(" INFO ")
        message = rest.strip().partition(": ")[2]
        if rest.strip().startswith(("pipeline.sync", "pipeline.supervisor")) and (
            "caught up" in message or "all stages stopped" in message
        ):
            with contextlib.suppress(ValueError):
                at_ = datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: DTZ007
                steps.setdefault(message, round(at_ - started, 2))
    verify, verify_s = pipeline.cli("verify", "--json", timeout=600)
    stages = {
        "producer": stage_rate(samples, "producer", started),
        "processor": stage_rate(samples, "processor", started),
        "sink": stage_rate(samples, "sink_rows", started),
        "sink_offsets": stage_rate(samples, "sink_offsets", started),
    }
    landed = stages["sink_offsets"].get("done_after_s")
    report: dict[str, Any] = {}
    with contextlib.suppress(json.JSONDecodeError):
        report = json.loads(verify.stdout)
    events = sum(e["events"] for e in per_entity.values())
    return {
        "sim_init_seconds": round(init_s, 2),
        "sync_seconds": round(sync_s, 2),
        "sync_reported_seconds": reported,
        "verify_seconds": round(verify_s, 2),
        "landed_and_verified_seconds": round(sync_s + verify_s, 2),
        "verify_exit_code": verify.returncode,
        "verify_ok": verify.returncode == 0,
        "verify_report_excerpt": json.dumps(report)[:2000] if report else verify.stdout[-2000:],
        "events": events,
        "per_entity": per_entity,
        "events_per_s_whole_sync": round(events / sync_s, 1) if sync_s else None,
        "stages": stages,
        "landed_after_seconds": landed,
        "sync_steps_after_seconds": steps,
        "landed_then_verified_seconds": rounded(landed + verify_s, 2) if landed is not None else None,
        "cpu": cpu_between(samples, started, started + sync_s),
    }


def stop_and_observe(pipeline: Pipeline, obs: Observer, *, wait_for_commits: bool) -> dict[str, Any]:
    """Stop ``pacs-sync run`` once the processors have committed what they processed (at most
    ``COMMIT_WAIT_S``), so the next start does not process it again; reports the processors'
    uncommitted input records when the pipeline had landed everything, how long the commits took to
    catch up, and what was left after the stop (what a restart processes again)."""
    if pipeline.run_process is None:
        return {}
    started = time.monotonic()
    at_landing = obs.processor_uncommitted()
    left = at_landing
    partitions = obs.input_partitions()
    while wait_for_commits and left > partitions and time.monotonic() - started < COMMIT_WAIT_S:
        time.sleep(1.0)
        left = obs.processor_uncommitted()
    caught_up = time.monotonic() - started
    pipeline.stop()
    return {
        "processor_uncommitted_when_landed": at_landing,
        "processor_commits_caught_up_after_s": round(caught_up, 1) if left <= partitions else None,
        "waited_for_commits": wait_for_commits,
        "processor_uncommitted_at_stop": left,
        "stop_seconds": pipeline.stop_seconds[-1] if pipeline.stop_seconds else None,
        "processor_uncommitted_after_stop": obs.processor_uncommitted(),
        "input_partitions": partitions,
    }


def measure_throughput(
    pipeline: Pipeline, obs: Observer, mode: str, workers: int, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One sustained-throughput measurement (``live`` or ``backlog``); see the module docstring."""
    if pipeline.run_process is None or pipeline.workers != workers:
        pipeline.stop()
        pipeline.start(workers)
    warm_s = wait_ready(pipeline, obs, workers, seed + 1000, args.timeout)
    obs.wait_captured(args.timeout)
    before = obs.max_lsn()
    base_clean, base_dlq = obs.high_watermarks(obs.clean_topics()), obs.high_watermarks([obs.dlq_topic()])
    base_sink = obs.sink_offsets()
    dlq_base = obs.dlq_offsets()
    load_before = os.getloadavg()
    phase_start = datetime.now(tz=UTC)
    sampler = Sampler(pipeline, lambda: pipeline.run_process.pid if pipeline.run_process else None)
    sampler.start()
    if mode == "backlog":  # the changes pile up uncaptured, as behind a paused capture job
        pipeline.cli("sim", "agent", "stop", timeout=60)
    churn = pipeline.churn(rate=MAX_CHURN_RATE, seed=seed, changes=args.changes)
    logger.info(
        "%s/%d: churn applied %d row changes in %.1f s (%.0f/s)",
        mode,
        workers,
        churn["changes"],
        churn["seconds"],
        churn["rate"],
    )
    started_at = None
    if mode == "backlog":
        started_at = time.time()
        agent, _ = pipeline.cli("sim", "agent", "start", timeout=60)
        if agent.returncode != 0:
            raise RuntimeError(f"sim agent start failed: {agent.stdout}{agent.stderr[-2000:]}")
    try:
        landing = wait_landed(obs, before, base_clean, base_dlq, args.timeout)
        time.sleep(2 * SAMPLE_INTERVAL_S)
    finally:
        samples = sampler.stop()
    committed = obs.sink_offsets() - base_sink
    rows, first, last = obs.commits_since(phase_start)
    span = (last - first) if first is not None and last is not None else None
    t0 = started_at if started_at is not None else churn["started_at"]
    result: dict[str, Any] = {
        "mode": mode,
        "processors": workers,
        "warm_up_seconds": round(warm_s, 2),
        "churn": {
            "changes": churn["changes"],
            "transactions": churn["transactions"],
            "failed": churn["failed"],
            "seconds": round(churn["seconds"], 3),
            "changes_per_s": round(churn["rate"], 1),
            "by_kind": churn["by_kind"],
        },
        "expected_events": landing.expected_events,
        "clean_records": landing.clean_records,
        "dead_letters": landing.dead_letters,
        "dead_letters_by_kind": obs.dead_letters_since(dlq_base),
        "events_committed_by_sink": committed,
        "rows_stamped_in_phase": rows,
        "first_commit_epoch": rounded(first),
        "last_commit_epoch": rounded(last),
        "span_seconds": rounded(span),
        "end_to_end_events_per_s": round(min(committed, landing.expected_events) / span, 1) if span else None,
        "sink_records_per_s": round(committed / span, 1) if span else None,
        "reprocessed_by_processors": None,
        "release_to_first_commit_seconds": rounded(first - started_at) if first and started_at else None,
        "churn_start_to_first_commit_seconds": rounded(first - churn["started_at"]) if first else None,
        "stages": {
            "producer": stage_rate(samples, "producer", t0),
            "processor": stage_rate(samples, "processor", t0),
            "sink": stage_rate(samples, "sink_rows", t0),
            "sink_offsets": stage_rate(samples, "sink_offsets", t0),
        },
        "cpu_during_span": cpu_between(samples, first, last) if first and last else {},
        "load_average_before": [round(x, 2) for x in load_before],
        "counter_reset": sampler.counter_reset,
        "complete": landing.complete and not sampler.counter_reset,
    }
    result["limiting_stage"] = limiting_stage(result)
    result["reprocessed_by_processors"] = result["stages"]["processor"]["events"] - landing.expected_events
    logger.info(
        "%s/%d: %d events reached PostgreSQL in %.2f s = %s events/s",
        mode,
        workers,
        committed,
        span or 0.0,
        result["end_to_end_events_per_s"],
    )
    return result


def measure_latency(pipeline: Pipeline, obs: Observer, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    workers = args.latency_processors
    pipeline.stop()
    pipeline.start(workers)
    warm_s = wait_ready(pipeline, obs, workers, seed + 1000, args.timeout)
    obs.wait_captured(args.timeout)
    before = obs.max_lsn()
    base_clean, base_dlq = obs.high_watermarks(obs.clean_topics()), obs.high_watermarks([obs.dlq_topic()])
    dlq_base = obs.dlq_offsets()
    sampler = Sampler(pipeline, lambda: pipeline.run_process.pid if pipeline.run_process else None)
    sampler.start()
    duration = args.warmup_seconds + args.latency_seconds + LATENCY_TAIL_S
    churn = pipeline.churn(rate=args.latency_rate, seed=seed, duration_s=duration)
    try:
        landing = wait_landed(obs, before, base_clean, base_dlq, args.timeout)
        time.sleep(2 * SAMPLE_INTERVAL_S)
    finally:
        samples = sampler.stop()
    stopped = stop_and_observe(pipeline, obs, wait_for_commits=args.wait_for_commits)
    churn_start = churn["started_at"]
    window_start = datetime.fromtimestamp(churn_start + args.warmup_seconds, tz=UTC)
    window_end = datetime.fromtimestamp(churn_start + args.warmup_seconds + args.latency_seconds, tz=UTC)
    by_entity = obs.latencies(window_start, window_end)
    values = sorted(v for found in by_entity.values() for v in found)
    in_window = obs.events_committed_between(window_start, window_end)
    # The stages' histograms over the window (sink time): the sample at the window's start to the last.
    first = at(samples, window_start.timestamp())
    last = samples[-1] if samples else None
    hist: dict[str, Any] = {}
    if first is not None and last is not None:
        for name, after in last.histograms.items():
            hist[name] = histogram_summary(histogram_delta(after, first.histograms.get(name, {})))
    negative = sum(1 for v in values if v < 0)
    summary = percentiles(values)
    prefix = pipeline.prefix
    breakdown = {
        "commit_to_change_topic": kafka_latencies(
            pipeline,
            [f"{prefix}.{pipeline.db_name}.dbo.{t}" for t in TABLES],
            lambda r: (r.get("source") or {}).get("commit_ts_ms"),
            window_start,
            window_end,
        ),
        "commit_to_clean_topic": kafka_latencies(
            pipeline,
            [f"{prefix}.{e}" for e in ENTITIES],
            lambda r: r.get("source_ts"),
            window_start,
            window_end,
        ),
        "commit_to_postgresql": {"records": len(values), "seconds": summary},
    }
    return {
        "processors": workers,
        "offered_changes_per_s": args.latency_rate,
        "warm_up_seconds": args.warmup_seconds,
        "window_seconds": args.latency_seconds,
        "pipeline_warm_up_seconds": round(warm_s, 2),
        "churn": {
            "changes": churn["changes"],
            "transactions": churn["transactions"],
            "failed": churn["failed"],
            "seconds": round(churn["seconds"], 3),
            "changes_per_s": round(churn["rate"], 1),
        },
        "window_start": window_start.isoformat(),
        "window_end": window_end.isoformat(),
        "source_events_in_window": in_window,
        "rows_measured": len(values),
        "rows_measured_by_entity": {e: len(v) for e, v in by_entity.items()},
        "negative_values": negative,
        "seconds": summary,
        "seconds_by_entity": {e: percentiles(sorted(v)) for e, v in by_entity.items()},
        "stage_breakdown": breakdown,
        "histograms_over_window": hist,
        "landing": asdict(landing),
        "dead_letters_by_kind": obs.dead_letters_since(dlq_base),
        "stop_after_phase": stopped,
        "cpu_during_window": cpu_between(samples, window_start.timestamp(), window_end.timestamp()),
        "counter_reset": sampler.counter_reset,
        "complete": landing.complete and not sampler.counter_reset and negative == 0,
    }


def _epoch_ms(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp() * 1000.0
    if isinstance(value, int | float):
        return float(value)
    return None


def kafka_latencies(
    pipeline: Pipeline,
    topics: Sequence[str],
    commit_of: Callable[[dict[str, Any]], Any],
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    """Source commit → Kafka record timestamp (the writing client's CreateTime) of every record whose
    source commit is in [start, end): how long the changes took to reach a topic."""
    codec = AvroCodec(SchemaRegistry.from_package())
    consumer = Consumer(
        {
            "bootstrap.servers": pipeline.bootstrap,
            "group.id": f"bench-pipeline-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    start_ms, end_ms = start.timestamp() * 1000.0, end.timestamp() * 1000.0
    values: list[float] = []
    by_topic: dict[str, list[float]] = {}
    undecodable = 0
    try:
        metadata_ = consumer.list_topics(timeout=15)
        wanted = [
            TopicPartition(topic, p, int(start_ms) - 10_000)
            for topic in topics
            if topic in metadata_.topics
            for p in metadata_.topics[topic].partitions
        ]
        positions = [tp for tp in consumer.offsets_for_times(wanted, timeout=15) if tp.offset >= 0]
        if not positions:
            return {"records": 0}
        consumer.assign(positions)
        open_partitions = {(tp.topic, tp.partition) for tp in positions}
        idle = 0
        while open_partitions and idle < 20:
            messages = consumer.consume(num_messages=2000, timeout=0.5)
            idle = 0 if messages else idle + 1
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard((message.topic(), message.partition()))
                    continue
                _, written_ms = message.timestamp()
                if written_ms > end_ms + 120_000:
                    open_partitions.discard((message.topic(), message.partition()))
                    continue
                try:
                    record = codec.decode(message.value() or b"").value
                except PacsSyncError:
                    undecodable += 1
                    continue
                commit_ms = _epoch_ms(commit_of(record))
                if commit_ms is not None and start_ms <= commit_ms < end_ms:
                    values.append((written_ms - commit_ms) / 1000.0)
                    by_topic.setdefault(message.topic() or "", []).append(values[-1])
    finally:
        consumer.close()
    return {
        "records": len(values),
        "undecodable": undecodable,
        "seconds": percentiles(sorted(values)),
        "seconds_by_topic": {t: percentiles(sorted(v)) for t, v in sorted(by_topic.items())},
    }


def final_verify(pipeline: Pipeline) -> dict[str, Any]:
    verify, seconds = pipeline.cli("verify", "--json", timeout=600)
    return {
        "exit_code": verify.returncode,
        "ok": verify.returncode == 0,
        "seconds": round(seconds, 2),
        "report_excerpt": verify.stdout[:2000],
    }


def isolated(
    run: int,
    purpose: str,
    args: argparse.Namespace,
    log_dir: Path,
    body: Callable[[Pipeline, Observer], dict[str, Any]],
) -> dict[str, Any]:
    """A fresh isolated pipeline: snapshot (measured), ``body``, final verify; cleaned up whatever happens.

    A fresh one per purpose because the churn's simulated clock moves on a day per ~20 transactions
    and resumes from the newest date in the database: past ~100,000 row changes on one database its
    new tax years and years built lie beyond next year, and the processors dead-letter them
    (VAL-TAX-YEAR, …), which would measure the dead-letter path instead of the clean one.
    """
    tag = f"{os.getpid()}r{run}{purpose[:1]}{uuid.uuid4().hex[:4]}"
    pipeline = Pipeline.create(tag, dict(item.split("=", 1) for item in args.set), log_dir)
    logger.info("run %d, %s: isolated pipeline %s (db %s)", run, purpose, tag, pipeline.db_name)
    result: dict[str, Any] = {"purpose": purpose, "tag": tag, "ports": asdict(pipeline.ports)}
    services = service_incarnations()
    failed = False
    obs: Observer | None = None
    try:
        result["snapshot"] = snap = measure_snapshot(pipeline, args)
        logger.info(
            "snapshot: sync %.1f s + verify %.1f s = %.1f s (verify exit %d; rows all landed after %s s)",
            snap["sync_seconds"],
            snap["verify_seconds"],
            snap["landed_and_verified_seconds"],
            snap["verify_exit_code"],
            snap["landed_after_seconds"],
        )
        obs = Observer(pipeline)
        result.update(body(pipeline, obs))
        result["final_verify"] = final_verify(pipeline)
        result["run_stop_seconds"] = pipeline.stop_seconds
        measured = result.get("throughput", []) + ([result["latency"]] if "latency" in result else [])
        # Keep the logs of anything that did not add up: they are what a diagnosis needs.
        failed = not result["final_verify"]["ok"] or not all(m.get("complete", True) for m in measured)
        after = service_incarnations()
        result["disturbed"] = after != services
        if result["disturbed"]:
            logger.warning(
                "a service restarted during %s: %s -> %s (excluded from medians)", tag, services, after
            )
            result["services_before"], result["services_after"] = services, after
        return result
    except BaseException:
        failed = True
        raise
    finally:
        if obs is not None:
            obs.close()
        pipeline.cleanup(keep_logs=args.keep_logs or failed)


ATTEMPTS = 2
"""A pipeline whose measurement fails (e.g. the shared PostgreSQL restarted under it) is tried again
on a fresh pipeline, once; the failure is recorded."""


def run_once(run: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """One run: a pipeline per processor count (live and backlog throughput), one for the latency."""
    result: dict[str, Any] = {"run": run, "pipelines": [], "throughput": [], "failed_attempts": []}

    def attempt(purpose: str, body: Callable[[Pipeline, Observer], dict[str, Any]]) -> dict[str, Any] | None:
        for number in range(1, ATTEMPTS + 1):
            try:
                found = isolated(run, purpose, args, log_dir, body)
            except Exception as exc:
                logger.exception("run %d, %s, attempt %d failed", run, purpose, number)
                result["failed_attempts"].append(
                    {"purpose": purpose, "attempt": number, "error": f"{type(exc).__name__}: {exc}"}
                )
                continue
            result["pipelines"].append(found)
            return found
        return None

    seed = args.seed + 100
    for workers in args.processors:

        def throughput(
            pipeline: Pipeline, obs: Observer, workers: int = workers, seed: int = seed
        ) -> dict[str, Any]:
            found = [
                measure_throughput(pipeline, obs, mode, workers, args, seed + i)
                for i, mode in enumerate(args.modes)
            ]
            found[-1]["stop_after_phase"] = stop_and_observe(
                pipeline, obs, wait_for_commits=args.wait_for_commits
            )
            return {"throughput": found}

        seed += 10
        done = attempt(f"throughput-{workers}", throughput)
        if done is not None:
            for found in done.pop("throughput"):
                found["disturbed"] = done["disturbed"]
                result["throughput"].append(found)
    if args.latency_seconds > 0:

        def latency(pipeline: Pipeline, obs: Observer) -> dict[str, Any]:
            found = measure_latency(pipeline, obs, args, seed + 1)
            lat = found["seconds"]
            logger.info("latency: p50 %s s, p95 %s s, p99 %s s", lat["p50"], lat["p95"], lat["p99"])
            return {"latency": found}

        done = attempt("latency", latency)
        if done is not None:
            result["latency"] = done.pop("latency")
            result["latency"]["disturbed"] = done["disturbed"]
    return result


# ---- summary, targets, report ----


def versions() -> dict[str, str]:
    found = {}
    for package in ("faust-streaming", "aiokafka", "confluent-kafka", "fastavro", "asyncpg", "pg8000"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    server = PostgresServer(StackSettings.load()).ping()
    if server:
        found["postgresql"] = server
    return found


def code_measured() -> dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    digest = hashlib.sha256()
    dirs = ("producer", "stream_processors", "sink", "pipeline", "pacs_sync", "schemas", "reconcile")
    for path in sorted(p for d in dirs for p in (REPO_ROOT / d).rglob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "uncommitted_changes_in_stages": git("status", "--porcelain", "--", *dirs).splitlines(),
        "stages_source_sha256": digest.hexdigest(),
    }


def stage_benchmarks() -> dict[str, Any]:
    """The per-stage benchmarks' medians, where their JSON files exist."""
    out: dict[str, Any] = {}
    results = REPO_ROOT / "bench-results"

    def load(name: str) -> dict[str, Any] | None:
        path = results / f"{name}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data

    if producer := load("producer"):
        out["producer"] = {
            "timestamp": producer.get("timestamp"),
            "snapshot_events_per_s": producer.get("snapshot", {}).get("median_events_per_s"),
            "streaming_events_per_s": producer.get("streaming", {}).get("median_events_per_s"),
        }
    if processor := load("processor"):
        out["processor"] = {
            "timestamp": processor.get("timestamp"),
            "faust_1_worker_events_per_s": processor.get("faust", {}).get("median_events_per_s"),
            "faust_2_workers_events_per_s": processor.get("faust_2_workers", {}).get("median_events_per_s"),
            "plain_confluent_loop_events_per_s": processor.get("plain", {}).get("median_events_per_s"),
        }
    if sink := load("sink"):
        medians = sink.get("medians", {})
        out["sink"] = {
            "timestamp": sink.get("timestamp"),
            "rows_per_s": {
                f"{mode}/{scenario}/{size}": figures.get("median_rows_per_s")
                for mode, scenarios in medians.items()
                if isinstance(scenarios, dict)
                for scenario, found in scenarios.items()
                if isinstance(found, dict)
                for size, figures in found.get("by_batch_size", found).items()
                if isinstance(figures, dict)
            },
        }
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    snaps = [
        p["snapshot"] for r in runs for p in r["pipelines"] if "snapshot" in p and not p.get("disturbed")
    ]
    summary: dict[str, Any] = {
        "snapshot": {
            key: median_of([s[key] for s in snaps])
            for key in (
                "sim_init_seconds",
                "sync_seconds",
                "verify_seconds",
                "landed_and_verified_seconds",
                "landed_after_seconds",
                "landed_then_verified_seconds",
            )
        },
        "throughput": {},
        "latency": {},
    }
    keys = sorted({(t["mode"], t["processors"]) for r in runs for t in r.get("throughput", [])})
    for mode, workers in keys:
        items = [
            t
            for r in runs
            for t in r.get("throughput", [])
            if (t["mode"], t["processors"]) == (mode, workers) and not t.get("disturbed") and t["complete"]
        ]
        summary["throughput"][f"{mode}/{workers}"] = {
            "end_to_end_events_per_s": median_of([t["end_to_end_events_per_s"] for t in items]),
            "churn_changes_per_s": median_of([t["churn"]["changes_per_s"] for t in items]),
            "producer_per_s": median_of([t["stages"]["producer"]["per_s"] for t in items]),
            "processor_per_s": median_of([t["stages"]["processor"]["per_s"] for t in items]),
            "sink_per_s": median_of([t["stages"]["sink_offsets"]["per_s"] for t in items]),
        }
    lats = [
        r["latency"]["seconds"]
        for r in runs
        if "latency" in r and not r["latency"].get("disturbed") and r["latency"]["complete"]
    ]
    for key in ("p50", "p95", "p99", "mean", "max"):
        summary["latency"][key] = median_of([lat[key] for lat in lats])
    return summary


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    landed = summary["snapshot"]["landed_and_verified_seconds"]
    found.append(
        {
            "name": "Benton snapshot landed in PostgreSQL and verified",
            "target": f"<= {SNAPSHOT_TARGET_S:g} s",
            "measured": landed,
            "met": None if landed is None else landed <= SNAPSHOT_TARGET_S,
        }
    )
    pipeline_landed = summary["snapshot"]["landed_then_verified_seconds"]
    found.append(
        {
            "name": "Benton snapshot: last row in PostgreSQL (sink offsets) after sync start, then verify "
            "(the pipeline without the sync command's own bookkeeping; informational)",
            "target": f"<= {SNAPSHOT_TARGET_S:g} s",
            "measured": pipeline_landed,
            "met": None if pipeline_landed is None else pipeline_landed <= SNAPSHOT_TARGET_S,
        }
    )
    best = max(
        (
            v["end_to_end_events_per_s"]
            for v in summary["throughput"].values()
            if v["end_to_end_events_per_s"]
        ),
        default=None,
    )
    for key, figures in summary["throughput"].items():
        rate = figures["end_to_end_events_per_s"]
        found.append(
            {
                "name": f"sustained end-to-end change events/s ({key.replace('/', ', ')} processor(s))",
                "target": f">= {THROUGHPUT_TARGET:,.0f} (stretch {THROUGHPUT_STRETCH:,.0f})",
                "measured": rate,
                "met": None if rate is None else rate >= THROUGHPUT_TARGET,
                "stretch_met": None if rate is None else rate >= THROUGHPUT_STRETCH,
            }
        )
    found.append(
        {
            "name": "sustained end-to-end change events/s (best configuration)",
            "target": f">= {THROUGHPUT_TARGET:,.0f} (stretch {THROUGHPUT_STRETCH:,.0f})",
            "measured": best,
            "met": None if best is None else best >= THROUGHPUT_TARGET,
            "stretch_met": None if best is None else best >= THROUGHPUT_STRETCH,
        }
    )
    p99 = summary["latency"].get("p99")
    found.append(
        {
            "name": "latency p99 at 1,000 changes/s, source commit -> PostgreSQL commit",
            "target": f"<= {LATENCY_P99_TARGET_S:g} s",
            "measured": p99,
            "met": None if p99 is None else p99 <= LATENCY_P99_TARGET_S,
        }
    )
    return found


def render(data: dict[str, Any]) -> str:
    lines = [
        "",
        f"pipeline benchmark ({data['config']['scale']} scale, {data['machine']['cpu_count']} cores, "
        f"{len(data['runs'])} run(s), medians)",
        "",
    ]
    s = data["summary"]["snapshot"]
    lines.append(
        f"snapshot   sim init {s['sim_init_seconds']} s | sync --until-caught-up {s['sync_seconds']} s"
        f" + verify {s['verify_seconds']} s = landed and verified {s['landed_and_verified_seconds']} s"
    )
    lines.append(
        f"           (the rows were all in PostgreSQL {s['landed_after_seconds']} s after the sync started; "
        f"landed then verified: {s['landed_then_verified_seconds']} s)"
    )
    lines.append("")
    lines.append(
        f"{'throughput':<12} {'churn/s':>9} {'producer/s':>11} {'processor/s':>12} "
        f"{'sink/s':>9} {'end-to-end/s':>13}"
    )

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    for key, t in data["summary"]["throughput"].items():
        lines.append(
            f"{key:<12} {num(t['churn_changes_per_s']):>9} {num(t['producer_per_s']):>11} "
            f"{num(t['processor_per_s']):>12} {num(t['sink_per_s']):>9} "
            f"{num(t['end_to_end_events_per_s']):>13}"
        )
    lat = data["summary"]["latency"]
    if lat.get("p99") is not None:
        lines.append("")
        lines.append(
            f"latency at {data['config']['latency_rate']:,.0f} changes/s (source commit -> synced_at): "
            f"p50 {lat['p50']} s, p95 {lat['p95']} s, p99 {lat['p99']} s, max {lat['max']} s"
        )
    lines.append("")
    for t in data["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        stretch = ""
        if "stretch_met" in t and t["stretch_met"] is not None:
            stretch = ", stretch met" if t["stretch_met"] else ", stretch missed"
        lines.append(f"  {t['name']}: {t['measured']} (target {t['target']}: {verdict}{stretch})")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--runs", type=int, default=1, help="whole runs, each on a fresh pipeline (default 1)"
    )
    parser.add_argument("--scale", default="benton", help="sim init scale (default benton)")
    parser.add_argument("--changes", type=int, default=30_000, help="row changes per throughput phase")
    parser.add_argument(
        "--processors", default="1,2", help="processor worker counts to measure (default 1,2)"
    )
    parser.add_argument(
        "--modes", default="live,backlog", help="throughput modes: live, backlog (default both)"
    )
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="offered load, row changes/s")
    parser.add_argument("--latency-seconds", type=float, default=60.0, help="latency window (0: skip)")
    parser.add_argument("--warmup-seconds", type=float, default=10.0, help="load before the latency window")
    parser.add_argument("--latency-processors", type=int, default=1, help="processor workers for latency")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every pacs-sync command (e.g. PACS_SINK_BATCH_SIZE=5000); recorded",
    )
    parser.add_argument("--seed", type=int, default=1, help="data and churn seed")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a step is given up")
    parser.add_argument(
        "--wait-for-commits",
        action="store_true",
        help="before each stop, wait (up to 120 s) until the processors committed their input offsets, "
        "and report how long that took",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the stage logs (kept anyway on failure)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "bench-results" / "pipeline.json",
        help="JSON results file (default bench-results/pipeline.json)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.processors = [int(x) for x in str(args.processors).split(",") if x]
    args.modes = [m for m in str(args.modes).split(",") if m]
    if any(m not in ("live", "backlog") for m in args.modes):
        parser.error("--modes takes live and/or backlog")
    if any("=" not in item or not item.startswith("PACS_") for item in args.set):
        parser.error("--set takes PACS_NAME=VALUE")
    return args


@contextlib.contextmanager
def log_directory() -> Iterator[Path]:
    path = REPO_ROOT / ".pacs-sync" / "logs" / f"bench_pipeline.{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    yield path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    args = parse_args(argv)
    output = args.output.resolve()
    timestamp = datetime.now(tz=UTC).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with log_directory() as log_dir:
        for run in range(1, args.runs + 1):
            runs.append(run_once(run, args, log_dir))
            data = report(args, runs, timestamp, load_start)  # after each run: a later failure loses nothing
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        if not args.keep_logs and not any(r["failed_attempts"] for r in runs):
            shutil.rmtree(log_dir, ignore_errors=True)
    sys.stdout.write(render(data))
    sys.stdout.write(f"results written to {output}\n")
    incomplete = [
        f"run {r['run']} {t['mode']}/{t['processors']}"
        for r in runs
        for t in r.get("throughput", [])
        if not t["complete"]
    ]
    incomplete += [f"run {r['run']} latency" for r in runs if "latency" in r and not r["latency"]["complete"]]
    for r in runs:
        done = {p["purpose"] for p in r["pipelines"]}
        incomplete += [
            f"run {r['run']} {f['purpose']} failed ({f['error']})"
            for f in r["failed_attempts"]
            if f["purpose"] not in done
        ]
        for p in r["pipelines"]:
            if not p["snapshot"]["verify_ok"]:
                incomplete.append(f"run {r['run']} {p['purpose']} snapshot verify")
            if not p.get("final_verify", {}).get("ok", True):
                incomplete.append(f"run {r['run']} {p['purpose']} final verify")
    if incomplete:
        logger.error("incomplete, failed or unverified: %s", ", ".join(incomplete))
        return 1
    return 0


def report(
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    timestamp: str,
    load_start: tuple[float, float, float],
) -> dict[str, Any]:
    """Everything the JSON file holds."""
    summary = summarise(runs)
    data = {
        "benchmark": "pipeline",
        "timestamp": timestamp,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in load_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "note": "Kafka, PostgreSQL (source emulator and target), the stages, the churn and this "
            "script share these cores with whatever else runs on the machine",
        },
        "versions": versions(),
        "code": code_measured(),
        "config": {
            "scale": args.scale,
            "runs": args.runs,
            "changes_per_throughput_phase": args.changes,
            "processors": args.processors,
            "modes": args.modes,
            "max_churn_rate": MAX_CHURN_RATE,
            "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds,
            "warmup_seconds": args.warmup_seconds,
            "latency_processors": args.latency_processors,
            "extra_env": dict(item.split("=", 1) for item in args.set),
            "seed": args.seed,
            "sample_interval_s": SAMPLE_INTERVAL_S,
            "definitions": {
                "landed_and_verified": "wall time of `pacs-sync sync --until-caught-up` (starts and stops "
                "the stages) + wall time of `pacs-sync verify`",
                "end_to_end_events_per_s": "clean records the sink committed in the phase (growth of its "
                "offsets, at most the change events published) / (last - first synced_at among rows whose "
                "source commit is in the phase)",
                "stage_per_s": "a stage's /metrics counter between the first sample showing it moving and "
                "the first sample at its final value, / the time between those samples",
                "latency": "synced_at - source_ts of every target row whose source commit falls in the "
                "window (synced_at = start of the sink's batch transaction; see histograms for the "
                "commit-exact but bucketed cross-check)",
            },
        },
        "runs": runs,
        "summary": summary,
        "per_stage_benchmarks": stage_benchmarks(),
    }
    data["targets"] = targets(summary)
    return data


if __name__ == "__main__":
    sys.exit(main())
