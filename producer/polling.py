"""PACS_ENABLE_CDC=false: the polling fallback, for PACS databases where CDC cannot be enabled.

Enabling CDC needs sysadmin; some counties cannot grant it. Then the producer scans the four tables
by key on the PACS_SYNC_SCHEDULE cron schedule, compares each row's hash with the hash last
published for its key (kept in a compacted topic), and emits ``c``/``u``/``d`` events for the
differences: same topics, same envelope. The first scan has no hashes and emits ``r`` events.

It is the higher-latency mode: a change is seen at the next scheduled scan; several changes to a row
between scans arrive as one; a deleted row's event carries only its key (no before image); and every
scan reads every row. Positions are synthetic (commit ``ffffffff:<scan epoch second>:0000``, change =
the event's serial number), increasing from scan to scan, so the sink's position guard still keeps
the newest image.

Delivery: a table's events, its hash updates and the scan position commit in one Kafka transaction,
so a crash mid-scan leaves the hash state as it was and the next scan finds the same differences.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from pacs_sync.lsn import Lsn
from producer.mapping import TABLES, SourceInfo, TableMapping, envelope, load_mappings, utc_now
from producer.publisher import TransactionalPublisher, read_all_values
from producer.runner import RunSummary, topic_name
from producer.settings import ProducerSettings
from producer.source import CdcSource
from schemas.codec import AvroCodec

logger = logging.getLogger(__name__)

SYNTHETIC_VLF = b"\xff\xff\xff\xff"
"""Polling positions sort after every real LSN (real VLF numbers are far below this)."""


def row_hash(values: Sequence[Any]) -> bytes:
    """A stable 16-byte digest of a row's values (types included, so 1 and '1' differ)."""
    text = "\x1f".join(f"{type(v).__name__}:{v!r}" for v in values)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def diff_table(
    previous: dict[str, bytes], current: dict[str, tuple[bytes, tuple[Any, ...]]]
) -> tuple[list[tuple[str, tuple[Any, ...]]], list[tuple[str, tuple[Any, ...]]], list[str]]:
    """Inserted and updated rows (key, values) and deleted keys, from old hashes and the current scan."""
    inserted = [(k, v) for k, (h, v) in current.items() if k not in previous]
    updated = [(k, v) for k, (h, v) in current.items() if k in previous and previous[k] != h]
    deleted = [k for k in previous if k not in current]
    return inserted, updated, deleted


def synthetic_position(scan_s: int, serial: int) -> tuple[Lsn, Lsn]:
    """(commit LSN, change LSN) of the n-th event of a scan: ``ffffffff:<scan second>:0000`` and n."""
    return Lsn(SYNTHETIC_VLF + scan_s.to_bytes(4, "big") + b"\x00\x00"), Lsn(serial.to_bytes(10, "big"))


