"""Stream-processor throughput on the local Kafka: the Faust worker against a plain confluent-kafka loop.

A script, not a pytest test::

    .venv/bin/python tests/benchmarks/bench_processor.py [--events 100000] [--runs 3] \
        [--output bench-results/processor.json] [--kinds faust,plain,faust-2-workers] \
        [--profile] [--py-spy PATH] [--faust-env NAME=VALUE ...] [--input-compression none] \
        [--timeout 300]

What it does, against the running local Kafka (nothing is started or stopped but its own processes):

1. Builds N realistic ``PropertyValue`` change events once, like the integration test's ``event(...)``:
   Avro single-object encoding, keyed by ``PropertyValueKey``, a mix of 1 insert (after image only) to
   3 updates (before and after images), every one valid, so each yields exactly one clean record.
2. Per run, each measurement gets a topic prefix of its own (``benchproc-<pid>-r<run>-<kind>``), its
   input topic ``<prefix>.pacs.dbo.PropertyValue`` (3 partitions) pre-loaded with the N events, and the
   output topic ``<prefix>tf.valuations`` pre-created (3 partitions, compacted, as the worker makes it).
   An in-process consumer assigned to every output partition (and the dead-letter topic) from the
   beginning records when each output record arrives. Events/s = N / (last arrival - first arrival),
   so start-up (imports, topic checks, the consumer-group join and Faust's rebalance) is excluded;
   start-up (process start to first arrival) and the wall time (process start to last arrival) are
   reported too. A measurement is complete when every key arrived and nothing was dead-lettered;
   re-emitted records (a rebalance re-processes unacknowledged events) are counted as duplicates.
   The input is uncompressed by default: the producer stage writes lz4, which the worker's aiokafka
   reads only with cramjam installed (``aiokafka[lz4]``); ``--input-compression lz4`` measures that.

   * ``faust``: one ``python -m pacs_sync processor`` worker (its production entry point).
   * ``plain``: this script as a child process running a confluent-kafka ``Consumer`` (a group of its
     own, earliest) + the same :class:`~stream_processors.handling.EventHandler` + the same
     :class:`~stream_processors.app.OutputProducer` (idempotent, ``acks=all``), flushing per batch of
     up to 1000 events and committing the batch's offsets afterwards: Faust's delivery discipline
     without Faust. Its own timing (first consumed message to the final flush) is reported too.
   * ``faust-2-workers``: two workers in one consumer group on the 3-partition input (one of them gets
     two partitions, so 1.5x is the ceiling; both share this machine's cores with the broker).

3. ``--profile``: one more Faust run with the worker in-process under cProfile, enabled from the first
   output arrival to the last (a real-time signal each), then a summary: inclusive time of our
   ``handle()`` / ``OutputProducer.send`` / ``flush`` / the metrics callback, the remainder (Faust, mode,
   aiokafka, asyncio) by package, and the top functions. ``--py-spy PATH``: the same window sampled by
   py-spy (``--nonblocking``, no tracing overhead) against a normal worker process.
4. Prints a table, writes JSON (machine, settings, every run, medians, the Faust/plain ratio, the
   5,000 events/s per worker target, the 10,000 stretch target and whether the medians met them),
   and deletes every topic and consumer group whose name starts with ``benchproc-<pid>-``.

Variants without code changes: ``--faust-env`` passes environment to the Faust workers only, e.g.
``PACS_BATCH_MAX_EVENTS=5000`` (take size), Faust's ``STREAM_BUFFER_MAXSIZE`` / ``BROKER_MAX_POLL_RECORDS``,
``PACS_PROCESSING_GUARANTEE=exactly_once`` (Faust's transactional mode) or ``PACS_EVENT_LOOP=asyncio``
(the worker runs uvloop by default). The JSON records the worker's processing guarantee and event loop
(``config.faust_processing_guarantee`` / ``config.faust_event_loop``, from ``--faust-env`` or the
defaults of :class:`~stream_processors.settings.ProcessorSettings`).

Child modes (used by the script itself): ``--plain-worker`` and ``--profile-worker STATS_PATH`` read
the ``PACS_*`` settings from the environment like the worker does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from schemas.codec import AvroCodec, SchemaRegistry

logger = logging.getLogger("bench_processor")

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET_EVENTS_PER_S = 5_000.0
"""Per worker."""
STRETCH_EVENTS_PER_S = 10_000.0
PARTITIONS = 3
TABLE = "PropertyValue"
ENTITY = "valuations"
VALIDATION_AS_OF = "2025-06-30"
PLAIN_BATCH = 1000
"""Events per batch of the plain loop: the worker's default ``batch_max_events``."""
PLAIN_WITHIN_S = 0.05
"""Longest wait to fill a plain batch: the worker's default ``batch_within_s``."""
_STOP_GRACE_S = 60.0
_PROFILE_ON = signal.SIGRTMIN + 1
_PROFILE_OFF = signal.SIGRTMIN + 2
"""mode's Worker owns SIGUSR1/SIGUSR2 (and SIGINT/SIGTERM): real-time signals switch the profiler."""


# ---- the events ----


def _source(lsn: int, ts: datetime) -> dict[str, Any]:
    return {
        "connector": "terrafusion-pacs-sync",
        "version": "bench",
        "db": "pacs",
        "schema": "dbo",
        "table": TABLE,
        "capture_instance": f"dbo_{TABLE}",
        "commit_lsn": f"0000002a:{lsn:08x}:0001",
        "change_lsn": f"0000002a:{lsn - 1:08x}:0001",
        "event_serial_no": 2,
        "commit_ts_ms": ts,
        "snapshot": "false",
    }


