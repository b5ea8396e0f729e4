"""The producer's loop: start-up checks, snapshot, streaming windows, heartbeats, retention checks.

Delivery guarantee (exactly-once into Kafka): every Kafka transaction holds a run of events *and* the
offset record that says where that run ends. A crash anywhere aborts the open transaction; the
restarted producer fences the old one (same ``transactional.id``), reads the last committed offset
with read_committed and resumes strictly after it. So each change appears once, in log order per
key, in the committed log.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)
from tenacity.stop import stop_base

from pacs_sync.errors import PacsSyncError, RetriableError
from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from pacs_sync.lsn import Lsn, SourcePosition
from pacs_sync.metrics import ProducerMetrics, serve
from pacs_sync.sweeps import Sweep, chunk_sweeps, sweeps_topic
from producer.errors import (
    CdcNotEnabledError,
    RetentionExceededError,
    SchemaMismatchError,
    SourceUnavailableError,
)
from producer.evolution import Converter, avro_type_for, convert_extra, evolved_envelope
from producer.mapping import (
    TABLES,
    SourceInfo,
    TableMapping,
    envelope,
    extra_captured,
    load_mappings,
    mapping_problems,
    utc_now,
)
from producer.offsets import SourceOffset
from producer.publisher import TransactionalPublisher, read_last_value
from producer.requests import clear_request, pending_resnapshot, request_file
from producer.settings import ProducerSettings, SnapshotMode
from producer.source import CaptureInstance, CdcSource
from producer.stream import Segment, check_idle, fold_updates, releasable
from schemas.codec import AvroCodec, SchemaRegistry

logger = logging.getLogger(__name__)

OFFSET_SCHEMA = "io.terrafusion.pacs.SourceOffset"
HEARTBEAT_SCHEMA = "io.terrafusion.pacs.Heartbeat"
_MAX_EVENTS_PER_TRANSACTION = 50_000
_START_UP_RETRY_S = 120.0
"""Start-up gives up (exit PACS-001/PACS-010) after this long; a running producer retries forever."""

T = TypeVar("T")


def topic_name(settings: ProducerSettings, table: str) -> str:
    """``<prefix>.<database>.<schema>.<table>`` (Debezium's SQL Server naming)."""
    return settings.change_topic(table)


def offsets_topic(settings: ProducerSettings) -> str:
    """The compacted topic holding the producer's position."""
    return settings.producer_topic("offsets")


def schemas_topic(settings: ProducerSettings) -> str:
    """Compacted topic of evolved schemas by fingerprint (readers resolve unknown fingerprints there)."""
    return settings.producer_topic("schemas")


def heartbeat_topic(settings: ProducerSettings) -> str:
    """Heartbeats while the source is idle (keeps lag and latency measurable)."""
    return settings.producer_topic("heartbeat")


@dataclass
class RunSummary:
    """What a run published."""

    snapshot_rows: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    seconds: float = 0.0


class ProducerRunner:
    """Owns the source connection, the Kafka publisher and the current offset."""

    def __init__(
        self,
        settings: ProducerSettings,
        codec: AvroCodec,
        metrics: ProducerMetrics,
        *,
        source_factory: Callable[[ProducerSettings], CdcSource] = CdcSource,
    ) -> None:
        """Prepare; nothing is connected until :meth:`run`."""
        self.settings = settings
        self.codec = codec
        self.metrics = metrics
        self._source_factory = source_factory
        self.mappings = load_mappings(settings.column_mapping_file)
        self._source: CdcSource | None = None
        self._publisher: TransactionalPublisher | None = None
        self.offset = SourceOffset()
        self._committed_offset = SourceOffset()
        """The offset of the last committed Kafka transaction: where an in-process retry resumes."""
        self._offset_in_transaction: SourceOffset | None = None
        self.summary = RunSummary()
        self._offset_key = f"{settings.topic_prefix}.{settings.db_name}".encode()  # see committed_offset
        self.retry_wait: Callable[[RetryCallState], float] = wait_exponential(multiplier=0.5, max=30)
        """Backoff between in-process retries (see :meth:`_retry`)."""
        self._last_heartbeat = 0.0
        self._last_headroom = 0.0
        self._more_pending = False
        self._converters: dict[str, list[Converter]] = {}
        """Per capture instance with extra columns: converters for the extra values."""
        self._announced: set[bytes] = set()
        self._pending_schemas: list[tuple[bytes, dict[str, Any]]] = []
        # Announced in the open Kafka transaction: announced for good only once it commits.
        self._schemas_in_transaction: list[tuple[bytes, dict[str, Any]]] = []

    @property
    def source(self) -> CdcSource:
        """The open source connection (after :meth:`start`)."""
        if self._source is None:
            raise SourceUnavailableError("the PACS source is not connected")
        return self._source

    def _ensure_source(self) -> CdcSource:
        """The source connection, opened if there is none (after a lost connection)."""
        if self._source is None:
            self._source = self._source_factory(self.settings)
            self.metrics.source_up.set(1)
        return self._source

    def _drop_source(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    @property
    def publisher(self) -> TransactionalPublisher:
        """The Kafka publisher (after :meth:`start`)."""
        if self._publisher is None:
            raise RuntimeError("the producer has not started")
        return self._publisher

    # ---- start-up ----

    def start(self, stop: threading.Event | None = None) -> None:
        """Connect, check CDC and the mapping, create topics, fence older producers, load the offset.

        An unreachable source or broker is retried with exponential backoff for up to ~2 minutes
        (every retry counted, see :meth:`_retry`); wrong credentials, a missing capture instance or a
        mapping mismatch stop at once.
        """
        self._retry(stop or threading.Event(), self._start_once, give_up_after=_START_UP_RETRY_S)

    def _start_once(self) -> None:
        self._drop_source()
        if self._publisher is not None:  # left by a failed attempt
            self._publisher.close()
            self._publisher = None
        self._ensure_source()
        if not self.source.cdc_enabled():
            raise CdcNotEnabledError(
                f"CDC is not enabled on database {self.settings.db_name!r}: a sysadmin runs "
                "sys.sp_cdc_enable_db and sys.sp_cdc_enable_table, "
                "or set PACS_ENABLE_CDC=false for polling mode"
            )
        self.instances_by_table()  # validates the mapping against cdc.captured_columns (PACS-003)
        specs = [TopicSpec(topic_name(self.settings, t), self.settings.topic_partitions) for t in TABLES]
        specs += [
            TopicSpec(offsets_topic(self.settings), 1, compacted=True),
            TopicSpec(heartbeat_topic(self.settings), 1),
            TopicSpec(schemas_topic(self.settings), 1, compacted=True),
            # Kept as long as the compacted clean topics keep rows: a resync replays both.
            TopicSpec(
                sweeps_topic(self.settings.topic_prefix, self.settings.db_name), 1, retain_forever=True
            ),
        ]
        ensure_topics(self.settings.kafka_bootstrap_servers, specs)
        transactional_id = f"pacs-sync-producer.{self.settings.topic_prefix}.{self.settings.db_name}"
        self._publisher = TransactionalPublisher(self.settings.kafka_bootstrap_servers, transactional_id)
        raw = read_last_value(
            self.settings.kafka_bootstrap_servers, offsets_topic(self.settings), self._offset_key
        )
        if raw is not None:
            self.offset = SourceOffset.from_record(self.codec.decode(raw).value)
            logger.info("resuming from %s", self.offset.position or "an unfinished snapshot")
        self._committed_offset = self.offset

    def instances_by_table(self) -> dict[str, list[CaptureInstance]]:
        """Capture instances of the mapped tables (oldest first), checked against the mapping.

        Raises:
            SchemaMismatchError: a table has no capture instance, or its newest one lacks a mapped column.
        """
        found: dict[str, list[CaptureInstance]] = {}
        for instance in self.source.capture_instances():
            if instance.schema.lower() != self.settings.db_schema.lower():
                continue
            for table in TABLES:
                if instance.table.lower() == table.lower():
                    found.setdefault(table, []).append(instance)
        problems = []
        for table in TABLES:
            if table not in found:
                problems.append(f"{self.settings.db_schema}.{table} has no capture instance")
                continue
            missing = mapping_problems(self.mappings[table], found[table][-1].columns)
            if missing:
                problems.append(f"{found[table][-1].name} does not capture {', '.join(missing)}")
        if problems:
            raise SchemaMismatchError("source does not match the column mapping: " + "; ".join(problems))
        return found

    # ---- the loop ----

    def run(self, stop: threading.Event, *, until_caught_up: bool = False) -> RunSummary:
        """Snapshot if needed, then stream until ``stop`` (or, with ``until_caught_up``, until current)."""
        started = time.monotonic()
        self.start(stop)
        target = self._retry(stop, self._high_water) if until_caught_up else None
        if self._needs_snapshot():
            self._retry(stop, lambda: self.snapshot(stop))
        idle_sleep = self.settings.min_poll_interval_s
        while not stop.is_set():
            moved = bool(self._retry(stop, self._poll_step))
            if until_caught_up and self._caught_up(target):
                break
            if self._more_pending:
                continue  # the window was full: the next one is ready now
            idle_sleep = (
                self.settings.min_poll_interval_s
                if moved
                else min(idle_sleep * 2 or 0.05, self.settings.poll_interval_s)
            )
            stop.wait(idle_sleep)
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _high_water(self) -> Lsn | None:
        high_water = self._ensure_source().max_lsn()
        self.source.end_read()
        return high_water

    def _poll_step(self) -> bool:
        self._ensure_source()
        self._serve_resnapshot_request()
        return self.poll()

    def _serve_resnapshot_request(self) -> None:
        """Re-publish the tables an operator asked for (:mod:`producer.requests`), then drop the request."""
        path = request_file(self.settings.state_dir, self.settings.topic_prefix, self.settings.db_name)
        tables = pending_resnapshot(path)
        if not tables or not self.offset.snapshot_completed:
            return  # a first snapshot (or one resuming) covers every table anyway
        logger.info("re-snapshot requested for %s", ", ".join(tables))
        for table in tables:
            self._resnapshot(table)
            self.source.end_read()
        clear_request(path, tables)

    def _caught_up(self, target: Lsn | None) -> bool:
        if pending_resnapshot(
            request_file(self.settings.state_dir, self.settings.topic_prefix, self.settings.db_name)
        ):
            return False
        position = self.offset.position
        if target is None:
            return self.offset.snapshot_completed or self.settings.snapshot_mode is SnapshotMode.NEVER
        return position is not None and position.transaction_complete and position.commit_lsn >= target

    def close(self) -> None:
        """Abort anything open and disconnect."""
        if self._publisher is not None:
            self._publisher.close()
        if self._source is not None:
            self._source.close()

    def _retry(
        self, stop: threading.Event, action: Callable[[], T], *, give_up_after: float | None = None
    ) -> T | None:
        """Run ``action``, retrying it in-process after a :class:`RetriableError`.

        Backoff is exponential, 0.5 s doubling up to 30 s, until the action succeeds, ``stop`` is
        set (then None is returned) or ``give_up_after`` seconds have passed (then the last error is
        raised). Between attempts :meth:`_before_retry` counts the error and undoes the failed
        attempt, so a retry resumes from the last committed offset: nothing is skipped and nothing
        committed is repeated. Fatal errors are raised at once.
        """
        rule: stop_base = stop_when_event_set(stop)
        if give_up_after is not None:
            rule = rule | stop_after_delay(give_up_after)

        def sleep(seconds: float) -> None:
            stop.wait(seconds)  # a stop request ends the backoff at once

        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(RetriableError),
                wait=self.retry_wait,
                stop=rule,
                sleep=sleep,
                before_sleep=self._before_retry,
                reraise=True,
            ):
                with attempt:
                    if stop.is_set():
                        return None
                    return action()
        except RetriableError:
            if stop.is_set():
                return None
            raise
        return None

    def _before_retry(self, state: RetryCallState) -> None:
        """Count a failed attempt, log it, and undo what it left half-done.

        The error is counted in ``pacs_sync_producer_errors_total`` by code (start-up included); a
        source error sets ``pacs_sync_producer_source_up`` to 0. The open Kafka transaction is
        aborted, the offset goes back to the one last committed (the attempt may have moved it past
        events it never committed), and the source connection is dropped: the next attempt opens a
        new one.
        """
        exc = state.outcome.exception() if state.outcome is not None else None
        code = exc.code.value if isinstance(exc, PacsSyncError) else "unknown"
        self.metrics.errors.labels(code).inc()
        if isinstance(exc, SourceUnavailableError):
            self.metrics.source_up.set(0)
        if self._publisher is not None:
            self._publisher.abort()
        self._offset_in_transaction = None
        self.offset = self._committed_offset
        # Schemas announced in the aborted transaction are announced again with the retried window.
        self._pending_schemas.extend(self._schemas_in_transaction)
        self._schemas_in_transaction.clear()
        self._drop_source()
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning("%s; retrying in %.1f s", exc, delay)

    # ---- snapshot ----

    def _needs_snapshot(self) -> bool:
        mode = self.settings.snapshot_mode
        if mode is SnapshotMode.NEVER:
            return False
        return not self.offset.snapshot_completed

    def snapshot(self, stop: threading.Event) -> None:
        """Publish every row of the four tables as ``r`` events at a recorded LSN, in resumable chunks.

        The snapshot LSN L0 is the high-water mark when the snapshot starts; streaming then starts
        strictly after L0. Chunks read later may already reflect changes after L0; streaming replays
        those changes in order, and the sink keeps the newest by position, so the end state is exact.
        """
        source, publisher = self._ensure_source(), self.publisher
        snapshot_lsn = self.offset.snapshot_lsn or source.max_lsn() or Lsn.zero()
        self.offset = SourceOffset(
            snapshot_lsn=snapshot_lsn,
            snapshot_table=self.offset.snapshot_table,
            snapshot_last_key=self.offset.snapshot_last_key,
        )
        logger.info("snapshot at LSN %s", snapshot_lsn)
        tables = list(TABLES)
        if self.offset.snapshot_table in tables:
            tables = tables[tables.index(self.offset.snapshot_table) :]
        limit = self.settings.snapshot_chunk_rows
        counts = {table: source.count(table) for table in tables}
        source.end_read()
        # "last" marks the final row of the last table that has rows (Debezium's snapshot=last).
        last_table = next((t for t in reversed(tables) if counts[t] > 0), tables[-1])
        for table in tables:
            mapping = self.mappings[table]
            total = max(counts[table], 1)
            done = 0
            last_key = self.offset.snapshot_last_key if table == self.offset.snapshot_table else None
            while not stop.is_set():
                rows = source.snapshot_chunk(table, mapping.columns, mapping.key_column, last_key, limit + 1)
                source.end_read()
                more = len(rows) > limit
                rows = rows[:limit]
                final = not more and table == last_table
                if rows:
                    last_key = rows[-1][0]
                    self.offset = SourceOffset(
                        snapshot_lsn=snapshot_lsn, snapshot_table=table, snapshot_last_key=last_key
                    )
                    self._publish_snapshot_chunk(table, mapping, rows, snapshot_lsn, final=final)
                    done += len(rows)
                    self.metrics.snapshot_progress.labels(mapping.entity).set(min(done / total, 1.0))
                if not more:
                    break
            if stop.is_set():
                return
            self.metrics.snapshot_progress.labels(mapping.entity).set(1.0)
            self.summary.snapshot_rows[table] = done
        self.offset = SourceOffset(
            position=SourcePosition(snapshot_lsn), snapshot_completed=True, snapshot_lsn=snapshot_lsn
        )
        publisher.begin()
        self._produce_offset()
        self._commit()
        logger.info("snapshot complete: %s", self.summary.snapshot_rows)

    def _publish_snapshot_chunk(
        self,
        table: str,
        mapping: TableMapping,
        rows: list[tuple[Any, ...]],
        lsn: Lsn,
        *,
        final: bool,
        sweeps: list[Sweep] | None = None,
    ) -> None:
        topic = topic_name(self.settings, table)
        key_schema, value_schema = self._schema_names(table)
        now = utc_now()
        encode = self.codec.encode
        self.publisher.begin()
        last = len(rows) - 1
        common = {"db": self.settings.db_name, "schema": self.settings.db_schema, "table": table}
        # The source block is the same for every row of a chunk but the very last one of the snapshot.
        sources = {
            flag: SourceInfo(
                **common,
                capture_instance=None,
                commit_lsn=lsn,
                change_lsn=None,
                event_serial_no=0,
                commit_time=None,
                snapshot=flag,
            )
            for flag in ("true", "last")
        }
        key_field = mapping.key_field
        partitions = self.publisher.partition_count(topic)
        for i, values in enumerate(rows):
            record = mapping.record(values)
            source = sources["last" if final and i == last else "true"]
            self.publisher.produce(
                topic,
                encode(key_schema, {key_field: values[0]}),
                encode(value_schema, envelope("r", None, record, source, now)),
                partition=mapping.partition(record, partitions),
            )
        self._produce_sweeps(sweeps or [])
        self._produce_offset()
        self._commit()
        self.metrics.snapshot_rows.labels(mapping.entity).inc(len(rows))
        self.metrics.events.labels(mapping.entity, "r").inc(len(rows))
        self.metrics.transactions.labels("snapshot").inc()

    def _schema_names(self, table: str) -> tuple[str, str]:
        return f"pacs.dbo.{table}Key", f"pacs.dbo.{table}Envelope"

    def _produce_sweeps(self, sweeps: list[Sweep]) -> None:
        topic = sweeps_topic(self.settings.topic_prefix, self.settings.db_name)
        for sweep in sweeps:
            self.publisher.produce(topic, sweep.entity.encode(), sweep.to_json())

    def _produce_offset(self) -> None:
        self.publisher.produce(
            offsets_topic(self.settings),
            self._offset_key,
            self.codec.encode(OFFSET_SCHEMA, self.offset.to_record()),
        )
        self._offset_in_transaction = self.offset

    def _commit(self) -> None:
        """Commit the open Kafka transaction; the offset it carries becomes the retry point.

        Raises:
            KafkaPublishError: the transaction was aborted; the retry point stays where it was.
        """
        self.publisher.commit()
        if self._offset_in_transaction is not None:
            self._committed_offset = self._offset_in_transaction
            self._offset_in_transaction = None
        self._announced.update(fingerprint for fingerprint, _ in self._schemas_in_transaction)
        self._schemas_in_transaction.clear()

    # ---- streaming ----

    def poll(self) -> bool:
        """One streaming window. Returns True if any change was published.

        Order of a window: (1) find the window's upper bound (at most N transactions past the
        position; an idle poll moves the position only up to a high-water mark read before it
        looked for new transactions, so a transaction captured meanwhile is never jumped over);
        (2) check retention for every capture instance in use; (3) page and merge the change
        tables; (4) commit events and the new position in one Kafka transaction (several for very
        large windows, each ending at a change position).
        """
        source = self._ensure_source()
        started = time.perf_counter()
        try:
            position = self.offset.position
            # The high-water mark first, then the newest transaction: see check_idle.
            high_water = source.max_lsn()
            last_tx = source.max_transaction_lsn()
            self._more_pending = False
            idle = check_idle(position, high_water, last_tx)
            if idle.idle or last_tx is None:  # (check_idle is idle without a transaction)
                self._idle(idle.advance_to, high_water)
                return False
            after = (
                Lsn.zero()
                if position is None
                else (
                    position.commit_lsn if position.transaction_complete else position.commit_lsn.decrement()
                )
            )
            high = source.nth_transaction_lsn_after(after, self.settings.max_transactions_per_poll) or last_tx
            self._more_pending = high < last_tx
            segments = self._segments(position, high)
            self._update_headroom(position, [s.capture_instance for s in segments])
            published = self._stream_segments(segments, position, high)
            return published > 0
        finally:
            source.end_read()
            self.metrics.poll_duration.observe(time.perf_counter() - started)

    def _segments(self, position: SourcePosition | None, high: Lsn) -> list[Segment]:
        """Read segments for the window; checks retention on every capture instance in use."""
        segments = []
        table_position = position
        for table, instances in self.instances_by_table().items():
            mapping = self.mappings[table]
            position = _later(table_position, self.offset.table_floors.get(table))
            chain = [i for i in instances if i.start_lsn is not None]
            for index, instance in enumerate(chain):
                following = chain[index + 1] if index + 1 < len(chain) else None
                if (
                    following is not None
                    and following.start_lsn is not None
                    and following.start_lsn <= (Lsn.zero() if position is None else position.commit_lsn)
                ):
                    continue  # already switched past this instance
                min_lsn = self.source.min_lsn(instance.name)
                if min_lsn is None or min_lsn == Lsn.zero():
                    continue
                # A newer instance is read only from its own start LSN: changes before it come from
                # its predecessor, so only changes after max(position, start) must still be there.
                needed = position
                start = instance.start_lsn
                if index > 0 and position is not None and start is not None and start > position.commit_lsn:
                    needed = SourcePosition(start)
                try:
                    self._check_retention(instance.name, min_lsn, needed)
                except RetentionExceededError:
                    if self.settings.snapshot_mode is not SnapshotMode.WHEN_NEEDED:
                        raise
                    logger.warning(
                        "CDC retention passed the position of %s: re-snapshotting the table", table
                    )
                    self._resnapshot(table)
                    return self._segments(table_position, high)
                low = min_lsn if position is None else max(min_lsn, position.commit_lsn)
                seg_high = high
                if following is not None and following.start_lsn is not None and following.start_lsn <= high:
                    seg_high = following.start_lsn.decrement()
                    logger.info(
                        "capture instance switch on %s: %s until %s, then %s",
                        table,
                        instance.name,
                        seg_high,
                        following.name,
                    )
                if low > seg_high:
                    continue
                extra = extra_captured(mapping, instance.columns)
                segment_mapping = mapping.with_extra(extra) if extra else mapping
                if extra:
                    self._evolve(table, instance, extra)
                segment = Segment(table, instance.name, segment_mapping, low, seg_high)
                if position is not None and position is not table_position:
                    segment.floor = (position.commit_lsn.value, b"\xff" * 10, 99)  # re-snapshotted here
                segments.append(segment)
                if following is None or following.start_lsn is None or following.start_lsn > high:
                    break
        return segments

    def _resnapshot(self, table: str) -> None:
        """Publish a table again at the current high-water mark; its changes resume after that LSN.

        Other tables keep streaming from the saved position. A crash during the re-snapshot repeats
        it after the restart (snapshot events are idempotent at the sink: same rows, same position).

        Rows the source no longer has (deleted while their changes were lost) are removed by the
        sweeps (:mod:`pacs_sync.sweeps`) committed with each chunk: together they list every key the
        table had, so the sink turns the target's other, older rows into delete markers.
        """
        lsn = self.source.max_lsn() or Lsn.zero()
        mapping = self.mappings[table]
        last_key: Any = None
        limit = self.settings.snapshot_chunk_rows
        while True:
            rows = self.source.snapshot_chunk(table, mapping.columns, mapping.key_column, last_key, limit + 1)
            self.source.end_read()
            more = len(rows) > limit
            rows = rows[:limit]
            if not more:
                floors = {**self.offset.table_floors, table: lsn}
                self.offset = replace(self.offset, table_floors=floors)
            sweeps = chunk_sweeps(
                mapping.entity, table, lsn, last_key, [row[0] for row in rows], last=not more
            )
            if rows:
                last_key = rows[-1][0]
                self._publish_snapshot_chunk(table, mapping, rows, lsn, final=not more, sweeps=sweeps)
            elif not more:
                self.publisher.begin()
                self._produce_sweeps(sweeps)
                self._produce_offset()
                self._commit()
            if not more:
                break
        logger.info("re-snapshot of %s complete at LSN %s", table, lsn)

    def _check_retention(self, capture_instance: str, min_lsn: Lsn, position: SourcePosition | None) -> None:
        if position is None:
            return
        if min_lsn > position.commit_lsn:
            raise RetentionExceededError(
                f"saved position {position.commit_lsn} is older than {capture_instance}'s min LSN {min_lsn}: "
                "changes were removed by CDC cleanup before they were published",
                capture_instance=capture_instance,
            )

    def _stream_segments(self, segments: list[Segment], position: SourcePosition | None, high: Lsn) -> int:
        resume = (b"", b"", 0)
        if position is not None:
            resume = (
                (position.commit_lsn.value, b"\xff" * 10, 99)
                if position.transaction_complete
                else (
                    position.commit_lsn.value,
                    position.change_lsn.value if position.change_lsn else b"",
                    position.operation or 0,
                )
            )
        for segment in segments:
            segment.cursor = (
                max(resume, (segment.low.value, b"", 0)) if position is not None else (b"", b"", 0)
            )
            segment.cursor = max(segment.cursor, segment.floor)
        limit = self.settings.page_rows
        published = 0
        in_transaction = 0
        last_change: SourcePosition | None = None
        while True:
            for segment in segments:
                if not segment.exhausted and not segment.buffer:
                    page = self.source.changes(
                        segment.capture_instance,
                        segment.mapping.all_columns,
                        from_lsn=segment.low,
                        to_lsn=segment.high,
                        after=segment.cursor,
                        limit=limit,
                    )
                    segment.accept_page(page, limit)
            batch = list(fold_updates(releasable(segments)))
            if batch:
                if in_transaction == 0:
                    self.publisher.begin()
                    self._announce_schemas()
                for change in batch:
                    self._produce_change(change)
                last = batch[-1].row
                last_change = SourcePosition(last.commit_lsn, last.seqval, last.operation)
                in_transaction += len(batch)
                published += len(batch)
                if in_transaction >= _MAX_EVENTS_PER_TRANSACTION:
                    self.offset = self.offset.advanced(last_change)
                    self._produce_offset()
                    self._commit()
                    self.metrics.transactions.labels("stream").inc()
                    in_transaction = 0
            if all(s.exhausted and not s.buffer for s in segments):
                break
        if in_transaction == 0:
            self.publisher.begin()
        self.offset = self.offset.advanced(SourcePosition(high))
        self._produce_offset()
        self._commit()
        self.metrics.transactions.labels("stream").inc()
        self.summary.windows += 1
        self._update_lag(last_change, high)
        return published

    def _produce_change(self, change: Any) -> None:
        segment, row = change.segment, change.row
        mapping: TableMapping = segment.mapping
        before = None if change.before is None else self._record(segment, change.before)
        after = None if change.after is None else self._record(segment, change.after)
        source = SourceInfo(
            db=self.settings.db_name,
            schema=self.settings.db_schema,
            table=segment.table,
            capture_instance=segment.capture_instance,
            commit_lsn=row.commit_lsn,
            change_lsn=row.seqval,
            event_serial_no=row.operation,
            commit_time=row.commit_time,
        )
        key_schema, value_schema = self._schema_names(segment.table)
        image = after if after is not None else before
        if image is None:
            raise ValueError(f"a {change.op} change without a row image at {row.position}")
        value = envelope(change.op, before, after, source, utc_now())
        topic = topic_name(self.settings, segment.table)
        self.publisher.produce(
            topic,
            self.codec.encode(key_schema, mapping.key(image)),
            self.codec.encode(value_schema, value),
            partition=mapping.partition(image, self.publisher.partition_count(topic)),
        )
        self.metrics.events.labels(mapping.entity, change.op).inc()
        self.summary.events[change.op] = self.summary.events.get(change.op, 0) + 1

    def _record(self, segment: Segment, values: tuple[Any, ...]) -> dict[str, Any]:
        mapping = segment.mapping
        if not mapping.extra_fields:
            return mapping.record(values)
        width = len(mapping.columns)
        converters = self._converters[segment.capture_instance]
        return mapping.record((*values[:width], *convert_extra(values[width:], converters)))

    def _evolve(self, table: str, instance: CaptureInstance, extra: list[str]) -> None:
        """Register the evolved envelope for an instance that captures extra columns, once."""
        if instance.name in self._converters:
            return
        typed = [(column, *avro_type_for(instance.type_of(column))) for column in extra]
        _key_schema, value_schema = self._schema_names(table)
        base = self.codec.registry.by_name(value_schema).schema
        evolved = evolved_envelope(base, f"pacs.dbo.{table}", [(name, avro) for name, avro, _ in typed])
        fingerprint = self.codec.registry.register(evolved)  # current: later events of any instance use it
        self._converters[instance.name] = [convert for _, _, convert in typed]
        self._pending_schemas.append((fingerprint, evolved))
        logger.info(
            "capture instance %s captures new column(s) %s: publishing %s with an evolved schema (%s)",
            instance.name,
            ", ".join(extra),
            value_schema,
            fingerprint.hex(),
        )

    def _announce_schemas(self) -> None:
        """Publish evolved schemas (in the open transaction, before the events that use them)."""
        while self._pending_schemas:
            fingerprint, schema = self._pending_schemas.pop()
            if fingerprint in self._announced:
                continue
            topic = schemas_topic(self.settings)
            self.publisher.produce(topic, fingerprint.hex().encode(), json.dumps(schema).encode())
            self._schemas_in_transaction.append((fingerprint, schema))

    def _update_headroom(self, position: SourcePosition | None, instances: list[str]) -> None:
        """Retention headroom: retention minus how far the position trails the newest commit.

        Cleanup keeps ``retention`` minutes counted back from the last commit time, so once the
        position trails by more than that, unread changes are deleted. Checked at most every 5 s.
        """
        now = time.monotonic()
        if position is None or now - self._last_headroom < 5.0:
            return
        self._last_headroom = now
        newest = self.source.max_lsn()
        newest_time = None if newest is None else self.source.lsn_time(newest)
        position_time = self.source.lsn_time(position.commit_lsn)
        if newest_time is None or position_time is None:
            return
        trailing = (newest_time - position_time).total_seconds()
        headroom = self.settings.cdc_retention_minutes * 60 - max(trailing, 0.0)
        for instance in instances:
            self.metrics.retention_headroom.labels(instance).set(headroom)

    def _update_lag(self, last_change: SourcePosition | None, high: Lsn) -> None:
        """Lag = age of the newest published commit while more transactions wait; 0 when caught up."""
        newest = self.source.max_transaction_lsn()
        if last_change is None or newest is None or newest <= high:
            self.metrics.source_lag.set(0.0)
            return
        committed = self.source.lsn_time(last_change.commit_lsn)
        if committed is not None:
            self.metrics.source_lag.set(max((datetime.now(tz=UTC) - committed).total_seconds(), 0.0))

    def _idle(self, advance_to: SourcePosition | None, high_water: Lsn | None) -> None:
        """No new transactions: follow the checked high-water mark, publish a heartbeat now and then.

        ``advance_to`` comes from :func:`~producer.stream.check_idle`: no real transaction lies
        between the position and it, so moving there skips nothing; it keeps CDC cleanup, which
        counts idle dummy rows too, from ever passing a caught-up producer.
        """
        self.metrics.source_lag.set(0.0)
        if advance_to is not None:
            self.offset = self.offset.advanced(advance_to)
        now = time.monotonic()
        if now - self._last_heartbeat < self.settings.heartbeat_interval_s:
            return
        self._last_heartbeat = now
        beat = {
            "db": self.settings.db_name,
            "commit_lsn": None if high_water is None else str(high_water),
            "ts_ms": datetime.now(tz=UTC),
        }
        self.publisher.begin()
        self.publisher.produce(
            heartbeat_topic(self.settings), self._offset_key, self.codec.encode(HEARTBEAT_SCHEMA, beat)
        )
        if self.offset.snapshot_completed or self.offset.position is not None:
            self._produce_offset()
        self._commit()
        self.metrics.transactions.labels("heartbeat").inc()


def run_producer(
    settings: ProducerSettings,
    codec: AvroCodec,
    metrics: ProducerMetrics,
    stop: threading.Event,
    *,
    until_caught_up: bool = False,
) -> RunSummary:
    """Run the producer until ``stop`` (or caught up); translate nothing: errors carry their codes."""
    if not settings.enable_cdc:
        from producer.polling import PollingProducer

        return PollingProducer(settings, codec).run(stop, until_caught_up=until_caught_up)
    runner = ProducerRunner(settings, codec, metrics)
    try:
        return runner.run(stop, until_caught_up=until_caught_up)
    finally:
        runner.close()


def _later(position: SourcePosition | None, floor: Lsn | None) -> SourcePosition | None:
    """The later of the saved position and a table's re-snapshot LSN."""
    if floor is None or (position is not None and position >= SourcePosition(floor)):
        return position
    return SourcePosition(floor)


def committed_offset(settings: ProducerSettings, codec: AvroCodec | None = None) -> SourceOffset | None:
    """The producer's last committed offset (position and snapshot state), read from its offsets topic."""
    raw = read_last_value(
        settings.kafka_bootstrap_servers,
        offsets_topic(settings),
        f"{settings.topic_prefix}.{settings.db_name}".encode(),
    )
    if raw is None:
        return None
    codec = codec or AvroCodec(SchemaRegistry.from_package())
    return SourceOffset.from_record(codec.decode(raw).value)


def serve_producer(settings: ProducerSettings, *, until_caught_up: bool = False) -> RunSummary:
    """The ``pacs-sync producer`` process: metrics endpoint, SIGTERM/Ctrl-C handling, the loop."""
    registry = CollectorRegistry()
    metrics = ProducerMetrics.create(registry)
    serve(registry, settings.metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return run_producer(
        settings, AvroCodec(SchemaRegistry.from_package()), metrics, stop, until_caught_up=until_caught_up
    )


__all__ = ["ProducerRunner", "RunSummary", "run_producer", "serve_producer", "topic_name"]
