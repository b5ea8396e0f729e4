"""Sink throughput on the real local stack: rows/s written to PostgreSQL, batch load and update-heavy.

A script, not a pytest test::

    .venv/bin/python tests/benchmarks/bench_sink.py [--runs 3] [--batch-sizes 500,5000,20000] \
        [--modes inprocess,subprocess] [--output bench-results/sink.json] [--seed 1] \
        [--updates-per-key 3] [--delete-fraction 0.02] [--profile] [--timeout 600]

What it does, against the running local stack (``pacs-sync stack up``; nothing is started or stopped
but its own sink processes):

1. Builds the clean records of a Benton-size county once (12,400 properties, 18,600 owners, 62,000
   valuations, 14,800 structures: the simulator's realistic rows, normalised as the processors do),
   Avro single-object encoded and keyed like the processors' output, in two streams:

   * batch load: one snapshot read per row (every row at one commit LSN, no change LSN), as a first
     sync publishes it: 107,800 records, all inserts into empty tables;
   * update-heavy: ``--updates-per-key`` rounds (default 3) of one update per key, each round in a
     shuffled order, so the updates of a key are spread across the stream (a batch rarely holds two),
     then deletes of ``--delete-fraction`` of the keys: 325,556 records by default, each its own
     source transaction (increasing commit LSN), all moving rows of the loaded tables forward.

2. Per run and batch size (``PACS_SINK_BATCH_SIZE`` / ``sink_batch_size``) and mode, a measurement gets a
   database of its own (``CREATE DATABASE … OWNER <target role>`` as the superuser, dropped afterwards),
   topics of its own (``benchsink-<pid>-…``, 3 partitions, compacted, as the sink creates them) and a
   consumer group of its own. The load stream is produced first (not timed), the sink runs until it
   has committed every offset (scenario a), then the update stream is produced (not timed) and the sink
   resumes from the offsets PostgreSQL holds (scenario b). Each scenario is checked afterwards: every
   key's row holds its last record's commit LSN and delete flag, nothing was rejected.

   * ``inprocess``: :class:`~sink.runner.SinkRunner` in this process (``run(until_idle_s=…)``), the
     production code instrumented from the outside: the consumer's ``poll_batch``, ``decode_batch``
     and the asyncpg connection (COPY, upsert, offsets, commit) are timed per batch. rows/s = records /
     (end of the last batch's commit - start of the first batch), so start-up (the group join, the
     first fetch) is left out; the first batch's own processing is in.
   * ``subprocess``: ``python -m pacs_sync sink`` (the production entry point) as a child, measured
     from outside by polling ``pacs_sync.sync_offsets`` every 10 ms: rows/s = records committed after
     the first observed commit / (time all offsets were committed - time of the first observed commit),
     so the first batch is left out. Batches and the time per batch come from the child's
     ``/metrics`` (``pacs_sync_sink_batch_duration_seconds``).
   * ``subprocess-2`` (only when asked for): the same with two sink processes in one consumer group
     (static instance ids ``…-0`` and ``…-1``), each on some of the 3 partitions of every topic.

3. ``--profile``: one more in-process measurement of each scenario (the largest batch size) under
   cProfile: the event-loop thread only (the consumer's fetch runs in librdkafka's threads and
   ``poll_batch`` in a worker thread). Summarised as the inclusive time of the sink's steps and the top
   functions; a coroutine's time counts only while it runs, not while it awaits PostgreSQL.
4. Prints a table, writes JSON (machine, versions, settings, every measurement with its per-batch
   phase times, medians per mode / scenario / batch size, the targets and whether the medians met
   them) and deletes its databases, topics and consumer groups.

Targets (2 cores, broker and PostgreSQL on the same machine): >= 50,000 rows/s for the Benton batch
load, >= 20,000 rows/s for update-heavy streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import platform
import pstats
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from pg8000.native import identifier

import sink.runner as sink_runner
from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from pacs_sync.sim.generator import BENTON_SCALE, generate
from pacs_sync.stack import LocalStack, StackSettings
from schemas.codec import AvroCodec, SchemaRegistry
from sink.kafka_io import CleanTopicConsumer
from sink.runner import SinkRunner
from sink.settings import SinkSettings
from sink.tables import ENTITIES
from sink.target import TargetDatabase

logger = logging.getLogger("bench_sink")

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("batch_load", "update_heavy")
TARGETS_ROWS_PER_S = {"batch_load": 50_000.0, "update_heavy": 20_000.0}
PARTITIONS = 3
IDLE_S = 1.5
"""The in-process sink returns after this long without a record (after the last commit: not timed)."""
OFFSET_POLL_S = 0.01
RECORD_NAMES = {
    "properties": "Property",
    "owners": "Owner",
    "valuations": "Valuation",
    "structures": "Structure",
}
SNAPSHOT_LSN = 0x2A_0000_0100_0001
"""Commit LSN of the snapshot read (the batch load); the update stream's LSNs follow it."""
_STOP_GRACE_S = 30.0


def lsn_text(n: int) -> str:
    h = f"{n:020x}"
    return f"{h[:8]}:{h[8:16]}:{h[16:]}"


# ---- the records ----


def benton_rows(seed: int) -> dict[str, list[dict[str, Any]]]:
    """Key and business columns of every clean record, from the simulator's Benton-size data set."""
    data = generate(BENTON_SCALE, seed=seed)
    owner_types = {"individual", "joint", "trust", "corporation", "llc", "government", "estate"}
    properties = []
    for pid, parcel, address, city, state, zip_code, legal, acreage, year in data.properties:
        digits = (zip_code or "").replace("-", "")
        properties.append(
            {
                "property_id": pid,
                "parcel_number": parcel,
                "address": address,
                "city": city,
                "state": state,
                "zip5": digits[:5] or None,
                "zip4": digits[5:9] or None,
                "legal_description": legal,
                "acreage": acreage,
                "year_built": year or None,
            }
        )
    owners = []
    for oid, pid, name, kind, pct, start, end in data.owners:
        owners.append(
            {
                "owner_id": oid,
                "property_id": pid,
                "owner_name": name.title(),
                "owner_type": kind.lower() if kind and kind.lower() in owner_types else "unknown",
                "ownership_pct": pct,
                "start_date": start,
                "end_date": end,
            }
        )
    valuations = [
        {
            "valuation_id": vid,
            "property_id": pid,
            "tax_year": year,
            "assessed_value": assessed,
            "market_value": market,
            "land_value": land,
            "improvement_value": improvement,
        }
        for vid, pid, year, assessed, market, land, improvement in data.valuations
    ]
    structures = [
        {
            "structure_id": sid,
            "property_id": pid,
            "structure_type": kind,
            "square_feet": feet,
            "condition": condition,
            "bedrooms": bedrooms,
            "bathrooms": bathrooms,
            "year_built": year or None,
        }
        for sid, pid, kind, feet, condition, bedrooms, bathrooms, year in data.structures
    ]
    return {"properties": properties, "owners": owners, "valuations": valuations, "structures": structures}


