"""An isolated pipeline on the shared local stack, and the instruments the fault scenarios use.

Each scenario gets its own emulated PACS database, topics, consumer groups and target database (the
stack is shared with other engineers and with a running demo). Around the real ``pacs-sync``
commands this module adds what the scenarios need to *show* that a fault happened and that nothing
was lost or applied twice:

* an audit trigger on every ``pacs_sync.<entity>`` table of the test's target database: each row
  the sink inserts or moves forward appends ``(entity, key, source_position)`` to a test-owned table;
  a position applied twice for one key is a change applied twice (the sink's position guard must
  turn every re-delivery into a no-op, which fires no row trigger);
* probes of what a stage is doing right now: its PostgreSQL session (``pg_stat_activity``), open
  Kafka transactions (high watermark above the last stable offset), a consumer group's lag;
* the stage processes of ``pacs-sync run`` (children of the supervisor) and their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka import Consumer, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from pacs_sync import dbapi
from pacs_sync.settings import PacsSettings
from pacs_sync.sim.emulator import EmulatorAdmin
from pacs_sync.stack import LocalStack
from pacs_sync.stack.postgres import connection_kwargs
from pacs_sync.sweeps import sweeps_topic
from pipeline.catchup import KafkaPositions

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = ("Property", "PropertyOwner", "PropertyValue", "Structure")
ENTITIES = {
    "Property": "properties",
    "PropertyOwner": "owners",
    "PropertyValue": "valuations",
    "Structure": "structures",
}
KEY_COLUMNS = {
    "properties": "property_id",
    "owners": "owner_id",
    "valuations": "valuation_id",
    "structures": "structure_id",
}
STAGES = ("producer", "processor", "sink")

FAST_RECOVERY = {
    # The supervisor restarts a killed stage after 0.5 s (not 1 s doubling to 60 s): rounds stay short.
    "PACS_RESTART_BACKOFF_INITIAL_S": "0.5",
    "PACS_RESTART_BACKOFF_MAX_S": "2",
    "PACS_HEALTHY_AFTER_S": "5",
    "PACS_STOP_GRACE_S": "20",
    # Faust (read from the environment): a killed worker keeps its partitions until its session
    # expires (60 s by default) before the restarted worker gets them; 10 s keeps rounds short.
    "BROKER_SESSION_TIMEOUT": "10",
    "BROKER_HEARTBEAT_INTERVAL": "1",
    "BROKER_REBALANCE_TIMEOUT": "10",
    # Small snapshot chunks: many transactions, so a kill during the snapshot lands inside one.
    "PACS_SNAPSHOT_CHUNK_ROWS": "500",
    "PACS_POLL_INTERVAL_S": "0.2",
    "PACS_SIM_CAPTURE_INTERVAL_S": "0.5",
}

_AUDIT_SQL = """
CREATE SCHEMA IF NOT EXISTS faults_audit;
CREATE TABLE IF NOT EXISTS faults_audit.applied (
    id               bigserial   PRIMARY KEY,
    entity           text        NOT NULL,
    key              bigint      NOT NULL,
    source_position  bytea       NOT NULL,
    deleted          boolean     NOT NULL,
    operation        text        NOT NULL,
    txid             bigint      NOT NULL DEFAULT txid_current(),
    applied_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION faults_audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO faults_audit.applied (entity, key, source_position, deleted, operation)
    VALUES (TG_TABLE_NAME, (to_jsonb(NEW) ->> TG_ARGV[0])::bigint, NEW.source_position, NEW.deleted, TG_OP);
    RETURN NULL;
END $$;
"""


def free_port() -> int:
    """A TCP port nobody listens on right now (for a metrics endpoint or a forwarder)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def children_of(pid: int) -> dict[int, list[str]]:
    """The live child processes of ``pid`` with their command lines."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        found[int(entry.name)] = [a.decode(errors="replace") for a in argv if a]
    return found


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/<pid>/status), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def scrape(port: int) -> dict[str, float]:
    """A /metrics endpoint as ``{'name{label="v",...}': value}`` (empty if it does not answer)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return found


def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "",
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; raise AssertionError after ``timeout``
    (with what ``diagnose`` reports, so that a CI log says where it stuck)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{diagnose()}" if diagnose is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or check}{details}")
        time.sleep(interval)