def valuation_row(vid: int, bump: int = 0) -> dict[str, Any]:
    """A valid PACS valuation: assessed = land + improvement, market a little above."""
    land = Decimal(50_000 + (vid * 37) % 200_000 + bump) + Decimal("0.25")
    improvement = Decimal(100_000 + (vid * 91) % 400_000) + Decimal("0.50")
    assessed = land + improvement
    return {
        "PropertyValueID": vid,
        "PropertyID": vid % 20_000 + 1,
        "TaxYear": 2020 + vid % 5,
        "AssessedValue": assessed,
        "MarketValue": assessed + Decimal("10000.00"),
        "LandValue": land,
        "ImprovementValue": improvement,
    }


def build_events(codec: AvroCodec, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` keyed change events (unique keys): 1 in 4 an insert, the others updates."""
    now = datetime.now(tz=UTC)
    events = []
    for vid in range(1, count + 1):
        update = vid % 4 != 0
        value = {
            "before": valuation_row(vid) if update else None,
            "after": valuation_row(vid, bump=1000 if update else 0),
            "op": "u" if update else "c",
            "source": _source(10 + vid, now),
            "ts_ms": now,
        }
        events.append(
            (
                codec.encode(f"pacs.dbo.{TABLE}Key", {"PropertyValueID": vid}),
                codec.encode(f"pacs.dbo.{TABLE}Envelope", value),
            )
        )
    return events


# ---- topics and names ----


@dataclass(frozen=True)
class Names:
    """Topic names and ids of one measurement, derived as the worker derives them."""

    bootstrap: str
    prefix: str

    @property
    def input_topic(self) -> str:
        return f"{self.prefix}.pacs.dbo.{TABLE}"

    @property
    def output_prefix(self) -> str:
        return f"{self.prefix}tf"

    @property
    def output_topic(self) -> str:
        return f"{self.output_prefix}.{ENTITY}"

    @property
    def dlq(self) -> str:
        return f"{self.output_prefix}.dlq"

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-app"

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """The worker's environment: the integration test's PACS_* variables with our names."""
        return {
            **os.environ,
            "PACS_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PACS_TOPIC_PREFIX": self.prefix,
            "PACS_DB_NAME": "pacs",
            "PACS_DB_SCHEMA": "dbo",
            "PACS_OUTPUT_PREFIX": self.output_prefix,
            "PACS_PROCESSOR_APP_ID": self.app_id,
            "PACS_OUTPUT_PARTITIONS": str(PARTITIONS),
            "PACS_METRICS_PORT": "0",
            "PACS_VALIDATION_AS_OF": VALIDATION_AS_OF,
            "PACS_LOG_LEVEL": "WARNING",
            **extra,
        }


def prepare_topics(names: Names, events: Sequence[tuple[bytes, bytes]], compression: str) -> float:
    """Create the input, output and dead-letter topics and load the events; return the load seconds."""
    ensure_topics(
        names.bootstrap,
        [
            TopicSpec(names.input_topic, PARTITIONS),
            TopicSpec(names.output_topic, PARTITIONS, compacted=True),
            TopicSpec(names.dlq, 1),
        ],
    )
    started = time.perf_counter()
    # The producer stage's settings (idempotent, linger 5 ms) but for the compression: the producer
    # stage writes lz4, which the Faust worker's aiokafka cannot read without cramjam (aiokafka[lz4]).
    producer = Producer(
        {
            "bootstrap.servers": names.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": compression,
            "queue.buffering.max.messages": 1_000_000,
            "log_level": 3,
        }
    )
    for key, value in events:
        while True:
            try:
                producer.produce(names.input_topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} input events not delivered to {names.input_topic}")
    return time.perf_counter() - started


# ---- output arrival times ----


class OutputWatcher:
    """Reads the output and dead-letter topics from the beginning and stamps when records arrive."""

    def __init__(self, names: Names, expected: int) -> None:
        self.names = names
        self.expected = expected
        self.first: float | None = None
        self.last: float | None = None
        self.outputs = 0
        self.dead_letters = 0
        self.keys: set[bytes] = set()
        self.errors: list[str] = []
        self.done = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._on_first: list[Callable[[], None]] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": names.bootstrap,
                "group.id": f"{names.prefix}-watch-{uuid.uuid4().hex[:8]}",  # assign() only: never joins
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_uncommitted",
                "fetch.wait.max.ms": 100,
                "log_level": 3,
            }
        )
        self._thread = threading.Thread(target=self._run, name="output-watcher", daemon=True)

    def on_first(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the watcher thread) right after the first arrival."""
        self._on_first.append(callback)

    def start(self) -> None:
        partitions = [TopicPartition(self.names.output_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        partitions.append(TopicPartition(self.names.dlq, 0, OFFSET_BEGINNING))
        self._consumer.assign(partitions)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the output watcher did not start")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                messages = self._consumer.consume(num_messages=10_000, timeout=0.05)
                now = time.perf_counter()
                self._ready.set()
                fresh = False
                for message in messages:
                    if message.error() is not None:
                        self.errors.append(str(message.error()))
                        continue
                    fresh = True
                    if message.topic() == self.names.output_topic:
                        self.outputs += 1
                        self.keys.add(message.key() or b"")
                    else:
                        self.dead_letters += 1
                if not fresh:
                    continue
                if self.first is None:
                    self.first = now
                    for callback in self._on_first:
                        callback()
                self.last = now
                # Distinct keys: after a rebalance some records are re-emitted (at least once).
                if len(self.keys) + self.dead_letters >= self.expected:
                    self.done.set()
        finally:
            self._ready.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


# ---- child processes ----


def cpu_seconds(pid: int) -> float:
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


def stop_process(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, wait, SIGKILL if it does not stop; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("process %d did not stop in %.0f s; killing it", process.pid, _STOP_GRACE_S)
            process.kill()
    return process.wait()


@dataclass
class Measurement:
    """One measurement: a worker kind, N events, the arrival window."""

    kind: str
    run: int
    prefix: str
    workers: int
    events: int
    outputs: int
    distinct_keys: int
    duplicates: int
    """Outputs re-emitted (at least once: a rebalance or restart re-processes unacknowledged events)."""
    dead_letters: int
    load_seconds: float
    startup_seconds: float | None
    """Worker process start to the first output arrival."""
    processing_seconds: float | None
    """First to last output arrival."""
    events_per_s: float | None
    """N / processing_seconds."""
    wall_seconds: float | None
    """Worker process start to the last output arrival."""
    worker_cpu_seconds: float | None
    """CPU seconds the worker process(es) used between the first and the last arrival."""
    worker_cpu_seconds_each: list[float] | None
    """The same per worker process."""
    worker_cpu_share: float | None
    """worker_cpu_seconds / processing_seconds (1.0 = one core busy all the time)."""
    machine_busy_cores: float | None
    """Cores busy machine-wide in the same window (broker, worker(s), this script; of cpu_count)."""
    rebalance_log_lines: int
    """Worker log lines mentioning a rebalance (a worker joining late: a stop-the-world pause)."""
    complete: bool
    exit_codes: list[int]
    extra_env: dict[str, str] = field(default_factory=dict)
    inner: dict[str, Any] | None = None
    """The plain loop's own timing (first consumed message to final flush)."""
    stderr_tail: str = ""


@dataclass
class Bench:
    """What every measurement shares."""

    bootstrap: str
    base: str
    events: list[tuple[bytes, bytes]]
    workdir: Path
    timeout_s: float
    faust_env: dict[str, str]
    input_compression: str
    prefixes: list[str] = field(default_factory=list)

    def names(self, run: int, kind: str) -> Names:
        prefix = f"{self.base}-r{run}-{kind}-{uuid.uuid4().hex[:4]}"
        self.prefixes.append(prefix)  # before use: clean-up deletes its topics whatever happens
        return Names(self.bootstrap, prefix)


def measure(
    bench: Bench,
    kind: str,
    run: int,
    commands: list[list[str]],
    *,
    extra_env: dict[str, str] | None = None,
    on_first: Callable[[list[subprocess.Popen[bytes]]], None] | None = None,
    on_done: Callable[[list[subprocess.Popen[bytes]]], None] | None = None,
    wait_for_exit: bool = False,
) -> Measurement:
    """Pre-load the events, start the processes, stamp the output arrivals, stop the processes."""
    names = bench.names(run, kind)
    extra = dict(extra_env or {})
    count = len(bench.events)
    load_seconds = prepare_topics(names, bench.events, bench.input_compression)
    watcher = OutputWatcher(names, count)
    watcher.start()
    logs = [bench.workdir / f"{names.prefix}-{i}.stderr" for i in range(len(commands))]
    processes: list[subprocess.Popen[bytes]] = []
    cpu_at_first: list[float] | None = None
    machine_at_first = machine_at_last = (0.0, 0.0)
    first_seen = threading.Event()
    watcher.on_first(first_seen.set)
    started = time.perf_counter()
    try:
        for command, log in zip(commands, logs, strict=True):
            with log.open("wb") as err:
                processes.append(
                    subprocess.Popen(
                        command,
                        env=names.env(extra),
                        cwd=bench.workdir,  # Faust writes its <app id>-data directory into the cwd
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE if wait_for_exit else subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        deadline = started + bench.timeout_s
        while not watcher.done.wait(0.02):
            if cpu_at_first is None and first_seen.is_set():
                cpu_at_first = [cpu_seconds(p.pid) for p in processes]
                machine_at_first = machine_cpu()
                if on_first is not None:
                    on_first(processes)
            if time.perf_counter() > deadline:
                logger.error("%s run %d: timed out after %.0f s", kind, run, bench.timeout_s)
                break
            if all(p.poll() is not None for p in processes) and not wait_for_exit:
                logger.error("%s run %d: the worker exited early", kind, run)
                break
        cpu_at_last = [cpu_seconds(p.pid) for p in processes]
        machine_at_last = machine_cpu()
        if cpu_at_first is None and first_seen.is_set():
            cpu_at_first = cpu_at_last  # everything arrived within one poll
            machine_at_first = machine_at_last
            if on_first is not None:
                on_first(processes)
        if on_done is not None and watcher.done.is_set():
            on_done(processes)
    finally:
        inner: dict[str, Any] | None = None
        exit_codes = []
        for process in processes:
            if wait_for_exit:
                try:
                    out, _ = process.communicate(timeout=_STOP_GRACE_S)
                    lines = out.decode(errors="replace").strip().splitlines()
                    inner = json.loads(lines[-1]) if lines else None
                except (subprocess.TimeoutExpired, json.JSONDecodeError):
                    logger.exception("%s run %d: no result from the child", kind, run)
            exit_codes.append(stop_process(process))
        watcher.close()
    log_texts = [log.read_text(errors="replace") for log in logs]
    tail = "\n".join(text[-1500:] for text in log_texts).strip()
    rebalance_lines = sum(line.count("rebalanc") for text in log_texts for line in text.splitlines())
    first, last = watcher.first, watcher.last
    processing = (last - first) if first is not None and last is not None else None
    each = [b - a for a, b in zip(cpu_at_first, cpu_at_last, strict=True)] if cpu_at_first else None
    cpu = sum(each) if each is not None else None
    complete = watcher.done.is_set() and len(watcher.keys) == count and watcher.dead_letters == 0
    jiffies = machine_at_last[1] - machine_at_first[1]
    busy_cores = (
        (machine_at_last[0] - machine_at_first[0]) / jiffies * (os.cpu_count() or 1) if jiffies else None
    )
    if not complete:
        logger.error(
            "%s run %d incomplete: %d outputs (%d distinct keys), %d dead letters of %d events; stderr:\n%s",
            kind,
            run,
            watcher.outputs,
            len(watcher.keys),
            watcher.dead_letters,
            count,
            tail,
        )
    return Measurement(
        kind=kind,
        run=run,
        prefix=names.prefix,
        workers=len(commands),
        events=count,
        outputs=watcher.outputs,
        distinct_keys=len(watcher.keys),
        duplicates=watcher.outputs - len(watcher.keys),
        dead_letters=watcher.dead_letters,
        load_seconds=round(load_seconds, 3),
        startup_seconds=_round(first - started if first is not None else None),
        processing_seconds=_round(processing),
        events_per_s=round(count / processing, 1) if processing else None,
        wall_seconds=_round(last - started if last is not None else None),
        worker_cpu_seconds=_round(cpu),
        worker_cpu_seconds_each=[round(c, 3) for c in each] if each is not None else None,
        worker_cpu_share=round(cpu / processing, 3) if cpu is not None and processing else None,
        machine_busy_cores=_round(busy_cores, 3),
        rebalance_log_lines=rebalance_lines,
        complete=complete,
        exit_codes=exit_codes,
        extra_env=extra,
        inner=inner,
        stderr_tail="" if complete else tail,
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def worker_command() -> list[str]:
    return [sys.executable, "-m", "pacs_sync", "processor"]


def self_command(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# ---- the plain confluent-kafka loop (child mode) ----


def plain_worker_main(expected: int) -> int:
    """Consume, handle, produce, flush per batch, commit: no Faust. Prints its timing as JSON."""
    from prometheus_client import CollectorRegistry

    from pacs_sync.logging import configure_logging
    from pacs_sync.metrics import ProcessorMetrics
    from stream_processors.app import OutputProducer, dead_letter_topic, input_topic, output_topic
    from stream_processors.handling import EventHandler, Outcome
    from stream_processors.settings import ProcessorSettings

    settings = ProcessorSettings.load()
    configure_logging(settings.log_level)
    codec = AvroCodec(SchemaRegistry.from_package())
    metrics = ProcessorMetrics.create(CollectorRegistry())
    as_of = date.fromisoformat(settings.validation_as_of) if settings.validation_as_of else None
    handler = EventHandler(
        codec, ENTITY, output_topic(settings, ENTITY), dead_letter_topic(settings), as_of=as_of
    )
    output = OutputProducer(settings.kafka_bootstrap_servers)

    def record(outcome: Outcome) -> None:  # the worker's metrics callback, as in create_app
        metrics.processed.labels(ENTITY, outcome.outcome).inc()
        for violation in outcome.violations:
            metrics.violations.labels(ENTITY, violation.rule_id).inc()
        if outcome.commit_time is not None:
            lag = (datetime.now(tz=UTC) - outcome.commit_time).total_seconds()
            metrics.latency.labels(ENTITY).observe(max(lag, 0.0))

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.processor_app_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    consumer.subscribe([input_topic(settings, TABLE)])
    processed = batches = 0
    first: float | None = None
    cpu_first = 0.0
    try:
        while processed < expected:
            messages = consumer.consume(num_messages=PLAIN_BATCH, timeout=PLAIN_WITHIN_S)
            if not messages:
                continue
            if first is None:
                first = time.perf_counter()
                cpu_first = time.process_time()
            for message in messages:
                if message.error() is not None:
                    raise KafkaException(message.error())
                outcome = handler.handle(
                    message.key(),
                    message.value(),
                    topic=message.topic() or "",
                    partition=message.partition() or 0,
                    offset=message.offset() or 0,
                )
                output.send(outcome.records)
                record(outcome)
                processed += 1
            output.flush()  # outputs are in Kafka before the batch's offsets are committed
            consumer.commit(asynchronous=True)
            batches += 1
        ended = time.perf_counter()
        cpu = time.process_time() - cpu_first
    finally:
        consumer.close()
    seconds = ended - first if first is not None else 0.0
    result = {
        "processed": processed,
        "batches": batches,
        "seconds": round(seconds, 4),
        "events_per_s": round(processed / seconds, 1) if seconds else None,
        "cpu_seconds": round(cpu, 4),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ---- profiling ----


def profile_worker_main(stats_path: Path) -> int:
    """The worker in-process (as serve_processor builds it) with cProfile switched by signals."""
    import cProfile

    import faust
    from prometheus_client import CollectorRegistry

    from pacs_sync.logging import configure_logging
    from pacs_sync.metrics import ProcessorMetrics
    from stream_processors.app import create_app
    from stream_processors.runner import install_event_loop
    from stream_processors.settings import ProcessorSettings

    settings = ProcessorSettings.load()
    configure_logging(settings.log_level)
    install_event_loop(settings.event_loop)  # as serve_processor does
    app = create_app(settings, metrics=ProcessorMetrics.create(CollectorRegistry()))
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    profiler = cProfile.Profile()

    def enable(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def disable(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(str(stats_path))

    signal.signal(_PROFILE_ON, enable)
    signal.signal(_PROFILE_OFF, disable)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return 0


def _key_text(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    path = filename
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line}({name})"


_OURS = {
    "handle()": ("stream_processors/handling.py", "handle"),
    "OutputProducer.send": ("stream_processors/app.py", "send"),
    "OutputProducer.flush": ("stream_processors/app.py", "flush"),
    "metrics record()": ("stream_processors/app.py", "record"),
}
_INSIDE_HANDLE = {
    "AvroCodec.decode": ("schemas/codec.py", "decode"),
    "process_event": ("stream_processors/validation.py", "process_event"),
    "AvroCodec.encode": ("schemas/codec.py", "encode"),
}


def _package_of(key: tuple[str, int, str]) -> str:
    filename, _line, name = key
    if filename == "~":
        if "epoll" in name or "select" in name:
            return "idle (epoll wait)"
        if "cimpl" in name:
            return "confluent_kafka (C)"
        return "builtins (unattributed)"
    for package in ("faust", "mode", "aiokafka", "asyncio", "prometheus_client", "fastavro"):
        if f"/{package}/" in filename:
            return package
    for package in ("stream_processors", "schemas", "pacs_sync"):
        if f"/{package}/" in filename:
            return package
    return "other python"


def summarise_profile(stats_path: Path, events: int, window_s: float | None) -> dict[str, Any]:
    """Inclusive time of our code, the remainder by package, and the top functions."""
    stats = pstats.Stats(str(stats_path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt)  # type: ignore[attr-defined]

    def inclusive(suffix: str, name: str) -> tuple[float, int]:
        found = [(float(v[3]), int(v[1])) for k, v in raw.items() if k[0].endswith(suffix) and k[2] == name]
        return max(found) if found else (0.0, 0)

    handled = inclusive("stream_processors/handling.py", "handle")[1]
    per_event = max(handled, 1)
    ours = {label: inclusive(*where)[0] for label, where in _OURS.items()}
    inside = {label: inclusive(*where)[0] for label, where in _INSIDE_HANDLE.items()}
    by_package: dict[str, float] = {}
    for key, value in raw.items():
        package = _package_of(key)
        by_package[package] = by_package.get(package, 0.0) + value[2]
    idle = by_package.pop("idle (epoll wait)", 0.0)
    flush_wait = sum(v[2] for k, v in raw.items() if k[0] == "~" and "flush' of 'cimpl.Producer" in k[2])
    ours_total = sum(ours.values())
    # What is neither ours nor the epoll wait: Faust's stream/event machinery, aiokafka's fetcher,
    # mode, asyncio and the builtins they call (by tottime, minus our code's own share of each).
    ours_tottime = sum(
        v[2]
        for k, v in raw.items()
        if _package_of(k) in {"stream_processors", "schemas", "pacs_sync", "fastavro", "prometheus_client"}
    )
    machinery = max(total - idle - ours_total, 0.0)
    busy = total - idle

    def row(seconds: float) -> dict[str, float]:
        return {
            "seconds": round(seconds, 3),
            "share_of_busy": round(seconds / busy, 3) if busy else 0.0,
            "us_per_event": round(seconds / per_event * 1e6, 1),
        }

    top_tottime = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:25]
    top_cumtime = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[:40]
    return {
        "stats_file": str(stats_path),
        "events_handled_while_profiling": handled,
        "events_in_run": events,
        "profiled_window_seconds": _round(window_s),
        "profiled_total_seconds": round(total, 3),
        "idle_epoll_seconds": round(idle, 3),
        "busy_seconds": round(busy, 3),
        "inclusive": {label: row(seconds) for label, seconds in ours.items()},
        "inside_handle": {label: row(seconds) for label, seconds in inside.items()},
        "flush_blocked_in_librdkafka_seconds": round(flush_wait, 3),
        "faust_aiokafka_mode_asyncio_remainder": row(machinery),
        "tottime_by_package": {
            name: row(seconds) for name, seconds in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "our_code_tottime_seconds": round(ours_tottime, 3),
        "top_tottime": [
            f"{v[2]:8.3f}s tot {v[3]:8.3f}s cum {v[1]:>9} calls  {_key_text(k)}" for k, v in top_tottime
        ],
        "top_cumtime": [
            f"{v[3]:8.3f}s cum {v[2]:8.3f}s tot {v[1]:>9} calls  {_key_text(k)}" for k, v in top_cumtime
        ],
    }


def _frames(line: str) -> tuple[list[str], int] | None:
    stack, _, count = line.rpartition(" ")
    if not stack or not count.isdigit():
        return None  # a torn sample (--nonblocking reads the stack while it changes)
    return stack.split(";"), int(count)


def summarise_py_spy(raw_path: Path) -> dict[str, Any]:
    """Samples of the worker (py-spy collapsed stacks, idle excluded) by what they were inside.

    Faust runs the aiokafka consumer in a thread of its own (mode's ``ServiceThread``, its own event
    loop): its samples are counted apart. cProfile sees only the main thread.
    """
    categories: Counter[str] = Counter()
    inside_handle: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = torn = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        parsed = _frames(line) if line.strip() else None
        if parsed is None:
            torn += 1 if line.strip() else 0
            continue
        frames, count = parsed
        total += count
        leaves[frames[-1]] += count
        joined = ";".join(frames)
        if "ServiceThread" in joined or "WorkerThread.run" in joined:
            package = "aiokafka" if "aiokafka" in joined else "other"
            categories[f"consumer thread ({package})"] += count
        elif "handle (stream_processors/handling.py" in joined:
            categories["handle()"] += count
            for label, marker in (
                ("AvroCodec.decode", "decode (schemas/codec.py"),
                ("process_event", "process_event (stream_processors/validation.py"),
                ("AvroCodec.encode", "encode (schemas/codec.py"),
            ):
                if marker in joined:
                    inside_handle[label] += count
        elif "send (stream_processors/app.py" in joined:
            categories["OutputProducer.send"] += count
        elif "flush (stream_processors/app.py" in joined:
            categories["OutputProducer.flush"] += count
        elif "record (stream_processors/app.py" in joined:
            categories["metrics record()"] += count
        else:
            leaf = frames[-1]
            package = "other"
            for name in ("faust", "mode", "aiokafka", "asyncio", "selectors", "weakref"):
                if f"({name}/" in leaf or f"({name}.py" in leaf or f"(_{name}" in leaf:
                    package = name
                    break
            categories[f"main thread, Faust machinery ({package})"] += count

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {k: round(v / total, 3) for k, v in counter.most_common()} if total else {}

    return {
        "raw_file": str(raw_path),
        "samples": total,
        "torn_samples_skipped": torn,
        "share_by_category": shares(categories),
        "share_inside_handle": shares(inside_handle),
        "top_leaf_frames": [f"{v / total:6.1%}  {k}" for k, v in leaves.most_common(25)] if total else [],
    }


def profile_run(bench: Bench, run: int) -> tuple[Measurement, dict[str, Any]]:
    stats_path = bench.workdir / f"{bench.base}-faust.pstats"
    windows: dict[str, float] = {}

    def on(processes: list[subprocess.Popen[bytes]]) -> None:
        windows["on"] = time.perf_counter()
        processes[0].send_signal(_PROFILE_ON)

    def off(processes: list[subprocess.Popen[bytes]]) -> None:
        windows["off"] = time.perf_counter()
        processes[0].send_signal(_PROFILE_OFF)
        deadline = time.monotonic() + 60
        while not stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # let dump_stats finish writing

    measurement = measure(
        bench,
        "faust-cprofile",
        run,
        [self_command("--profile-worker", str(stats_path))],
        extra_env=bench.faust_env,
        on_first=on,
        on_done=off,
    )
    if not stats_path.exists():
        return measurement, {"error": "no profile was written", "stderr_tail": measurement.stderr_tail}
    window = windows["off"] - windows["on"] if "on" in windows and "off" in windows else None
    try:
        return measurement, summarise_profile(stats_path, measurement.events, window)
    except (OSError, ValueError, TypeError, EOFError) as exc:
        logger.exception("summarising %s failed", stats_path)
        return measurement, {"error": f"{type(exc).__name__}: {exc}", "stats_file": str(stats_path)}


def py_spy_run(bench: Bench, run: int, py_spy: str) -> tuple[Measurement, dict[str, Any]]:
    raw_path = bench.workdir / f"{bench.base}-faust.py-spy.txt"
    recorder: dict[str, subprocess.Popen[bytes]] = {}

    def on(processes: list[subprocess.Popen[bytes]]) -> None:
        recorder["p"] = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(processes[0].pid),
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(raw_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def off(_processes: list[subprocess.Popen[bytes]]) -> None:
        spy = recorder.get("p")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()

    measurement = measure(
        bench, "faust-py-spy", run, [worker_command()], extra_env=bench.faust_env, on_first=on, on_done=off
    )
    if not raw_path.exists():
        return measurement, {"error": "py-spy wrote nothing"}
    try:
        return measurement, summarise_py_spy(raw_path)
    except (OSError, ValueError) as exc:
        logger.exception("summarising %s failed", raw_path)
        return measurement, {"error": f"{type(exc).__name__}: {exc}", "raw_file": str(raw_path)}


# ---- clean-up ----


def cleanup(bootstrap: str, base: str) -> None:
    """Delete every topic and consumer group whose name starts with the benchmark's base prefix."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        topics = sorted(t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{base}-"))
        if topics:
            for name, future in admin.delete_topics(topics, operation_timeout=30).items():
                try:
                    future.result(timeout=60)
                except KafkaException:
                    logger.exception("deleting topic %s failed", name)
        logger.info("deleted %d benchmark topics", len(topics))
    except KafkaException:
        logger.exception("listing or deleting the benchmark topics failed")
    try:
        listing = admin.list_consumer_groups(request_timeout=30).result(timeout=60)
        groups = sorted(g.group_id for g in listing.valid if g.group_id.startswith(f"{base}-"))
        if groups:
            for name, future in admin.delete_consumer_groups(groups, request_timeout=30).items():
                try:
                    future.result(timeout=60)
                except KafkaException:
                    logger.warning("deleting consumer group %s failed", name, exc_info=True)
        logger.info("deleted %d benchmark consumer groups", len(groups))
    except KafkaException:
        logger.warning("listing or deleting the benchmark consumer groups failed", exc_info=True)


# ---- report ----


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summary(measurements: list[Measurement]) -> dict[str, Any]:
    ok = [m for m in measurements if m.complete]
    return {
        "runs": [asdict(m) for m in measurements],
        "complete_runs": len(ok),
        "median_events_per_s": _median([m.events_per_s for m in ok]),
        "median_startup_seconds": _median([m.startup_seconds for m in ok]),
        "median_processing_seconds": _median([m.processing_seconds for m in ok]),
        "median_wall_seconds": _median([m.wall_seconds for m in ok]),
        "median_worker_cpu_share": _median([m.worker_cpu_share for m in ok]),
        "median_machine_busy_cores": _median([m.machine_busy_cores for m in ok]),
        "median_inner_events_per_s": _median([m.inner.get("events_per_s") if m.inner else None for m in ok]),
    }


def faust_setting(faust_env: dict[str, str], name: str) -> str:
    """A worker setting as the Faust workers see it: ``--faust-env PACS_<NAME>`` or its default."""
    from stream_processors.settings import ProcessorSettings

    override = faust_env.get(f"PACS_{name.upper()}")
    if override is not None:
        return override
    return str(ProcessorSettings.model_fields[name].default)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("faust-streaming", "aiokafka", "mode-streaming", "confluent-kafka", "fastavro", "uvloop"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def render(data: dict[str, Any]) -> str:
    lines = [
        "",
        f"processor throughput: {data['config']['events']:,} PropertyValue events, "
        f"{data['machine']['cpu_count']} cores, Python {data['machine']['python']}",
        f"Faust worker: {data['config']['faust_processing_guarantee']}, "
        f"event loop {data['config']['faust_event_loop']}",
        "",
        f"{'kind':<16} {'run':>3} {'events/s':>10} {'proc s':>8} {'start s':>8} {'wall s':>8} "
        f"{'cpu':>5} {'box':>5} {'dup':>5} {'inner/s':>9} {'ok':>3}",
    ]
    for section in ("faust", "plain", "faust_2_workers", "profiled"):
        for m in data.get(section, {}).get("runs", []):
            inner = (m.get("inner") or {}).get("events_per_s")
            lines.append(
                f"{m['kind']:<16} {m['run']:>3} {m['events_per_s'] or 0:>10,.0f} "
                f"{m['processing_seconds'] or 0:>8.2f} {m['startup_seconds'] or 0:>8.2f} "
                f"{m['wall_seconds'] or 0:>8.2f} {m['worker_cpu_share'] or 0:>5.2f} "
                f"{m['machine_busy_cores'] or 0:>5.2f} {m['duplicates']:>5} "
                f"{inner or 0:>9,.0f} {'yes' if m['complete'] else 'NO':>3}"
            )
    lines.append(
        "cpu: cores the worker(s) used, box: cores busy machine-wide (window first-last arrival); "
        "dup: re-emitted outputs; inner/s: the plain loop's own timing"
    )
    lines.append("")
    for section in ("faust", "plain", "faust_2_workers"):
        if section in data and data[section]["median_events_per_s"] is not None:
            s = data[section]
            lines.append(
                f"{section:<16} median {s['median_events_per_s']:>10,.0f} events/s, start-up "
                f"{s['median_startup_seconds']:.2f} s, wall {s['median_wall_seconds']:.2f} s"
            )
    if data.get("ratio_faust_to_plain") is not None:
        lines.append(f"Faust / plain: {data['ratio_faust_to_plain']:.2f}")
    if data.get("scaling_2_workers_over_1") is not None:
        lines.append(f"2 workers / 1 worker: {data['scaling_2_workers_over_1']:.2f}")
    target = data["target"]
    lines.append(
        f"target {target['events_per_s_per_worker']:,.0f}/s per worker: "
        f"{'met' if target['faust_median_met_target'] else 'MISSED'}; stretch "
        f"{target['stretch_events_per_s_per_worker']:,.0f}/s: "
        f"{'met' if target['faust_median_met_stretch'] else 'missed'}"
    )
    return "\n".join(lines) + "\n"


# ---- main ----


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="events per measurement (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (default 3)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "bench-results" / "processor.json",
        help="JSON results file (default bench-results/processor.json)",
    )
    parser.add_argument(
        "--kinds",
        default="faust,plain,faust-2-workers",
        help="comma-separated measurements per run (default faust,plain,faust-2-workers)",
    )
    parser.add_argument("--profile", action="store_true", help="one more Faust run under cProfile")
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy binary: one more Faust run sampled by it")
    parser.add_argument(
        "--faust-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the Faust workers, e.g. STREAM_BUFFER_MAXSIZE=16384 or "
        "PACS_BATCH_MAX_EVENTS=5000 (repeatable; recorded in the results)",
    )
    parser.add_argument(
        "--input-compression",
        default="none",
        choices=["none", "lz4", "gzip", "snappy", "zstd"],
        help="compression of the pre-loaded input (default none; the producer stage writes lz4, which "
        "the worker reads only with cramjam installed: aiokafka[lz4])",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one measurement")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("PACS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.events < 1:
        parser.error("--runs and --events must be at least 1")
    unknown = set(args.kinds.split(",")) - {"faust", "plain", "faust-2-workers"}
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(sorted(unknown))}")
    for item in args.faust_env:
        if "=" not in item:
            parser.error(f"--faust-env {item!r} is not NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_worker:
        return plain_worker_main(args.events)
    if args.profile_worker is not None:
        return profile_worker_main(args.profile_worker)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    output = args.output.resolve()
    base = f"benchproc-{os.getpid()}"
    faust_env = dict(item.split("=", 1) for item in args.faust_env)
    kinds = set(args.kinds.split(","))
    workdir = Path(tempfile.mkdtemp(prefix=f"{base}-"))
    codec = AvroCodec(SchemaRegistry.from_package())
    started = time.perf_counter()
    events = build_events(codec, args.events)
    logger.info("built %d events in %.1f s (%s)", len(events), time.perf_counter() - started, workdir)
    bench = Bench(args.bootstrap, base, events, workdir, args.timeout, faust_env, args.input_compression)
    faust_runs: list[Measurement] = []
    plain_runs: list[Measurement] = []
    scaling_runs: list[Measurement] = []
    data: dict[str, Any] = {}
    exit_code = 0
    try:
        for run in range(1, args.runs + 1):
            if "faust" in kinds:
                m = measure(bench, "faust", run, [worker_command()], extra_env=faust_env)
                faust_runs.append(m)
                logger.info(
                    "faust run %d: %s events/s, start-up %s s", run, m.events_per_s, m.startup_seconds
                )
            if "plain" in kinds:
                m = measure(
                    bench,
                    "plain",
                    run,
                    [self_command("--plain-worker", "--events", str(args.events))],
                    wait_for_exit=True,
                )
                plain_runs.append(m)
                logger.info("plain run %d: %s events/s (inner %s)", run, m.events_per_s, m.inner)
            if "faust-2-workers" in kinds:
                m = measure(bench, "faust-2-workers", run, [worker_command()] * 2, extra_env=faust_env)
                scaling_runs.append(m)
                logger.info("2 workers run %d: %s events/s", run, m.events_per_s)
        faust = summary(faust_runs)
        median = faust["median_events_per_s"]
        data = {
            "benchmark": "processor",
            "timestamp": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "load_average_at_end": os.getloadavg(),
                "note": "the broker, the worker(s) and this script's output consumer share these cores",
            },
            "config": {
                "events": args.events,
                "runs": args.runs,
                "input_partitions": PARTITIONS,
                "output_partitions": PARTITIONS,
                "event_mix": "PropertyValue: 1 in 4 insert (after image), 3 in 4 update (before + after)",
                "input_compression": args.input_compression,
                "mean_event_bytes": round(sum(len(k) + len(v) for k, v in events) / len(events), 1),
                "faust_env": faust_env,
                "faust_processing_guarantee": faust_setting(faust_env, "processing_guarantee"),
                "faust_event_loop": faust_setting(faust_env, "event_loop"),
                "plain_batch": PLAIN_BATCH,
                "plain_within_s": PLAIN_WITHIN_S,
                "kafka_bootstrap_servers": args.bootstrap,
                "versions": _versions(),
                "definition": "events/s = N / (last output arrival - first output arrival), arrivals "
                "stamped by a consumer on the output topic; start-up = worker start to first arrival",
            },
            "faust": faust,
            "target": {
                "events_per_s_per_worker": TARGET_EVENTS_PER_S,
                "stretch_events_per_s_per_worker": STRETCH_EVENTS_PER_S,
                "faust_median_met_target": median is not None and median >= TARGET_EVENTS_PER_S,
                "faust_median_met_stretch": median is not None and median >= STRETCH_EVENTS_PER_S,
            },
        }
        if plain_runs:
            plain = summary(plain_runs)
            data["plain"] = plain
            if median and plain["median_events_per_s"]:
                data["ratio_faust_to_plain"] = round(median / plain["median_events_per_s"], 3)
        if scaling_runs:
            data["faust_2_workers"] = summary(scaling_runs)
            two = data["faust_2_workers"]["median_events_per_s"]
            if median and two:
                data["scaling_2_workers_over_1"] = round(two / median, 3)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")  # kept if profiling fails
        profiled: list[Measurement] = []
        profiles: dict[str, Any] = {}
        if args.profile:
            m, profiles["cprofile"] = profile_run(bench, args.runs + 1)
            profiled.append(m)
        if args.py_spy:
            m, profiles["py_spy"] = py_spy_run(bench, args.runs + 1, args.py_spy)
            profiled.append(m)
        if profiled:
            data["profiled"] = {"runs": [asdict(m) for m in profiled]}
            data["profile"] = profiles
            output.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        sys.stdout.write(render(data))
        sys.stdout.write(f"results written to {output}\n")
        if not all(m.complete for m in faust_runs + plain_runs + scaling_runs + profiled):
            logger.error("at least one measurement was incomplete; see the log above")
            exit_code = 1
    finally:
        cleanup(args.bootstrap, base)
        if exit_code == 0 and not (args.profile or args.py_spy):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            logger.info("profiles and worker logs are kept in %s", workdir)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