def updated(entity: str, row: dict[str, Any], round_no: int) -> dict[str, Any]:
    """The row after its ``round_no``-th update: a field or two change, every check still holds."""
    new = dict(row)
    if entity == "properties":
        new["legal_description"] = f"{row['legal_description'] or 'LOT'} (REV {round_no})"[:500]
        new["zip4"] = f"{(row['property_id'] + round_no) % 10_000:04d}"
    elif entity == "owners":
        start = row["start_date"] or date(2000, 1, 1)
        new["end_date"] = start + timedelta(days=365 * round_no)
        new["owner_name"] = f"{row['owner_name']} {round_no}"[:150]
    elif entity == "valuations":
        bump = Decimal(1_000 * round_no)
        for column in ("assessed_value", "market_value", "improvement_value"):
            if row[column] is not None:
                new[column] = row[column] + bump
    else:
        new["condition"] = ("Good", "Fair", "Average", "Poor")[round_no % 4]
        if row["square_feet"] is not None:
            new["square_feet"] = row["square_feet"] + round_no
    return new


@dataclass
class Stream:
    """Encoded records per entity (in topic order), and the state they leave the target in."""

    name: str
    messages: dict[str, list[tuple[bytes, bytes]]]
    final: dict[str, dict[int, tuple[str, bool]]]
    """Per entity: key → (commit LSN, deleted) of the key's last record."""
    deletes: int = 0

    @property
    def count(self) -> int:
        return sum(len(m) for m in self.messages.values())

    @property
    def counts(self) -> dict[str, int]:
        return {entity: len(m) for entity, m in self.messages.items()}

    @property
    def mean_value_bytes(self) -> float:
        sizes = [len(v) for m in self.messages.values() for _, v in m]
        return round(sum(sizes) / len(sizes), 1) if sizes else 0.0


def build_streams(
    codec: AvroCodec, seed: int, updates_per_key: int, delete_fraction: float
) -> tuple[Stream, Stream]:
    """The batch-load stream (snapshot reads) and the update-heavy stream that follows it."""
    rows = benton_rows(seed)
    rng = random.Random(seed)
    now = datetime.now(tz=UTC)

    def encode(entity: str, key_value: int, record: dict[str, Any]) -> tuple[bytes, bytes]:
        spec = ENTITIES[entity]
        name = f"io.terrafusion.model.{RECORD_NAMES[entity]}"
        return codec.encode(f"{name}Key", {spec.key_column: key_value}), codec.encode(name, record)

    snapshot_lsn = lsn_text(SNAPSHOT_LSN)
    load = Stream("batch_load", {}, {})
    for entity, entity_rows in rows.items():
        key_column = ENTITIES[entity].key_column
        load.messages[entity] = [
            encode(
                entity,
                row[key_column],
                {
                    **row,
                    "source_commit_lsn": snapshot_lsn,
                    "source_change_lsn": None,
                    "source_serial": 0,
                    "source_ts": None,
                    "deleted": False,
                },
            )
            for row in entity_rows
        ]
        load.final[entity] = {row[key_column]: (snapshot_lsn, False) for row in entity_rows}

    # Every change its own source transaction: commit LSN = change LSN, increasing across the stream.
    changes = Stream("update_heavy", {e: [] for e in rows}, {e: dict(load.final[e]) for e in rows})
    plan: list[tuple[int, str, dict[str, Any], int]] = []
    for round_no in range(1, updates_per_key + 1):
        round_plan = [
            (round_no, entity, row, 4) for entity, entity_rows in rows.items() for row in entity_rows
        ]
        rng.shuffle(round_plan)
        plan.extend(round_plan)
    deleted = [(0, entity, row, 1) for entity, entity_rows in rows.items() for row in entity_rows]
    deleted = rng.sample(deleted, round(len(deleted) * delete_fraction))
    plan.extend(deleted)
    changes.deletes = len(deleted)
    for n, (round_no, entity, row, serial) in enumerate(plan, start=1):
        spec = ENTITIES[entity]
        key_value = row[spec.key_column]
        position = lsn_text(SNAPSHOT_LSN + 0x10 * n)
        if serial == 1:
            data = {spec.key_column: key_value, **dict.fromkeys(spec.data_columns)}
        else:
            data = updated(entity, row, round_no)
        record = {
            **data,
            "source_commit_lsn": position,
            "source_change_lsn": position,
            "source_serial": serial,
            "source_ts": now + timedelta(milliseconds=n),
            "deleted": serial == 1,
        }
        changes.messages[entity].append(encode(entity, key_value, record))
        changes.final[entity][key_value] = (position, serial == 1)
    return load, changes


# ---- topics, databases, settings ----


@dataclass(frozen=True)
class Names:
    """Names of one measurement."""

    prefix: str
    database: str

    def topic(self, entity: str) -> str:
        return f"{self.prefix}.{entity}"

    @property
    def group(self) -> str:
        return f"{self.prefix}-sink"


def produce(bootstrap: str, names: Names, stream: Stream) -> float:
    """Pre-load a stream into the measurement's topics (as the processors write them); return seconds."""
    started = time.perf_counter()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            "log_level": 3,
        }
    )
    for entity, messages in stream.messages.items():
        topic = names.topic(entity)
        for key, value in messages:
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
    remaining = producer.flush(300)
    if remaining:
        raise RuntimeError(f"{remaining} records of {stream.name} not delivered to {names.prefix}.*")
    return time.perf_counter() - started