def behind(ends: dict[tuple[str, int], int], done: dict[tuple[str, int], int]) -> dict[str, str]:
    """The partitions whose committed offset (``done``) is short of their end, as ``done/end``."""
    return {
        f"{topic}[{partition}]": f"{done.get((topic, partition), -1)}/{end}"
        for (topic, partition), end in sorted(ends.items())
        if done.get((topic, partition), -1) < end
    }


@dataclass
class Verified:
    """What ``pacs-sync verify --json`` said."""

    exit_code: int
    report: dict[str, Any]
    stderr: str

    @property
    def dead_letters_read(self) -> int:
        """Dead letters on the pipeline's dead-letter topic."""
        return int(self.report.get("dead_letters", {}).get("read", 0))

    def counts(self) -> dict[str, int]:
        """Source rows per entity."""
        return {e: int(r.get("source_count", 0)) for e, r in self.report.get("entities", {}).items()}


@dataclass
class Audit:
    """What the audit trigger recorded."""

    applied: int
    duplicates: list[tuple[str, int, str, int]]
    by_entity: dict[str, int]


@dataclass
class FaultPipeline:
    """An isolated pipeline on the shared stack (see the module docstring)."""

    stack: LocalStack
    env: dict[str, str]
    db_name: str
    prefix: str
    target_db: str
    target_dsn: str
    state_dir: Path
    supervisor: subprocess.Popen[bytes] | None = None
    churn: subprocess.Popen[bytes] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _admin_client: AdminClient | None = None

    # ---- names ----

    @property
    def log_dir(self) -> Path:
        """Where ``pacs-sync run`` writes each stage's log."""
        return self.state_dir / "logs" / f"pipeline.{self.db_name}.{self.prefix}"

    def stage_log(self, stage: str) -> Path:
        """One stage's log (appended across restarts)."""
        return self.log_dir / f"{stage}.log"

    def read_log(self, stage: str) -> str:
        """One stage's log so far."""
        try:
            return self.stage_log(stage).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def change_topics(self) -> list[str]:
        """The producer's change topics."""
        return [f"pacs.{self.db_name}.dbo.{t}" for t in TABLES]

    @property
    def offsets_topic(self) -> str:
        """The producer's position topic (written in the same transactions as the events)."""
        return f"pacs.{self.db_name}._offsets"

    @property
    def sweeps_topic(self) -> str:
        """The producer's re-snapshot sweeps (read by the sink with the clean topics)."""
        return sweeps_topic("pacs", self.db_name)

    def clean_topics(self) -> list[str]:
        """The processors' clean topics."""
        return [f"{self.prefix}.{e}" for e in ENTITIES.values()]

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic of the processors and the sink."""
        return f"{self.prefix}.dlq"

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers."""
        return self.env.get("PACS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")

    def note(self, kind: str, **details: Any) -> dict[str, Any]:
        """Record what a scenario did or observed (printed, kept for the session report)."""
        event = {"kind": kind, "at": round(time.time(), 3), **details}
        self.events.append(event)
        print(f"[faults] {kind}: {json.dumps(details, default=str)}")  # noqa: T201  (the test's record)
        return event

    # ---- commands ----

    def cli(
        self,
        *args: str,
        timeout: float = 600,
        check: bool = True,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pacs-sync <args>`` with this pipeline's environment (plus ``env``); output captured."""
        done = subprocess.run(
            [sys.executable, "-m", "pacs_sync", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO_ROOT,
            preexec_fn=preexec_fn,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"pacs-sync {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                f"{done.stderr[-4000:]}"
            )
        return done

    def popen(self, *args: str, log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``pacs-sync <args>`` in the background, its output appended to ``<log dir>/<log_name>``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / log_name).open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "pacs_sync", *args],
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                start_new_session=True,
            )

    def init_source(self, scale: str, *, seed: int = 7, dirty_rate: float = 0.0) -> str:
        """``sim init``: the emulated PACS database with generated data, CDC on, its Agent running."""
        done = self.cli("sim", "init", "--scale", scale, "--seed", str(seed), "--dirty-rate", str(dirty_rate))
        return done.stdout

    # ---- the source ----

    def pacs(self, *, autocommit: bool = True) -> dbapi.Connection:
        """A superuser connection to the emulated PACS database."""
        return dbapi.connect(
            **connection_kwargs(self.stack.postgres, self.db_name),
            autocommit=autocommit,
            application_name="faults-test",
        )

    @contextlib.contextmanager
    def admin(self) -> Iterator[EmulatorAdmin]:
        """The emulator's administrative procedures (capture scan, cleanup, clock, capture instances)."""
        admin = EmulatorAdmin(self.pacs())
        try:
            yield admin
        finally:
            admin.close()

    def scan(self) -> None:
        """Run one capture now, so everything committed so far is in the change tables."""
        with self.admin() as admin:
            admin.scan()

    def source_sql(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run statements in one source transaction (as a PACS application would)."""
        conn = self.pacs(autocommit=False)
        try:
            cursor = conn.cursor()
            for sql, params in statements:
                cursor.execute(sql, params)
            conn.commit()
        finally:
            conn.close()

    def source_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query on the source."""
        conn = self.pacs()
        try:
            return dbapi.fetch_all(conn, sql, params)
        finally:
            conn.close()

    def change_rows(self) -> int:
        """Rows in the emulator's change tables (every captured insert, delete and update image)."""
        rows = self.source_rows(
            "SELECT sum(n) FROM (SELECT count(*) AS n FROM cdc.dbo_property_ct UNION ALL "
            "SELECT count(*) FROM cdc.dbo_propertyowner_ct UNION ALL "
            "SELECT count(*) FROM cdc.dbo_propertyvalue_ct "
            "UNION ALL SELECT count(*) FROM cdc.dbo_structure_ct) AS t"
        )
        return int(rows[0][0] or 0)

    # ---- the target ----

    def target(self, *, autocommit: bool = True) -> dbapi.Connection:
        """A connection to the test's target database, as the target role."""
        parts = PacsSettings(target_dsn=self.target_dsn).target_parts  # type: ignore[arg-type]
        return dbapi.connect(
            host=parts["host"],
            port=parts["port"],
            user=parts["user"],
            password=parts["password"],
            database=parts["database"],
            autocommit=autocommit,
            application_name="faults-test",
        )

    def target_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query on the target."""
        conn = self.target()
        try:
            return dbapi.fetch_all(conn, sql, params)
        finally:
            conn.close()

    def prepare_target(self, *, audit: bool = True) -> None:
        """Apply the sink's migrations now and install the audit trigger on every entity table."""
        from sink.target import TargetDatabase

        async def migrate() -> None:
            parts = PacsSettings(target_dsn=self.target_dsn).target_parts  # type: ignore[arg-type]
            target = await TargetDatabase.connect(parts)
            try:
                await target.migrate()
            finally:
                await target.close()

        asyncio.run(migrate())
        if not audit:
            return
        conn = self.target()
        try:
            cursor = conn.cursor()
            cursor.execute(_AUDIT_SQL)
            for entity, key in KEY_COLUMNS.items():
                cursor.execute(
                    f"CREATE TRIGGER faults_audit AFTER INSERT OR UPDATE ON pacs_sync.{entity} "
                    f"FOR EACH ROW EXECUTE FUNCTION faults_audit.record('{key}')"
                )
        finally:
            conn.close()

    def audit(self) -> Audit:
        """Every change the sink applied, and those applied more than once (must be none)."""
        total = self.target_rows("SELECT entity, count(*) FROM faults_audit.applied GROUP BY entity")
        duplicates = self.target_rows(
            "SELECT entity, key, encode(source_position, 'hex'), count(*) FROM faults_audit.applied "
            "GROUP BY entity, key, source_position HAVING count(*) > 1 ORDER BY 4 DESC LIMIT 20"
        )
        by_entity = {str(e): int(n) for e, n in total}
        return Audit(
            sum(by_entity.values()),
            [(str(e), int(k), str(p), int(n)) for e, k, p, n in duplicates],
            by_entity,
        )

    def sink_sessions(self) -> list[tuple[int, str, Any]]:
        """The sink's PostgreSQL sessions on the target that are inside a transaction right now."""
        conn = self.stack.postgres.connect()
        try:
            return [
                (int(pid), str(state), xact)
                for pid, state, xact in dbapi.fetch_all(
                    conn,
                    "SELECT pid, state, xact_start FROM pg_stat_activity WHERE datname = ? "
                    "AND application_name = 'pacs-sync-sink' AND xact_start IS NOT NULL "
                    "AND state IN ('active', 'idle in transaction')",
                    (self.target_db,),
                )
            ]
        finally:
            conn.close()

    def producer_sessions(self) -> list[tuple[int, str]]:
        """The producer's PostgreSQL sessions on the source and their state."""
        conn = self.stack.postgres.connect()
        try:
            return [
                (int(pid), str(state))
                for pid, state in dbapi.fetch_all(
                    conn,
                    "SELECT pid, state FROM pg_stat_activity WHERE datname = ? "
                    "AND application_name = 'pacs-sync producer' AND xact_start IS NOT NULL",
                    (self.db_name,),
                )
            ]
        finally:
            conn.close()

    # ---- Kafka ----

    def _admin(self) -> AdminClient:
        if self._admin_client is None:  # one client: probes run many times a second
            self._admin_client = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return self._admin_client

    def offsets(self, topics: Iterable[str], *, committed_only: bool) -> dict[tuple[str, int], int]:
        """Per partition: the high watermark, or (``committed_only``) the last stable offset."""
        admin = self._admin()
        wanted = list(topics)
        metadata = admin.list_topics(timeout=15)
        request = {
            TopicPartition(t, p): OffsetSpec.latest()
            for t in wanted
            if t in metadata.topics
            for p in metadata.topics[t].partitions
        }
        if not request:
            return {}
        level = IsolationLevel.READ_COMMITTED if committed_only else IsolationLevel.READ_UNCOMMITTED
        futures = admin.list_offsets(request, isolation_level=level, request_timeout=15)
        found = {}
        for tp, future in futures.items():
            with contextlib.suppress(KafkaException):  # e.g. a topic created a moment ago has no leader yet
                found[(tp.topic, tp.partition)] = int(future.result().offset)
        return found

    def open_transactions(self, topics: Iterable[str]) -> dict[str, int]:
        """Partitions whose high watermark is above the last stable offset: an open transaction holds
        that many records (offsets, markers included) not yet committed."""
        wanted = list(topics)
        high = self.offsets(wanted, committed_only=False)
        stable = self.offsets(wanted, committed_only=True)
        return {
            f"{t}[{p}]": high[(t, p)] - stable.get((t, p), 0)
            for t, p in high
            if high[(t, p)] > stable.get((t, p), 0)
        }

    def group_lag(self, group: str, topics: Iterable[str]) -> int:
        """Records of ``topics`` past ``group``'s committed offsets (uncommitted offsets count whole)."""
        wanted = list(topics)
        ends = self.offsets(wanted, committed_only=True)
        if not ends:
            return 0
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "log_level": 0})
        try:
            committed = consumer.committed([TopicPartition(t, p) for t, p in ends], timeout=15)
        finally:
            consumer.close()
        done = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed}
        return sum(max(end - done.get(tp, 0), 0) for tp, end in ends.items())

    def read_topic(self, topic: str) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        """Every committed record of a topic: (key, value, headers)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"faults-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "log_level": 0,
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=15)
            if topic not in metadata.topics or metadata.topics[topic].error is not None:
                return []
            partitions = [TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions]
            ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=15)[1] for tp in partitions}
            consumer.assign(partitions)
            records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
            idle = 0
            while idle < 6:
                batch = consumer.consume(num_messages=5000, timeout=0.5)
                if not batch:
                    positions = consumer.position(partitions)
                    if all(p.offset >= ends[p.partition] or ends[p.partition] == 0 for p in positions):
                        break
                    idle += 1
                    continue
                idle = 0
                for m in batch:
                    if m.error() is None:
                        records.append((m.key(), m.value(), list(m.headers() or [])))  # type: ignore[arg-type]
            return records
        finally:
            consumer.close()

    def produce(self, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Produce raw records (not transactional) and wait for every acknowledgement."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "log_level": 0})
        failures: list[str] = []
        count = 0
        for key, value in records:
            producer.produce(
                topic, key=key, value=value, on_delivery=lambda e, _m: failures.append(str(e)) if e else None
            )
            count += 1
        remaining = producer.flush(60)
        if remaining or failures:
            raise AssertionError(f"could not produce to {topic}: {remaining} left, {failures[:3]}")
        return count

    def dead_letter_reasons(self) -> dict[str, int]:
        """Dead letters on the pipeline's DLQ by ``<error code> <rule ids> <source topic>``."""
        reasons: dict[str, int] = {}
        for _key, _value, headers in self.read_topic(self.dlq_topic):
            h = {k: (v or b"").decode(errors="replace") for k, v in headers}
            reason = (
                f"{h.get('error_code')} {h.get('rule_ids')} {h.get('source_topic', '').rsplit('.', 1)[-1]}"
            )
            reasons[reason] = reasons.get(reason, 0) + 1
        return reasons

    def re_emitted(self) -> int:
        """Clean records present more than once (same key, same bytes): re-processing after a kill."""
        repeated = 0
        for topic in self.clean_topics():
            seen: set[tuple[bytes | None, bytes | None]] = set()
            for key, value, _ in self.read_topic(topic):
                if (key, value) in seen:
                    repeated += 1
                else:
                    seen.add((key, value))
        return repeated

    # ---- the supervised pipeline ----

    def start(self, env: dict[str, str] | None = None, *, stages: Iterable[str] = STAGES) -> dict[str, int]:
        """``pacs-sync run`` in the background; returns the stage pids once every stage runs."""
        if self.supervisor is not None and self.supervisor.poll() is None:
            raise AssertionError("the pipeline already runs")
        self.supervisor = self.popen("run", "--no-api", log_name="supervisor.log", env=env)
        return self.wait_stages(stages)

    def stage_pids(self) -> dict[str, int]:
        """Pid of each running stage process of the supervisor."""
        if self.supervisor is None or self.supervisor.poll() is not None:
            return {}
        found = {}
        for pid, argv in children_of(self.supervisor.pid).items():
            if len(argv) >= 4 and argv[-3:-1] == ["-m", "pacs_sync"]:
                found[argv[-1]] = pid
        return found

    def wait_stages(
        self, stages: Iterable[str] = STAGES, *, replacing: dict[str, int] | None = None, timeout: float = 60
    ) -> dict[str, int]:
        """Wait until each stage runs (with a pid other than ``replacing``'s); returns the pids."""
        wanted = list(stages)
        old = replacing or {}

        def ready() -> dict[str, int] | None:
            if self.supervisor is not None and self.supervisor.poll() is not None:
                raise AssertionError(
                    f"pacs-sync run exited {self.supervisor.returncode}:\n"
                    + (self.log_dir / "supervisor.log").read_text(errors="replace")[-3000:]
                )
            pids = self.stage_pids()
            if all(s in pids and pids[s] != old.get(s) for s in wanted):
                return pids
            return None

        return dict(wait_for(ready, timeout=timeout, interval=0.1, what=f"stages {wanted} to run"))

    def stop(self) -> None:
        """Stop ``pacs-sync run`` (SIGTERM; its stages get the grace period), SIGKILL what is left."""
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is None:
            return
        pids = []
        if supervisor.poll() is None:
            pids = list(children_of(supervisor.pid))
            supervisor.send_signal(signal.SIGTERM)
            try:
                supervisor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                supervisor.kill()
                supervisor.wait(timeout=10)
        for pid in pids:  # only the stages this supervisor started
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

    def start_churn(self, rate: float, *, seed: int = 11) -> None:
        """``pacs-sync sim churn`` (every kind of transaction) in the background until :meth:`stop_churn`;
        it rides out a PostgreSQL restart by reconnecting."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pacs_sync", "sim", "churn", "--json", "--rate", str(rate)]
        argv += ["--duration", "100000", "--seed", str(seed)]
        with (self.log_dir / "churn.log").open("ab") as out:
            self.churn = subprocess.Popen(
                argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                start_new_session=True,
            )

    def stop_churn(self) -> None:
        """Stop the churn (after its transaction in flight), then capture what it committed."""
        churn, self.churn = self.churn, None
        if churn is not None and churn.poll() is None:
            churn.send_signal(signal.SIGTERM)
            try:
                churn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                churn.kill()
                churn.wait(timeout=10)
            lines = [line for line in self.read_log("churn").splitlines() if line.startswith("{")]
            if lines:
                self.note("churn", **json.loads(lines[-1]))
        self.scan()

    def topics_ready(self) -> bool:
        """Every change and clean topic exists and each partition has a leader."""
        wanted = [*self.change_topics(), *self.clean_topics()]
        found = self.offsets(wanted, committed_only=True)
        return {t for t, _ in found} == set(wanted) and len(found) == 3 * len(wanted)

    def catch_up(self, timeout: float = 300) -> str:
        """``pacs-sync sync --until-caught-up`` on the running stages (once their topics are ready:
        `sync` does not retry a partition without a leader yet, see RELIABILITY.md)."""
        began = time.monotonic()
        if self.supervisor is not None:
            wait_for(self.topics_ready, timeout=120, what="the pipeline's topics")
        self.scan()
        out = self.cli(
            "sync", "--until-caught-up", "--timeout", str(int(timeout)), timeout=timeout + 60
        ).stdout
        self.note("caught-up", seconds=round(time.monotonic() - began, 1))
        return out

    def data_ends(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """Per partition, one past the last record a read_committed reader sees (transaction markers
        and aborted records excluded): what a consumer that processed everything has committed.
        The product's own measure (what `pacs-sync sync` waits for)."""
        positions = KafkaPositions(self.bootstrap)
        try:
            return positions.data_ends(topics)
        finally:
            positions.close()

    def committed(self, group: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """A consumer group's committed offsets (-1: none)."""
        wanted = [TopicPartition(t, p) for t, p in partitions]
        if not wanted:
            return {}
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "log_level": 0})
        try:
            return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(wanted, timeout=15)}
        finally:
            consumer.close()

    def sink_offsets(self) -> dict[tuple[str, int], int]:
        """The sink's committed offsets, from the target (empty before its first batch)."""
        rows = self.target_rows(
            "SELECT topic, partition, next_offset FROM pacs_sync.sync_offsets WHERE consumer = ?",
            (f"{self.prefix}-sink",),
        )
        return {(str(t), int(p)): int(o) for t, p, o in rows}

    def settle(self, timeout: float = 300) -> float:
        """Wait, stage by stage, until everything committed in the source is in PostgreSQL.

        The same checks as ``pacs-sync sync --until-caught-up`` (producer position, processors' and
        the sink's committed offsets against the topics' ends), minus its ~30 s of fixed cost (it
        reads each partition's end with a consumer of its own); the kill scenario runs the real one.
        """
        from producer.runner import committed_offset
        from producer.settings import ProducerSettings

        began = time.monotonic()
        deadline = began + timeout
        if self.supervisor is not None:
            wait_for(self.topics_ready, timeout=120, what="the pipeline's topics")
        self.scan()
        newest = self.source_rows(
            "SELECT encode(max(start_lsn), 'hex') FROM cdc.lsn_time_mapping WHERE tran_id <> '\\x00'"
        )
        target = newest[0][0] or ""
        settings = ProducerSettings(
            db_name=self.db_name, kafka_bootstrap_servers=self.bootstrap, metrics_port=0
        )

        def published() -> bool:
            try:
                offset = committed_offset(settings)
            except Exception:  # noqa: BLE001  (not readable yet: keep waiting)
                return False
            position = offset.position if offset else None
            return bool(
                offset
                and offset.snapshot_completed
                and position is not None
                and position.transaction_complete
                and position.commit_lsn.value.hex() >= target
            )

        def processing_ends(topics: list[str], *, transactional: bool) -> dict[tuple[str, int], int]:
            return self.data_ends(topics) if transactional else self.offsets(topics, committed_only=True)

        def processed(topics: list[str], group: str, *, transactional: bool) -> bool:
            ends = processing_ends(topics, transactional=transactional)
            done = self.committed(group, ends)
            return all(done.get(tp, -1) >= end for tp, end in ends.items())

        def processors_behind(topics: list[str], group: str, *, transactional: bool) -> str:
            ends = processing_ends(topics, transactional=transactional)
            return self.diagnosis("processor", behind(ends, self.committed(group, ends)))

        def remaining() -> float:
            return max(deadline - time.monotonic(), 1.0)

        group = f"{self.prefix}-processors"
        wait_for(published, timeout=remaining(), what="the producer to publish every committed change")
        wait_for(
            lambda: processed(self.change_topics(), group, transactional=True),
            timeout=remaining(),
            what="the processors",
            diagnose=lambda: processors_behind(self.change_topics(), group, transactional=True),
        )
        repartition = [
            t
            for t in self._admin().list_topics(timeout=15).topics
            if t.startswith(f"{group}-") and t.endswith("-repartition")
        ]
        wait_for(
            lambda: processed(repartition, group, transactional=False),
            timeout=remaining(),
            what="the re-keyed owners",
            diagnose=lambda: processors_behind(repartition, group, transactional=False),
        )

        sweep_ends = self.data_ends([self.sweeps_topic])  # complete: the producer has published

        def written_ends() -> dict[tuple[str, int], int]:
            ends = self.offsets(self.clean_topics(), committed_only=True)
            ends.update(sweep_ends)
            return {tp: end for tp, end in ends.items() if end > 0}

        def written() -> bool:
            return not behind(written_ends(), self.sink_offsets())

        wait_for(
            written,
            timeout=remaining(),
            what="the sink",
            diagnose=lambda: self.diagnosis("sink", behind(written_ends(), self.sink_offsets())),
        )
        seconds = round(time.monotonic() - began, 1)
        self.note("settled", seconds=seconds)
        return seconds

    def diagnosis(self, stage: str, lagging: dict[str, str], lines: int = 40) -> str:
        """Which partitions a stage is behind on, and its log's last lines above INFO."""
        noteworthy = [line for line in self.read_log(stage).splitlines() if "INFO" not in line[:60]]
        tail = "\n".join(f"  {line[:300]}" for line in noteworthy[-lines:])
        return (
            f"{stage} behind (committed/end): {json.dumps(lagging)}\n"
            f"{stage} log, last lines above INFO:\n{tail}"
        )

    def verify(self) -> Verified:
        """``pacs-sync verify --json``."""
        done = self.cli("verify", "--json", "--limit", "10", check=False, timeout=300)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            report = {}
        return Verified(done.returncode, report, done.stderr)

    def unpublished_transactions(self) -> list[str]:
        """Source transactions after the snapshot that are in the change tables but in no change event.

        A diagnostic for a failed verify: a whole captured transaction missing from the change topics
        points at the producer's window logic (the idle-poll race of RELIABILITY.md problem 11 was one).
        """
        from schemas.codec import AvroCodec, SchemaRegistry, UndecodableEventError

        codec = AvroCodec(SchemaRegistry.from_package())
        published: set[str] = set()
        snapshot: set[str] = set()
        for topic in self.change_topics():
            for _key, value, _ in self.read_topic(topic):
                if not value:
                    continue
                try:
                    source = codec.decode(value).value["source"]
                except (UndecodableEventError, KeyError, TypeError):
                    continue
                lsn = str(source["commit_lsn"]).replace(":", "")
                (snapshot if source.get("snapshot") in ("true", "last") else published).add(lsn)
        captured: set[str] = set()
        for table in ("property", "propertyowner", "propertyvalue", "structure"):
            for (lsn,) in self.source_rows(
                f"SELECT DISTINCT encode(__$start_lsn, 'hex') FROM cdc.dbo_{table}_ct"
            ):
                captured.add(str(lsn))
        floor = min(snapshot, default="")
        return sorted(lsn for lsn in captured - published if lsn > floor)

    def fail_verify(self, message: str) -> NoReturn:
        """Fail with ``message``, naming any captured transaction the producer never published."""
        skipped = self.unpublished_transactions()
        if skipped:
            self.note("producer-skipped-transactions", lsns=skipped[:10], count=len(skipped))
            message = f"the producer skipped {len(skipped)} captured transaction(s) {skipped[:3]}; {message}"
        raise AssertionError(message)

    def check_nothing_lost_nothing_twice(self, *, dead_letters: int | None = 0) -> tuple[Verified, Audit]:
        """The end of every scenario: verify exits 0, no change applied twice (and, for clean data,
        no dead letter: a row parked in the DLQ would let verify pass with the row missing)."""
        verified = self.verify()
        audit = self.audit()
        summary = {
            "verify_exit": verified.exit_code,
            "source_rows": verified.counts(),
            "dead_letters": verified.dead_letters_read,
            "dead_lettered_differences": {
                e: r.get("dead_lettered", {}).get("count")
                for e, r in verified.report.get("entities", {}).items()
            },
            "dead_letter_reasons": self.dead_letter_reasons() if verified.dead_letters_read else {},
            "changes_applied": audit.applied,
            "applied_twice": len(audit.duplicates),
        }
        self.note("checked", **summary)
        if verified.exit_code != 0:
            self.fail_verify(
                f"verify exited {verified.exit_code}: {json.dumps(verified.report)[:3000]}\n"
                f"{verified.stderr[-2000:]}"
            )
        assert not audit.duplicates, (
            f"changes applied twice (entity, key, position, times): {audit.duplicates}"
        )
        assert audit.applied > 0
        if dead_letters is not None:
            assert verified.dead_letters_read == dead_letters, (
                f"{verified.dead_letters_read} dead letters (expected {dead_letters}): "
                f"{json.dumps(summary['dead_letter_reasons'])}; explained differences "
                f"{json.dumps(summary['dead_lettered_differences'])}; {json.dumps(verified.report)[:2000]}"
            )
        return verified, audit

    # ---- clean-up ----

    def destroy(self, *, keep_logs: bool) -> None:
        """Stop everything this pipeline started and drop its databases, topics and groups."""
        with contextlib.suppress(Exception):
            self.stop_churn()
        self.stop()
        self.cli("sim", "agent", "stop", check=False, timeout=60)
        if keep_logs and os.environ.get("PACS_FAULT_KEEP_DATA") == "1":
            # Post-mortem: the failed scenario's databases and topics stay for inspection.
            self.note("kept-for-inspection", databases=[self.db_name, self.target_db], prefix=self.prefix)
            return
        root = self.stack.postgres.connect()
        try:
            for database in (self.target_db, self.db_name):
                root.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            root.close()
        admin = self._admin()
        with contextlib.suppress(KafkaException):
            mine = [
                t
                for t in admin.list_topics(timeout=30).topics
                if f".{self.db_name}." in t or t.startswith(self.prefix)
            ]
            if mine:
                for future in admin.delete_topics(mine, operation_timeout=60).values():
                    with contextlib.suppress(KafkaException):
                        future.result(timeout=60)
            groups = [f"{self.prefix}-processors", f"{self.prefix}-sink"]
            for future in admin.delete_consumer_groups(groups, request_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    future.result(timeout=30)
        if not keep_logs:
            with contextlib.suppress(OSError):
                (self.state_dir / "sim" / f"capture-agent-{self.db_name}.log").unlink()
            for path in sorted(self.log_dir.glob("*"), reverse=True):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self.log_dir.rmdir()


def new_pipeline(
    stack: LocalStack, kind: str, *, extra_env: dict[str, str] | None = None, tuned: bool = True
) -> FaultPipeline:
    """Create the target database and the environment of a new isolated pipeline (``tuned``: with
    :data:`FAST_RECOVERY`; without it every setting keeps the product's default)."""
    tag = uuid.uuid4().hex[:8]
    db_name, target_db, prefix = f"flt_{kind}_{tag}", f"flt_target_{tag}", f"flt{tag}"
    target = urlsplit(stack.settings.target_dsn.get_secret_value())
    target_dsn = urlunsplit(target._replace(path=f"/{target_db}"))
    root = stack.postgres.connect()
    try:
        root.cursor().execute(f'CREATE DATABASE "{target_db}" OWNER "{target.username}"')
    finally:
        root.close()
    state_dir = stack.settings.state_dir.resolve()
    env = {
        **os.environ,
        "PACS_STATE_DIR": str(state_dir),
        "PACS_DB_NAME": db_name,
        "PACS_TARGET_DSN": target_dsn,
        "PACS_OUTPUT_PREFIX": prefix,
        "PACS_CLEAN_TOPIC_PREFIX": prefix,
        "PACS_PROCESSOR_APP_ID": f"{prefix}-processors",
        "PACS_SINK_GROUP_ID": f"{prefix}-sink",
        "PACS_SINK_INSTANCE_ID": f"{prefix}-sink-1",
        # Other pipelines (a demo, other tests) may hold the default metrics ports on this machine.
        "PACS_SUPERVISOR_METRICS_PORT": "0",
        "PACS_PRODUCER_METRICS_PORT": "0",
        "PACS_PROCESSOR_METRICS_PORT": "0",
        "PACS_SINK_METRICS_PORT": "0",
        "PACS_METRICS_PORT": "0",
        "PACS_LOG_LEVEL": "INFO",
        **(FAST_RECOVERY if tuned else {}),
        **(extra_env or {}),
    }
    return FaultPipeline(stack, env, db_name, prefix, target_db, target_dsn, state_dir)