class PollingProducer:
    """Scheduled keyset scans compared with published row hashes."""

    def __init__(self, settings: ProducerSettings, codec: AvroCodec) -> None:
        """Prepare; nothing is connected until :meth:`run`."""
        self.settings = settings
        self.codec = codec
        self.mappings = load_mappings(settings.column_mapping_file)
        self.hashes_topic = settings.producer_topic("row_hashes")
        self.summary = RunSummary()
        self._last_scan_s = 0

    def run(self, stop: threading.Event, *, until_caught_up: bool = False) -> RunSummary:
        """Scan now, then on every PACS_SYNC_SCHEDULE tick until ``stop`` (once with ``until_caught_up``)."""
        started = time.monotonic()
        specs = [TopicSpec(topic_name(self.settings, t), self.settings.topic_partitions) for t in TABLES]
        specs.append(TopicSpec(self.hashes_topic, 1, compacted=True))
        ensure_topics(self.settings.kafka_bootstrap_servers, specs)
        transactional_id = f"pacs-sync-poller.{self.settings.topic_prefix}.{self.settings.db_name}"
        publisher = TransactionalPublisher(self.settings.kafka_bootstrap_servers, transactional_id)
        schedule = croniter(self.settings.sync_schedule, datetime.now(tz=UTC))
        try:
            while not stop.is_set():
                self.scan(publisher)
                if until_caught_up:
                    break
                next_run = schedule.get_next(datetime)
                stop.wait(max((next_run - datetime.now(tz=UTC)).total_seconds(), 0.0))
        finally:
            publisher.close()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def scan(self, publisher: TransactionalPublisher) -> None:
        """One pass over the four tables; each table's differences commit in one Kafka transaction."""
        # The hash state is read back from Kafka (read_committed), so a restarted poller agrees with
        # what was actually published.
        stored = read_all_values(self.settings.kafka_bootstrap_servers, self.hashes_topic)
        scan_s = max(int(time.time()), self._last_scan_s + 1)
        self._last_scan_s = scan_s
        source = CdcSource(self.settings)
        try:
            for table in TABLES:
                mapping = self.mappings[table]
                prefix = f"{table}:"
                previous = {k[len(prefix) :]: v for k, v in stored.items() if k.startswith(prefix)}
                current = self._read_table(source, table, mapping)
                self._publish(publisher, table, mapping, previous, current, scan_s, first=not stored)
        finally:
            source.close()

    def _read_table(
        self, source: CdcSource, table: str, mapping: TableMapping
    ) -> dict[str, tuple[bytes, tuple[Any, ...]]]:
        rows: dict[str, tuple[bytes, tuple[Any, ...]]] = {}
        last_key: Any = None
        limit = self.settings.snapshot_chunk_rows
        while True:
            chunk = source.snapshot_chunk(table, mapping.columns, mapping.key_column, last_key, limit)
            source.end_read()
            for values in chunk:
                rows[str(values[0])] = (row_hash(values), tuple(values))
            if len(chunk) < limit:
                return rows
            last_key = chunk[-1][0]

    def _publish(
        self,
        publisher: TransactionalPublisher,
        table: str,
        mapping: TableMapping,
        previous: dict[str, bytes],
        current: dict[str, tuple[bytes, tuple[Any, ...]]],
        scan_s: int,
        *,
        first: bool,
    ) -> None:
        inserted, updated, deleted = diff_table(previous, current)
        if not (inserted or updated or deleted):
            return
        topic = topic_name(self.settings, table)
        key_schema, value_schema = f"pacs.dbo.{table}Key", f"pacs.dbo.{table}Envelope"
        now = utc_now()
        partitions = publisher.partition_count(topic)
        publisher.begin()
        # A scan has no commit order: removals and updates go first, so an owner set replaced
        # between two scans (a sale) never looks over 100 % to the processors' ledger.
        changes: list[tuple[str, str, tuple[Any, ...] | None]] = [("d", k, None) for k in deleted]
        changes += [("u", k, v) for k, v in updated]
        changes += [("r" if first else "c", k, v) for k, v in inserted]
        for serial, (op, key_text, values) in enumerate(changes, start=1):
            commit_lsn, change_lsn = synthetic_position(scan_s, serial)
            record = None if values is None else mapping.record(values)
            key = mapping.key(record) if record is not None else {mapping.key_field: int(key_text)}
            source = SourceInfo(
                db=self.settings.db_name,
                schema=self.settings.db_schema,
                table=table,
                capture_instance=None,
                commit_lsn=commit_lsn,
                change_lsn=change_lsn,
                event_serial_no=0,  # the change LSN carries the serial (the position allows 0-254 here)
                commit_time=now,
                snapshot="true" if op == "r" else "false",
            )
            value = envelope(op, None, record, source, now)
            publisher.produce(
                topic,
                self.codec.encode(key_schema, key),
                self.codec.encode(value_schema, value),
                # A polled delete has no row image: it goes by key (a delete only lowers a
                # property's owner shares, so its order against the property's other owners is moot).
                partition=mapping.partition(record, partitions),
            )
            hash_key = f"{table}:{key_text}".encode()
            publisher.produce(self.hashes_topic, hash_key, None if values is None else current[key_text][0])
            self.summary.events[op] = self.summary.events.get(op, 0) + 1
        publisher.commit()
        logger.info(
            "polled %s: %d inserted, %d updated, %d deleted", table, len(inserted), len(updated), len(deleted)
        )