class Databases:
    """Creates and drops the measurements' target databases (as the superuser, owned by the target role)."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.dsn = stack.settings.target_dsn.get_secret_value()
        self.owner = urlsplit(self.dsn).username or "terrafusion"
        self.created: list[str] = []

    def create(self, name: str) -> str:
        root = self.stack.postgres.connect()
        try:
            root.cursor().execute(f"CREATE DATABASE {identifier(name)} OWNER {identifier(self.owner)}")
        finally:
            root.close()
        self.created.append(name)
        return urlunsplit(urlsplit(self.dsn)._replace(path=f"/{name}"))

    def drop(self, name: str) -> None:
        root = self.stack.postgres.connect()
        try:
            root.cursor().execute(f"DROP DATABASE IF EXISTS {identifier(name)} WITH (FORCE)")
        finally:
            root.close()
        if name in self.created:
            self.created.remove(name)


def sink_settings(bootstrap: str, names: Names, dsn: str, batch_size: int, state_dir: Path) -> SinkSettings:
    return SinkSettings.load(
        kafka_bootstrap_servers=bootstrap,
        clean_topic_prefix=names.prefix,
        target_dsn=dsn,
        sink_group_id=names.group,
        sink_instance_id=f"{names.group}-0",
        sink_batch_size=batch_size,
        state_dir=state_dir,
        metrics_port=0,
        log_level="WARNING",
    )


def sink_env(
    bootstrap: str, names: Names, dsn: str, batch_size: int, state_dir: Path, port: int, instance: int = 0
) -> dict[str, str]:
    """A child sink's environment: the same settings as :func:`sink_settings` (its own instance id)."""
    return {
        **os.environ,
        "PACS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PACS_CLEAN_TOPIC_PREFIX": names.prefix,
        "PACS_TARGET_DSN": dsn,
        "PACS_SINK_GROUP_ID": names.group,
        "PACS_SINK_INSTANCE_ID": f"{names.group}-{instance}",
        "PACS_SINK_BATCH_SIZE": str(batch_size),
        "PACS_STATE_DIR": str(state_dir),
        "PACS_METRICS_PORT": str(port),
        "PACS_LOG_LEVEL": "WARNING",
    }


# ---- CPU accounting ----


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return float(sum(fields) - idle), float(sum(fields))


def busy_cores(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    jiffies = after[1] - before[1]
    return round((after[0] - before[0]) / jiffies * (os.cpu_count() or 1), 3) if jiffies else None


async def backend_cpu(conn: asyncpg.Connection, database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving a sink on ``database``."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'pacs-sync-sink'",
        database,
    )
    return {r[0]: process_cpu_seconds(r[0]) for r in pids}


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU used between two :func:`backend_cpu` readings (a backend started in between counts whole)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def per_record_us(seconds: float | None, records: int | None) -> float | None:
    return round(seconds / records * 1e6, 2) if seconds is not None and records else None


# ---- the in-process sink, timed from the outside ----


PHASES = ("poll", "decode", "lock_stage", "copy", "upsert", "offsets", "commit")


@dataclass
class BatchTiming:
    """One batch of the in-process sink: its records and where its time went (seconds)."""

    records: int = 0
    rows: int = 0
    """Rows handed to PostgreSQL after the reduction by key."""
    started: float = 0.0
    """When the batch's poll returned."""
    ended: float = 0.0
    """When its transaction had committed and ``_write`` returned."""
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] += seconds


class Recorder:
    """Collects :class:`BatchTiming` s; the instrumented pieces add to the current one."""

    def __init__(self) -> None:
        self.batches: list[BatchTiming] = []
        self.current: BatchTiming | None = None

    def add(self, phase: str, seconds: float) -> None:
        if self.current is not None:
            self.current.add(phase, seconds)


class TimedTransaction:
    """An asyncpg transaction whose commit (the outermost block's exit) is timed."""

    def __init__(self, inner: Any, connection: TimedConnection) -> None:
        self._inner = inner
        self._connection = connection

    async def __aenter__(self) -> Any:
        self._connection.depth += 1
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        self._connection.depth -= 1
        started = time.perf_counter()
        try:
            return await self._inner.__aexit__(*exc)
        finally:
            if self._connection.depth == 0:
                self._connection.recorder.add("commit", time.perf_counter() - started)
            else:  # a savepoint's release: part of the upsert step
                self._connection.recorder.add("upsert", time.perf_counter() - started)


class TimedConnection:
    """Delegates to an asyncpg connection, timing the statements the sink's write path runs."""

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self._inner = inner
        self.recorder = recorder
        self.depth = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def transaction(self, **kwargs: Any) -> TimedTransaction:
        return TimedTransaction(self._inner.transaction(**kwargs), self)

    async def _timed(self, phase: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        finally:
            self.recorder.add(phase, time.perf_counter() - started)

    async def copy_records_to_table(self, *args: Any, **kwargs: Any) -> Any:
        return await self._timed("copy", self._inner.copy_records_to_table, *args, **kwargs)

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return await self._timed("upsert", self._inner.fetch, *args, **kwargs)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._timed("lock_stage", self._inner.execute, *args, **kwargs)

    async def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return await self._timed("offsets", self._inner.executemany, *args, **kwargs)


class TimedPool:
    """Delegates to an asyncpg pool; ``acquire()`` hands out :class:`TimedConnection` s."""

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[TimedConnection]:
        async with self._inner.acquire() as conn:
            yield TimedConnection(conn, self._recorder)


class TimedSinkRunner(SinkRunner):
    """The production runner; only its consumer's ``poll_batch`` and its ``_write`` are wrapped."""

    def __init__(self, *args: Any, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = recorder
        self.run_started = 0.0

    def _new_consumer(self, loop: asyncio.AbstractEventLoop) -> CleanTopicConsumer:
        consumer = super()._new_consumer(loop)
        poll = consumer.poll_batch
        recorder = self.recorder

        def timed_poll(max_records: int, max_wait_s: float) -> list[Any]:
            started = time.perf_counter()
            messages = poll(max_records, max_wait_s)
            if messages:
                batch = BatchTiming(records=len(messages), started=time.perf_counter())
                batch.add("poll", batch.started - started)
                recorder.current = batch
            return messages

        consumer.poll_batch = timed_poll  # type: ignore[method-assign]
        return consumer

    async def run(self, *, until_idle_s: float | None = None) -> None:
        self.run_started = time.perf_counter()
        await super().run(until_idle_s=until_idle_s)

    async def _write(self, decoded: Any, consumed: int) -> Any:
        # Decoding now happens in the runner's worker thread, overlapped with the previous write.
        try:
            return await super()._write(decoded, consumed)
        finally:
            batch = self.recorder.current
            if batch is not None:
                batch.ended = time.perf_counter()
                self.recorder.batches.append(batch)
                self.recorder.current = None


@contextlib.contextmanager
def timed_decode(recorder: Recorder) -> Iterator[None]:
    """Time :func:`sink.runner.decode_batch` (the runner looks it up in its module at each call)."""
    original = sink_runner.decode_batch

    def decode_batch(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = original(*args, **kwargs)
        recorder.add("decode", time.perf_counter() - started)
        if recorder.current is not None:
            recorder.current.rows = sum(len(r) for r in result[0].values())
        return result

    sink_runner.decode_batch = decode_batch
    try:
        yield
    finally:
        sink_runner.decode_batch = original


# ---- measurements ----


@dataclass
class ScenarioResult:
    """One scenario of one measurement."""

    scenario: str
    mode: str
    run: int
    batch_size: int
    records: int
    load_seconds: float
    """Producing the stream into the topics (not timed)."""
    measured_records: int | None = None
    """Records inside the timed window."""
    seconds: float | None = None
    """The timed window."""
    rows_per_s: float | None = None
    startup_seconds: float | None = None
    """Sink start to the window's start (group join, first fetch; subprocess: imports, migration too)."""
    batches: int | None = None
    mean_batch_records: float | None = None
    seconds_per_batch: float | None = None
    """Mean time of one batch (inprocess: poll to commit; subprocess: the child's batch_duration metric)."""
    phase_seconds: dict[str, float] | None = None
    """Inprocess: seconds per phase summed over the batches (other = metrics and bookkeeping in _write)."""
    phase_share: dict[str, float] | None = None
    median_batch_seconds: float | None = None
    sink_cpu_seconds: float | None = None
    """CPU seconds of the sink's process in the window (inprocess: this process)."""
    sink_cpu_share: float | None = None
    sink_cpu_us_per_record: float | None = None
    pg_cpu_seconds: float | None = None
    """CPU seconds of the sink's PostgreSQL backends in the window (inprocess: the whole run)."""
    pg_cpu_us_per_record: float | None = None
    machine_busy_cores: float | None = None
    load_average_1m: float | None = None
    """At the measurement's start: other work on the machine shows up here."""
    complete: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """What every measurement shares."""

    bootstrap: str
    base: str
    databases: Databases
    load: Stream
    changes: Stream
    state_dir: Path
    timeout_s: float
    prefixes: list[str] = field(default_factory=list)

    def names(self, mode: str, run: int, batch_size: int) -> Names:
        short = mode.replace("subprocess", "sub").replace("inprocess", "inp")
        tag = f"{short}-r{run}-b{batch_size}-{uuid.uuid4().hex[:4]}"
        names = Names(f"{self.base}-{tag}", f"{self.base}_{tag}".replace("-", "_"))
        self.prefixes.append(names.prefix)  # before use: clean-up deletes its topics whatever happens
        return names


def create_topics(bootstrap: str, names: Names) -> None:
    ensure_topics(
        bootstrap,
        [TopicSpec(names.topic(e), PARTITIONS, compacted=True) for e in ENTITIES]
        + [TopicSpec(names.topic("dlq"), 1)],
    )


async def verify(dsn: str, stream: Stream, consumer: str, expected_offsets: int) -> list[str]:
    """Compare the target with the state the stream must leave; return what differs."""
    problems = []
    conn = await asyncpg.connect(dsn)
    try:
        for entity, final in stream.final.items():
            spec = ENTITIES[entity]
            rows = await conn.fetch(f"SELECT {spec.key_column}, source_commit_lsn, deleted FROM {spec.table}")
            found = {r[0]: (r[1], r[2]) for r in rows}
            if found != final:
                wrong = sum(1 for k, v in final.items() if found.get(k) != v)
                problems.append(f"{entity}: {wrong} of {len(final)} keys differ ({len(found)} rows)")
        committed = await conn.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM pacs_sync.sync_offsets WHERE consumer = $1", consumer
        )
        if committed != expected_offsets:
            problems.append(f"offsets committed: {committed}, expected {expected_offsets}")
    finally:
        await conn.close()
    return problems


def _phase_report(batches: Sequence[BatchTiming]) -> tuple[dict[str, float], dict[str, float]]:
    totals = {p: sum(b.phases[p] for b in batches) for p in PHASES}
    # Poll runs in a worker thread before the batch; the rest is inside _write.
    totals["other"] = max(sum(b.ended - b.started for b in batches) - sum(totals[p] for p in PHASES[1:]), 0.0)
    whole = sum(totals.values())
    return (
        {k: round(v, 4) for k, v in totals.items()},
        {k: round(v / whole, 4) if whole else 0.0 for k, v in totals.items()},
    )


async def run_inprocess(
    settings: SinkSettings, recorder: Recorder, timeout_s: float, profiler: cProfile.Profile | None
) -> tuple[TimedSinkRunner, float, float]:
    """Run the instrumented sink until idle; return it and the CPU seconds of this process and of the
    sink's PostgreSQL backends meanwhile."""
    database = settings.target_parts["database"]
    target = await TargetDatabase.connect(settings.target_parts, pool_size=settings.sink_pool_size)
    monitor = await asyncpg.connect(settings.target_dsn.get_secret_value())
    try:
        await target.migrate()
        timed = TargetDatabase(TimedPool(target._pool, recorder), target.server)
        runner = TimedSinkRunner(settings, timed, recorder=recorder)
        pg_before = await backend_cpu(monitor, database)
        cpu = time.process_time()
        if profiler is not None:
            profiler.enable()
        try:
            with timed_decode(recorder):
                await asyncio.wait_for(runner.run(until_idle_s=IDLE_S), timeout=timeout_s)
        finally:
            if profiler is not None:
                profiler.disable()
        cpu = time.process_time() - cpu
        pg_cpu = cpu_delta(pg_before, await backend_cpu(monitor, database))
        return runner, cpu, pg_cpu
    finally:
        await monitor.close()
        await target.close()


def measure_inprocess(
    bench: Bench,
    names: Names,
    dsn: str,
    run: int,
    batch_size: int,
    stream: Stream,
    expected_offsets: int,
    load_seconds: float,
    profiler: cProfile.Profile | None = None,
) -> ScenarioResult:
    settings = sink_settings(bench.bootstrap, names, dsn, batch_size, bench.state_dir)
    recorder = Recorder()
    load_average = os.getloadavg()[0]
    before = machine_cpu()
    runner, cpu, pg_cpu = asyncio.run(run_inprocess(settings, recorder, bench.timeout_s, profiler))
    after = machine_cpu()  # includes the idle tail: see machine_busy_cores' note in the JSON
    problems = asyncio.run(verify(dsn, stream, names.group, expected_offsets))
    batches = recorder.batches
    if runner.records_written != stream.count:
        problems.append(f"the sink read {runner.records_written} records, expected {stream.count}")
    if not batches:
        problems.append("no batch was written")
        return ScenarioResult(
            stream.name, "inprocess", run, batch_size, stream.count, round(load_seconds, 3), problems=problems
        )
    first = batches[0].started
    last = batches[-1].ended
    window = last - first
    totals, shares = _phase_report(batches)
    records = sum(b.records for b in batches)
    return ScenarioResult(
        scenario=stream.name,
        mode="inprocess",
        run=run,
        batch_size=batch_size,
        records=stream.count,
        load_seconds=round(load_seconds, 3),
        measured_records=records,
        seconds=round(window, 4),
        rows_per_s=round(records / window, 1) if window > 0 else None,
        startup_seconds=round(first - runner.run_started, 4),
        batches=len(batches),
        mean_batch_records=round(records / len(batches), 1),
        seconds_per_batch=round(
            sum(b.ended - b.started + b.phases["poll"] for b in batches) / len(batches), 5
        ),
        phase_seconds=totals,
        phase_share=shares,
        median_batch_seconds=round(statistics.median(b.ended - b.started for b in batches), 5),
        sink_cpu_seconds=round(cpu, 3),
        sink_cpu_share=round(cpu / window, 3) if window > 0 else None,
        sink_cpu_us_per_record=per_record_us(cpu, records),
        pg_cpu_seconds=round(pg_cpu, 3),
        pg_cpu_us_per_record=per_record_us(pg_cpu, records),
        machine_busy_cores=busy_cores(before, after),
        load_average_1m=round(load_average, 2),
        complete=not problems,
        problems=problems,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The child's sink metrics (sums and counts of its batch histograms)."""
    wanted = (
        "pacs_sync_sink_batch_duration_seconds_sum",
        "pacs_sync_sink_batch_duration_seconds_count",
        "pacs_sync_sink_batch_rows_sum",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[name] = float(value)
    return found


def stop_process(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, wait, SIGKILL if it does not stop; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("sink %d did not stop in %.0f s; killing it", process.pid, _STOP_GRACE_S)
            process.kill()
    return process.wait()


@dataclass
class OffsetWatch:
    """What polling a child's committed offsets saw."""

    first_at: float | None = None
    """When the first commit after the baseline was seen."""
    first_count: int = 0
    """The committed total then."""
    last_at: float | None = None
    """When every expected offset was committed."""
    cpu_first: float | None = None
    cpu_last: float | None = None
    machine_first: tuple[float, float] = (0.0, 0.0)
    machine_last: tuple[float, float] = (0.0, 0.0)
    pg_first: dict[int, float] = field(default_factory=dict)
    pg_last: dict[int, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def watch_offsets(
    dsn: str,
    consumer: str,
    baseline: int,
    expected: int,
    processes: Sequence[subprocess.Popen[bytes]],
    timeout_s: float,
) -> OffsetWatch:
    """Poll the committed offsets of ``consumer`` until they add up to ``expected``."""
    conn = await asyncpg.connect(dsn)
    sql = "SELECT coalesce(sum(next_offset), 0) FROM pacs_sync.sync_offsets WHERE consumer = $1"
    watch = OffsetWatch(first_count=baseline)
    database = urlsplit(dsn).path.lstrip("/")
    deadline = time.perf_counter() + timeout_s
    try:
        while True:
            try:
                committed = int(await conn.fetchval(sql, consumer))
            except asyncpg.UndefinedTableError:  # the child has not migrated yet
                committed = baseline
            now = time.perf_counter()
            if committed > baseline and watch.first_at is None:
                watch.first_at, watch.first_count = now, committed
                watch.cpu_first = sum(process_cpu_seconds(p.pid) for p in processes)
                watch.machine_first = machine_cpu()
                watch.pg_first = await backend_cpu(conn, database)
            if committed >= expected:
                watch.last_at = now
                watch.cpu_last = sum(process_cpu_seconds(p.pid) for p in processes)
                watch.machine_last = machine_cpu()
                watch.pg_last = await backend_cpu(conn, database)
                break
            exited = [p.returncode for p in processes if p.poll() is not None]
            if exited:
                watch.problems.append(f"a sink exited early ({exited})")
                break
            if now > deadline:
                watch.problems.append(f"timed out at {committed - baseline} of {expected - baseline} records")
                break
            await asyncio.sleep(OFFSET_POLL_S)
    finally:
        await conn.close()
    return watch


def measure_subprocess(
    bench: Bench,
    names: Names,
    dsn: str,
    run: int,
    batch_size: int,
    stream: Stream,
    baseline: int,
    load_seconds: float,
    workdir: Path,
    sinks: int = 1,
) -> ScenarioResult:
    """``sinks`` child processes in one consumer group (each its own static instance id)."""
    ports = [free_port() for _ in range(sinks)]
    logs = [workdir / f"{names.prefix}-{stream.name}-{i}.stderr" for i in range(sinks)]
    expected = baseline + stream.count
    processes: list[subprocess.Popen[bytes]] = []
    load_average = os.getloadavg()[0]
    started = time.perf_counter()
    for instance, (port, log) in enumerate(zip(ports, logs, strict=True)):
        env = sink_env(bench.bootstrap, names, dsn, batch_size, bench.state_dir, port, instance)
        with log.open("wb") as err:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pacs_sync", "sink"], env=env, stdin=subprocess.DEVNULL, stderr=err
                )
            )
    metrics: dict[str, float] = {}
    problems: list[str] = []
    try:
        watch = asyncio.run(watch_offsets(dsn, names.group, baseline, expected, processes, bench.timeout_s))
        problems += watch.problems
        for process, port in zip(processes, ports, strict=True):
            if process.poll() is None:
                try:
                    for name, value in scrape(port).items():
                        metrics[name] = metrics.get(name, 0.0) + value
                except OSError as exc:
                    problems.append(f"metrics not scraped: {exc}")
    finally:
        codes = [stop_process(p) for p in processes]
    if any(code not in (0, -signal.SIGTERM) for code in codes):
        problems.append(f"a sink exited with {codes}")
    problems += asyncio.run(verify(dsn, stream, names.group, expected))
    if problems:
        problems.append("stderr: " + "\n".join(log.read_text(errors="replace")[-1500:] for log in logs))
    first_at, last_at = watch.first_at, watch.last_at
    window = (last_at - first_at) if first_at is not None and last_at is not None else None
    measured = expected - watch.first_count if window is not None else None
    batches = int(metrics.get("pacs_sync_sink_batch_duration_seconds_count", 0)) or None
    cpu_first, cpu_last = watch.cpu_first, watch.cpu_last
    cpu = (cpu_last - cpu_first) if cpu_first is not None and cpu_last is not None else None
    pg_cpu = cpu_delta(watch.pg_first, watch.pg_last) if window is not None else None
    return ScenarioResult(
        scenario=stream.name,
        mode="subprocess" if sinks == 1 else f"subprocess-{sinks}",
        run=run,
        batch_size=batch_size,
        records=stream.count,
        load_seconds=round(load_seconds, 3),
        measured_records=measured,
        seconds=round(window, 4) if window is not None else None,
        rows_per_s=round(measured / window, 1) if window and measured else None,
        startup_seconds=round(first_at - started, 4) if first_at is not None else None,
        batches=batches,
        mean_batch_records=(
            round(metrics["pacs_sync_sink_batch_rows_sum"] / batches, 1)
            if batches and "pacs_sync_sink_batch_rows_sum" in metrics
            else None
        ),
        seconds_per_batch=(
            round(metrics["pacs_sync_sink_batch_duration_seconds_sum"] / batches, 5) if batches else None
        ),
        phase_seconds=None,
        phase_share=None,
        median_batch_seconds=None,
        sink_cpu_seconds=round(cpu, 3) if cpu is not None else None,
        sink_cpu_share=round(cpu / window, 3) if cpu is not None and window else None,
        sink_cpu_us_per_record=per_record_us(cpu, measured),
        pg_cpu_seconds=round(pg_cpu, 3) if pg_cpu is not None else None,
        pg_cpu_us_per_record=per_record_us(pg_cpu, measured),
        load_average_1m=round(load_average, 2),
        machine_busy_cores=busy_cores(watch.machine_first, watch.machine_last)
        if window is not None
        else None,
        complete=not problems,
        problems=problems,
    )


def measure(
    bench: Bench, mode: str, run: int, batch_size: int, workdir: Path, profile: bool = False
) -> tuple[list[ScenarioResult], dict[str, cProfile.Profile]]:
    """Both scenarios on a fresh database and fresh topics; the database and topics are removed after."""
    names = bench.names(mode, run, batch_size)
    dsn = bench.databases.create(names.database)
    profiles: dict[str, cProfile.Profile] = {}
    results = []
    try:
        create_topics(bench.bootstrap, names)
        baseline = 0
        for stream in (bench.load, bench.changes):
            load_seconds = produce(bench.bootstrap, names, stream)
            logger.info(
                "%s run %d batch %d: %s: %d records pre-loaded in %.1f s",
                mode,
                run,
                batch_size,
                stream.name,
                stream.count,
                load_seconds,
            )
            if mode == "inprocess":
                profiler = cProfile.Profile() if profile else None
                result = measure_inprocess(
                    bench,
                    names,
                    dsn,
                    run,
                    batch_size,
                    stream,
                    baseline + stream.count,
                    load_seconds,
                    profiler,
                )
                if profiler is not None:
                    profiles[stream.name] = profiler
            else:
                sinks = int(mode.split("-")[1]) if "-" in mode else 1
                result = measure_subprocess(
                    bench, names, dsn, run, batch_size, stream, baseline, load_seconds, workdir, sinks
                )
            results.append(result)
            baseline += stream.count
            logger.info(
                "%s run %d batch %d: %s: %s rows/s (%s batches, %s s per batch)%s",
                mode,
                run,
                batch_size,
                stream.name,
                result.rows_per_s,
                result.batches,
                result.seconds_per_batch,
                "" if result.complete else f" INCOMPLETE: {result.problems}",
            )
    finally:
        try:
            bench.databases.drop(names.database)
        except Exception:
            logger.exception("dropping database %s failed", names.database)
        delete_topics(bench.bootstrap, [names.prefix])
    return results, profiles


# ---- profile summary ----


_STEPS = {
    "decode_batch (all)": ("sink/runner.py", "decode_batch"),
    "codec.decode": ("schemas/codec.py", "decode"),
    "fastavro read": ("schemas/codec.py", "_read"),
    "to_row": ("sink/changes.py", "to_row"),
    "position_bytes": ("pacs_sync/lsn.py", "position_bytes"),
    "reduce_by_key": ("sink/changes.py", "reduce_by_key"),
    "SinkRunner._write (all, event-loop thread)": ("sink/runner.py", "_write"),
    "TargetDatabase.write_batch (Python side)": ("sink/target.py", "write_batch"),
    "copy_records_to_table (Python side)": ("asyncpg/connection.py", "copy_records_to_table"),
    "metrics in _write (latency observe)": ("prometheus_client/metrics.py", "observe"),
}


def summarise_profile(profiler: cProfile.Profile, records: int) -> dict[str, Any]:
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    steps: dict[str, dict[str, float]] = {}
    for label, (suffix, function) in _STEPS.items():
        cumulative = 0.0
        calls = 0
        for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in raw.items():
            if name == function and filename.endswith(suffix):
                cumulative = max(cumulative, ct)
                calls += nc
        steps[label] = {
            "seconds": round(cumulative, 4),
            "us_per_record": round(cumulative / records * 1e6, 3) if records else 0.0,
            "calls": calls,
        }
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:20]
    return {
        "records": records,
        "profiled_seconds_event_loop_thread": round(total, 3),
        "steps": steps,
        "top_tottime": [
            {
                "function": f"{Path(filename).name}:{line}({name})",
                "tottime": round(tt, 4),
                "cumtime": round(ct, 4),
                "calls": nc,
            }
            for (filename, line, name), (_cc, nc, tt, ct, _callers) in top
        ],
    }


# ---- clean-up ----


def delete_topics(bootstrap: str, prefixes: Sequence[str]) -> None:
    """Delete every topic of the given prefixes."""
    if not prefixes:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        topics = sorted(
            t for t in admin.list_topics(timeout=30).topics if any(t.startswith(f"{p}.") for p in prefixes)
        )
        if topics:
            for name, future in admin.delete_topics(topics, operation_timeout=30).items():
                try:
                    future.result(timeout=60)
                except KafkaException:
                    logger.exception("deleting topic %s failed", name)
    except KafkaException:
        logger.exception("listing or deleting the benchmark topics failed")


def delete_groups(bootstrap: str, base: str) -> None:
    """Delete the benchmark's consumer groups (static members linger until their session times out)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    for attempt in range(2):
        try:
            listing = admin.list_consumer_groups(request_timeout=30).result(timeout=60)
            groups = sorted(g.group_id for g in listing.valid if g.group_id.startswith(f"{base}-"))
            failed = []
            if groups:
                for name, future in admin.delete_consumer_groups(groups, request_timeout=30).items():
                    try:
                        future.result(timeout=60)
                    except KafkaException:
                        failed.append(name)
            logger.info("deleted %d of %d benchmark consumer groups", len(groups) - len(failed), len(groups))
            if not failed:
                return
            if attempt == 0:
                logger.info("waiting for the session timeout of %d static member(s)", len(failed))
                time.sleep(16)
            else:
                logger.warning("consumer groups not deleted: %s", ", ".join(failed))
        except KafkaException:
            logger.warning("listing or deleting the benchmark consumer groups failed", exc_info=True)
            return


def cleanup(bench: Bench) -> None:
    for name in list(bench.databases.created):
        try:
            bench.databases.drop(name)
        except Exception:
            logger.exception("dropping database %s failed", name)
    delete_topics(bench.bootstrap, bench.prefixes)
    delete_groups(bench.bootstrap, bench.base)


# ---- report ----


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarise(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Medians per mode, scenario and batch size (complete measurements only), against the targets."""
    out: dict[str, Any] = {}
    for mode in sorted({r.mode for r in results}):
        out[mode] = {}
        for scenario in SCENARIOS:
            by_size: dict[str, Any] = {}
            for size in sorted({r.batch_size for r in results}):
                chosen = [r for r in results if (r.mode, r.scenario, r.batch_size) == (mode, scenario, size)]
                ok = [r for r in chosen if r.complete]
                if not chosen:
                    continue
                median = _median([r.rows_per_s for r in ok])
                shares = None
                if ok and ok[0].phase_share is not None:
                    shares = {
                        p: _median([(r.phase_share or {}).get(p) for r in ok]) for p in ok[0].phase_share
                    }
                by_size[str(size)] = {
                    "measurements": len(chosen),
                    "complete": len(ok),
                    "median_rows_per_s": median,
                    "median_seconds": _median([r.seconds for r in ok]),
                    "median_seconds_per_batch": _median([r.seconds_per_batch for r in ok]),
                    "median_mean_batch_records": _median([r.mean_batch_records for r in ok]),
                    "median_batches": _median([r.batches for r in ok]),
                    "median_sink_cpu_share": _median([r.sink_cpu_share for r in ok]),
                    "median_sink_cpu_us_per_record": _median([r.sink_cpu_us_per_record for r in ok]),
                    "median_pg_cpu_us_per_record": _median([r.pg_cpu_us_per_record for r in ok]),
                    "median_load_average_1m": _median([r.load_average_1m for r in ok]),
                    "median_machine_busy_cores": _median([r.machine_busy_cores for r in ok]),
                    "median_phase_share": shares,
                    "target_rows_per_s": TARGETS_ROWS_PER_S[scenario],
                    "met_target": median is not None and median >= TARGETS_ROWS_PER_S[scenario],
                }
            best = max(
                (v["median_rows_per_s"] for v in by_size.values() if v["median_rows_per_s"] is not None),
                default=None,
            )
            out[mode][scenario] = {
                "by_batch_size": by_size,
                "best_median_rows_per_s": best,
                "target_rows_per_s": TARGETS_ROWS_PER_S[scenario],
                "met_target_with_best_batch_size": best is not None and best >= TARGETS_ROWS_PER_S[scenario],
            }
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("asyncpg", "confluent-kafka", "fastavro", "prometheus-client"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def server_versions(stack: LocalStack) -> dict[str, str | None]:
    return {"postgresql": stack.postgres.ping(), "kafka": stack.kafka.ping(timeout_s=10)}


def render(data: dict[str, Any]) -> str:
    lines = [
        "",
        f"sink throughput: Benton size ({data['config']['load_records']:,} load records, "
        f"{data['config']['update_records']:,} update-heavy records), {data['machine']['cpu_count']} cores, "
        f"Python {data['machine']['python']}",
        "",
        f"{'mode':<12} {'scenario':<13} {'batch':>6} {'run':>3} {'rows/s':>9} {'secs':>7} {'batches':>7} "
        f"{'s/batch':>8} {'rows/b':>7} {'cpu':>5} {'box':>5} {'us/rec':>6} {'pg us':>6} {'load':>5} "
        f"{'ok':>3}",
    ]
    for r in data["runs"]:
        lines.append(
            f"{r['mode']:<12} {r['scenario']:<13} {r['batch_size']:>6} {r['run']:>3} "
            f"{r['rows_per_s'] or 0:>9,.0f} {r['seconds'] or 0:>7.2f} {r['batches'] or 0:>7} "
            f"{r['seconds_per_batch'] or 0:>8.4f} {r['mean_batch_records'] or 0:>7,.0f} "
            f"{r['sink_cpu_share'] or 0:>5.2f} {r['machine_busy_cores'] or 0:>5.2f} "
            f"{r['sink_cpu_us_per_record'] or 0:>6.1f} {r['pg_cpu_us_per_record'] or 0:>6.1f} "
            f"{r['load_average_1m'] or 0:>5.2f} {'yes' if r['complete'] else 'NO':>3}"
        )
    lines.append(
        "cpu: cores the sink process(es) used in the window; box: cores busy machine-wide (inprocess: "
        "incl. the 1.5 s idle tail); us/rec, pg us: CPU µs per record of the sink process(es) and of "
        "their PostgreSQL backends; load: 1-minute load average at the start (other work on the box)"
    )
    lines.append("")
    lines.append(
        f"{'mode':<12} {'scenario':<13} {'batch':>6} {'median rows/s':>14} {'target':>8} {'met':>4}  phases"
    )
    for mode, scenarios in data["medians"].items():
        for scenario, summary in scenarios.items():
            for size, s in summary["by_batch_size"].items():
                shares = s.get("median_phase_share") or {}
                phase_text = " ".join(f"{k} {v:.0%}" for k, v in shares.items() if v) if shares else ""
                lines.append(
                    f"{mode:<12} {scenario:<13} {size:>6} {s['median_rows_per_s'] or 0:>14,.0f} "
                    f"{s['target_rows_per_s']:>8,.0f} {'yes' if s['met_target'] else 'NO':>4}  {phase_text}"
                )
    for name, prof in (data.get("profile") or {}).items():
        lines.append("")
        lines.append(f"profile ({name}, event-loop thread, µs per record):")
        for label, step in prof["steps"].items():
            lines.append(f"  {label:<45} {step['us_per_record']:>8.2f}")
    return "\n".join(lines) + "\n"


# ---- main ----


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (default 3)")
    parser.add_argument(
        "--batch-sizes",
        default="500,5000,20000",
        help="comma-separated sink batch sizes (default 500,5000,20000)",
    )
    parser.add_argument(
        "--modes",
        default="inprocess,subprocess",
        help="comma-separated: inprocess, subprocess, subprocess-2 (two sink processes in one group); "
        "default inprocess,subprocess",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "bench-results" / "sink.json",
        help="JSON results file (default bench-results/sink.json)",
    )
    parser.add_argument("--seed", type=int, default=1, help="data seed (default 1)")
    parser.add_argument("--updates-per-key", type=int, default=3, help="update rounds per key (default 3)")
    parser.add_argument(
        "--delete-fraction", type=float, default=0.02, help="keys deleted after the updates (default 0.02)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more in-process measurement under cProfile (largest batch)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for one sink run (default 600)")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--batch-sizes: comma-separated whole numbers")
    if not args.batch_sizes or any(not 1 <= s <= 200_000 for s in args.batch_sizes):
        parser.error("--batch-sizes: each between 1 and 200000 (the sink_batch_size limits)")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"inprocess", "subprocess", "subprocess-2"}:
        parser.error("--modes: inprocess, subprocess, subprocess-2 (comma-separated)")
    if args.runs < 1 or args.updates_per_key < 0 or not 0 <= args.delete_fraction <= 1:
        parser.error("--runs >= 1, --updates-per-key >= 0, 0 <= --delete-fraction <= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("sink").setLevel(logging.WARNING)
    output = args.output.resolve()
    stack = LocalStack(StackSettings.load())
    bootstrap = stack.settings.kafka_bootstrap_servers
    if stack.kafka.ping(timeout_s=10) is None or stack.postgres.ping() is None:
        logger.error("the local stack does not answer: start it with `pacs-sync stack up`")
        return 2
    base = f"benchsink-{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{base}-"))
    codec = AvroCodec(SchemaRegistry.from_package())
    started = time.perf_counter()
    load, changes = build_streams(codec, args.seed, args.updates_per_key, args.delete_fraction)
    logger.info(
        "built %d load and %d update-heavy records in %.1f s",
        load.count,
        changes.count,
        time.perf_counter() - started,
    )
    bench = Bench(bootstrap, base, Databases(stack), load, changes, workdir / "state", args.timeout)
    results: list[ScenarioResult] = []
    exit_code = 0
    try:
        for run in range(1, args.runs + 1):
            for batch_size in args.batch_sizes:
                for mode in args.modes:
                    scenario_results, _ = measure(bench, mode, run, batch_size, workdir)
                    results.extend(scenario_results)
        profile: dict[str, Any] = {}
        if args.profile:
            profiled, profilers = measure(bench, "inprocess", 0, max(args.batch_sizes), workdir, profile=True)
            for result in profiled:
                if result.scenario in profilers:
                    profile[result.scenario] = {
                        "batch_size": result.batch_size,
                        "rows_per_s_under_profiler": result.rows_per_s,
                        **summarise_profile(profilers[result.scenario], result.records),
                    }
                    profilers[result.scenario].dump_stats(str(workdir / f"sink-{result.scenario}.prof"))
        data = {
            "benchmark": "sink",
            "timestamp": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "load_average_at_end": os.getloadavg(),
                "note": "Kafka, PostgreSQL, the sink and this script share these cores",
            },
            "versions": {**versions(), **server_versions(stack)},
            "config": {
                "runs": args.runs,
                "batch_sizes": args.batch_sizes,
                "modes": args.modes,
                "seed": args.seed,
                "dataset": "Benton size: " + ", ".join(f"{e} {n:,}" for e, n in load.counts.items()),
                "load_records": load.count,
                "update_records": changes.count,
                "updates_per_key": args.updates_per_key,
                "delete_fraction": args.delete_fraction,
                "deletes": changes.deletes,
                "mean_value_bytes": {
                    "batch_load": load.mean_value_bytes,
                    "update_heavy": changes.mean_value_bytes,
                },
                "topic_partitions": PARTITIONS,
                "topic_compression": "lz4",
                "sink_batch_max_wait_s": SinkSettings.model_fields["sink_batch_max_wait_s"].default,
                "kafka_bootstrap_servers": bootstrap,
                "definition": {
                    "inprocess": "rows/s = records / (last batch committed - first batch's poll returned); "
                    "phases: poll (consumer.poll_batch, worker thread), decode (decode_batch incl. reduce), "
                    "lock_stage (advisory lock, CREATE TEMP TABLE IF NOT EXISTS, TRUNCATE), copy (COPY into "
                    "the temp table), upsert (INSERT ... ON CONFLICT ... RETURNING, savepoint release), "
                    "offsets (sync_offsets executemany), commit, other (metrics and bookkeeping in _write)",
                    "subprocess": "rows/s = records committed after the first observed commit / (all offsets "
                    "committed - first observed commit), polled every 10 ms in pacs_sync.sync_offsets; "
                    "seconds per batch from the child's pacs_sync_sink_batch_duration_seconds",
                },
            },
            "runs": [asdict(r) for r in results],
            "medians": summarise(results),
            "targets_rows_per_s": TARGETS_ROWS_PER_S,
            "profile": profile or None,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        sys.stdout.write(render(data))
        sys.stdout.write(f"results written to {output}\n")
        if profile:
            sys.stdout.write(f"cProfile data kept in {workdir}\n")
        if not all(r.complete for r in results):
            logger.error("at least one measurement was incomplete; see the log above")
            exit_code = 1
    finally:
        cleanup(bench)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
