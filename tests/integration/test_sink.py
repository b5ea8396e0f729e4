"""The sink through the real broker and PostgreSQL: guarded upserts, deletes, replays, rejects, crashes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer

from pacs_sync.kafka_topics import TopicSpec, ensure_topics
from pacs_sync.lsn import Lsn
from pacs_sync.sweeps import Sweep, chunk_sweeps, sweeps_topic
from schemas.codec import AvroCodec, SchemaRegistry
from sink import runner as sink_runner
from sink.kafka_io import CleanTopicConsumer
from sink.runner import SinkRunner
from sink.settings import SinkSettings
from sink.target import TargetDatabase
from tests.integration.test_processor import read_all

CODEC = AvroCodec(SchemaRegistry.from_package())


def lsn(n: int) -> str:
    h = f"{n:020x}"
    return f"{h[:8]}:{h[8:16]}:{h[16:]}"


def valuation(
    vid: int,
    commit: int,
    *,
    assessed: str = "100.00",
    deleted: bool = False,
    change: int | None = None,
    op: int = 4,
) -> dict[str, Any]:
    """A clean valuation record at source position (commit, change or commit, op)."""
    values = {
        "property_id": None if deleted else 1000 + vid,
        "tax_year": None if deleted else 2025,
        "assessed_value": None if deleted else Decimal(assessed),
        "market_value": None if deleted else Decimal(assessed),
        "land_value": None if deleted else Decimal("0.00"),
        "improvement_value": None if deleted else Decimal(assessed),
    }
    return {
        "valuation_id": vid,
        **values,
        "source_commit_lsn": lsn(commit),
        "source_change_lsn": lsn(change if change is not None else commit),
        "source_serial": op,
        "source_ts": datetime.now(tz=UTC),
        "deleted": deleted,
    }


@dataclass
class SinkRig:
    bootstrap: str
    prefix: str
    dsn: str
    state_dir: Path

    def settings(self, **overrides: Any) -> SinkSettings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap,
            "clean_topic_prefix": self.prefix,
            "target_dsn": self.dsn,
            "sink_group_id": f"{self.prefix}-sink",
            "state_dir": self.state_dir,
            "metrics_port": 0,
            "sink_batch_max_wait_s": 0.1,
            **overrides,
        }
        return SinkSettings(**values)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PACS_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PACS_CLEAN_TOPIC_PREFIX": self.prefix,
            "PACS_TARGET_DSN": self.dsn,
            "PACS_SINK_GROUP_ID": f"{self.prefix}-sink",
            "PACS_STATE_DIR": str(self.state_dir),
            "PACS_METRICS_PORT": "0",
            **extra,
        }

    def topic(self, entity: str) -> str:
        return f"{self.prefix}.{entity}"

    def send(self, entity: str, records: Sequence[dict[str, Any]], *, partitions: int = 3) -> None:
        ensure_topics(self.bootstrap, [TopicSpec(self.topic(entity), partitions, compacted=True)])
        schema = {
            "valuations": "Valuation",
            "properties": "Property",
            "owners": "Owner",
            "structures": "Structure",
        }
        name = schema[entity]
        key_field = {"valuations": "valuation_id", "properties": "property_id", "owners": "owner_id"}.get(
            entity, "structure_id"
        )
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})
        for record in records:
            key = CODEC.encode(f"io.terrafusion.model.{name}Key", {key_field: record[key_field]})
            producer.produce(
                self.topic(entity), key=key, value=CODEC.encode(f"io.terrafusion.model.{name}", record)
            )
        assert producer.flush(30) == 0

    def run(self, idle_s: float = 2.0, **overrides: Any) -> SinkRunner:
        async def go() -> SinkRunner:
            target = await TargetDatabase.connect(self.settings(**overrides).target_parts)
            try:
                await target.migrate()
                runner = SinkRunner(self.settings(**overrides), target)
                await asyncio.wait_for(runner.run(until_idle_s=idle_s), timeout=120)
                return runner
            finally:
                await target.close()

        return asyncio.run(go())

    def rows(self, sql: str) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return list(await conn.fetch(sql))
            finally:
                await conn.close()

        return asyncio.run(go())


@pytest.fixture
def rig(kafka_bootstrap: str, target_database: str, unique_name: str, tmp_path: Path) -> SinkRig:
    return SinkRig(kafka_bootstrap, unique_name, target_database, tmp_path / "state")


def valuations(rig: SinkRig) -> dict[int, tuple[Any, ...]]:
    rows = rig.rows(
        "SELECT valuation_id, assessed_value, deleted, source_commit_lsn FROM pacs_sync.valuations ORDER BY 1"
    )
    return {r[0]: tuple(r[1:]) for r in rows}


def test_upserts_and_deletes_land_and_views_hide_deleted_rows(rig: SinkRig) -> None:
    rig.send("valuations", [valuation(i, 10 + i, assessed=f"{i}00.00") for i in range(1, 51)])
    rig.send("valuations", [valuation(5, 100, assessed="555.55"), valuation(7, 101, deleted=True)])
    runner = rig.run()
    assert runner.records_written == 52
    table = valuations(rig)
    assert len(table) == 50
    assert table[5] == (Decimal("555.55"), False, lsn(100))
    assert table[7] == (None, True, lsn(101))
    view = {r[0] for r in rig.rows("SELECT valuation_id FROM terrafusion.valuations")}
    assert len(view) == 49
    assert 7 not in view
    offsets = rig.rows("SELECT sum(next_offset) FROM pacs_sync.sync_offsets")
    assert offsets[0][0] == 52


def test_out_of_order_and_duplicate_delivery_cannot_move_a_row_backwards(rig: SinkRig) -> None:
    newest = valuation(1, 300, assessed="300.00")
    rig.send(
        "valuations", [newest, valuation(1, 200, assessed="200.00"), valuation(1, 100, assessed="100.00")]
    )
    rig.send("valuations", [valuation(2, 500, deleted=True), valuation(2, 400, assessed="400.00")])
    rig.send("valuations", [newest, newest])
    rig.run()
    table = valuations(rig)
    assert table[1] == (Decimal("300.00"), False, lsn(300))
    assert table[2] == (None, True, lsn(500)), "a stale insert resurrected a deleted row"
    # Same commit LSN: the change LSN, then the operation, order the changes (a key change's d then c).
    rig.send("valuations", [valuation(3, 600, change=602, assessed="2.00"), valuation(3, 600, change=601)])
    rig.send(
        "valuations",
        [valuation(4, 700, change=700, op=2, assessed="9.00"), valuation(4, 700, change=700, op=1)],
    )
    rig.run()
    table = valuations(rig)
    assert table[3][0] == Decimal("2.00")
    assert table[4][0] == Decimal("9.00"), "op 2 (insert) follows op 1 (delete) at one change LSN"


def test_replay_from_offset_zero_over_a_live_table_changes_nothing(rig: SinkRig) -> None:
    records = [valuation(i, 1000 + i, assessed=f"{i}.00") for i in range(1, 301)]
    records += [valuation(i, 2000 + i, assessed=f"{i}.50") for i in range(1, 301, 3)]
    records += [valuation(i, 3000 + i, deleted=True) for i in range(2, 301, 5)]
    rig.send("valuations", records)
    rig.run()
    before = rig.rows("SELECT * FROM pacs_sync.valuations ORDER BY valuation_id")
    rig.rows("DELETE FROM pacs_sync.sync_offsets")
    runner = rig.run()
    assert runner.records_written == len(records), "the replay did not read from offset 0"
    after = rig.rows("SELECT * FROM pacs_sync.valuations ORDER BY valuation_id")
    assert [tuple(r) for r in after] == [tuple(r) for r in before]  # synced_at included: nothing rewritten


def test_a_rejected_row_goes_to_the_dead_letter_topic_and_the_rest_commits(rig: SinkRig) -> None:
    good = [valuation(i, 10 + i) for i in range(1, 40)]
    bad = valuation(40, 99, assessed="-5.00")  # the target's CHECK (assessed_value >= 0) refuses it
    rig.send("valuations", [*good[:20], bad, *good[20:]], partitions=1)
    runner = rig.run()
    assert runner.records_written == 40
    table = valuations(rig)
    assert sorted(table) == list(range(1, 40))
    letters = read_all(rig.bootstrap, f"{rig.prefix}.dlq")
    assert len(letters) == 1
    _, value, headers = letters[0]
    assert headers["error_code"] == b"PACS-011"
    assert headers["rule_ids"] == b"PG-23514"
    letter = CODEC.decode(value or b"").value
    assert letter["error_code"] == "PACS-011"
    assert "valuations_assessed_value_check" in letter["violations"][0]["message"]
    assert letter["source_commit_lsn"] == lsn(99)
    assert CODEC.decode(letter["value"]).value["valuation_id"] == 40
    offsets = rig.rows("SELECT next_offset FROM pacs_sync.sync_offsets")
    assert [r[0] for r in offsets] == [40], "the offset must move past the rejected row"


def test_kill_9_mid_batch_in_a_loop_leaves_the_target_equal_to_the_source(rig: SinkRig) -> None:
    """The sink is killed at random moments while writing; each restart resumes from PostgreSQL's offsets."""
    seed = int(os.environ.get("PACS_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed={seed}")  # noqa: T201 - rerun a failure with PACS_TEST_SEED
    expected: dict[int, dict[str, Any]] = {}
    records = []
    commit = 10
    for _ in range(100_000):
        vid = rng.randrange(1, 8000)
        commit += 1
        record = valuation(vid, commit, assessed=f"{rng.randrange(1, 10**6)}.{rng.randrange(100):02d}")
        if rng.random() < 0.1:
            record = valuation(vid, commit, deleted=True)
        records.append(record)
        expected[vid] = record
    rig.send("valuations", records)
    env = rig.env(PACS_SINK_BATCH_SIZE="100")
    kills = 0
    mid_batch = 0
    for _ in range(6):
        sink = subprocess.Popen([sys.executable, "-m", "pacs_sync", "sink"], env=env, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(1.2, 2.4))
        written = rig.rows("SELECT coalesce(sum(next_offset), 0) FROM pacs_sync.sync_offsets")[0][0]
        active = rig.rows(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pacs-sync-sink' "
            "AND datname = current_database() AND state <> 'idle'"
        )[0][0]
        sink.send_signal(signal.SIGKILL)
        sink.wait(timeout=30)
        kills += 1
        mid_batch += bool(active)
        if written >= len(records):
            break
    assert kills >= 3
    runner = rig.run(idle_s=3.0, sink_batch_size=5000)
    assert runner.records_written <= len(records)
    table = valuations(rig)
    offsets = rig.rows("SELECT topic, partition, next_offset FROM pacs_sync.sync_offsets")
    assert sum(r[2] for r in offsets) == len(records), offsets
    assert set(table) == set(expected)
    for vid, record in expected.items():
        want = (record["assessed_value"], record["deleted"], record["source_commit_lsn"])
        assert table[vid] == want, vid
    print(f"kills={kills} mid_batch={mid_batch} replayed_after={runner.records_written}")  # noqa: T201


def test_a_dropped_target_connection_is_retried_without_loss(rig: SinkRig, stack: Any) -> None:
    """Terminating the sink's sessions mid-run (as a PostgreSQL restart would) loses nothing."""
    rig.send("valuations", [valuation(i, 10 + i) for i in range(1, 20001)])

    async def go() -> SinkRunner:
        settings = rig.settings(sink_batch_size=200)
        target = await TargetDatabase.connect(settings.target_parts)
        await target.migrate()
        runner = SinkRunner(settings, target)
        task = asyncio.create_task(runner.run(until_idle_s=3.0))
        killer = await asyncpg.connect(rig.dsn)
        terminated = 0
        for _ in range(3):
            await asyncio.sleep(0.7)
            terminated += await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'pacs-sync-sink' AND datname = current_database()"
            )
        await killer.close()
        await asyncio.wait_for(task, timeout=120)
        await target.close()
        assert terminated >= 1
        return runner

    runner = asyncio.run(go())
    assert runner.metrics.errors.labels("PACS-001")._value.get() >= 1
    assert len(valuations(rig)) == 20000


def test_a_consumer_that_stops_fetching_is_rebuilt(rig: SinkRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog: the first consumer pauses its partitions after its first batch (a consumer that
    stopped fetching, as one did after a broker restart); what is sent afterwards still lands,
    through a rebuilt consumer positioned from PostgreSQL."""
    rig.send("valuations", [valuation(i, 10 + i) for i in range(1, 101)])
    stalled: list[CleanTopicConsumer] = []

    class StallingConsumer(CleanTopicConsumer):
        def poll_batch(self, max_records: int, max_wait_s: float) -> list[Any]:
            messages = super().poll_batch(max_records, max_wait_s)
            if messages and not stalled:
                stalled.append(self)
                self._consumer.pause(self._consumer.assignment())
            return messages

    monkeypatch.setattr(sink_runner, "CleanTopicConsumer", StallingConsumer)

    async def go() -> SinkRunner:
        settings = rig.settings(sink_stall_s=2, sink_batch_size=10)
        target = await TargetDatabase.connect(settings.target_parts)
        await target.migrate()
        runner = SinkRunner(settings, target)
        task = asyncio.create_task(runner.run(until_idle_s=8.0))
        while not stalled:
            await asyncio.sleep(0.1)
        await asyncio.to_thread(rig.send, "valuations", [valuation(i, 10 + i) for i in range(101, 201)])
        await asyncio.wait_for(task, timeout=120)
        await target.close()
        return runner

    runner = asyncio.run(go())
    assert len(valuations(rig)) == 200
    assert runner.metrics.errors.labels("PACS-010")._value.get() >= 1


def test_undecodable_bytes_on_a_clean_topic_are_dead_lettered(rig: SinkRig) -> None:
    ensure_topics(rig.bootstrap, [TopicSpec(rig.topic("valuations"), 1, compacted=True)])
    producer = Producer({"bootstrap.servers": rig.bootstrap})
    producer.produce(rig.topic("valuations"), key=b"k", value=b"\xc3\x01garbage-" + uuid.uuid4().bytes)
    assert producer.flush(10) == 0
    rig.send("valuations", [valuation(1, 10)], partitions=1)
    rig.run()
    assert list(valuations(rig)) == [1]
    letters = read_all(rig.bootstrap, f"{rig.prefix}.dlq")
    assert [h["error_code"] for _, _, h in letters] == [b"PACS-012"]


def test_resync_rebuilds_and_swaps_without_losing_changes_made_during_it(rig: SinkRig) -> None:
    """A live sink keeps writing while the resync replays; drift in the live table is repaired."""
    import threading

    from sink.resync import run_resync

    rng = random.Random(7)
    expected: dict[int, dict[str, Any]] = {}
    commit = 10

    def batch(n: int) -> list[dict[str, Any]]:
        nonlocal commit
        out = []
        for _ in range(n):
            commit += 1
            vid = rng.randrange(1, 6000)
            record = valuation(vid, commit, assessed=f"{rng.randrange(1, 10**6)}.00")
            if rng.random() < 0.05:
                record = valuation(vid, commit, deleted=True)
            out.append(record)
            expected[vid] = record
        return out

    rig.send("valuations", batch(30_000))
    rig.run()
    # Drift a replay cannot repair (same positions, different data): only a rebuild can.
    rig.rows("UPDATE pacs_sync.valuations SET land_value = 1.00 WHERE valuation_id < 200 AND NOT deleted")
    live_sink = subprocess.Popen(
        [sys.executable, "-m", "pacs_sync", "sink"],
        env=rig.env(PACS_SINK_BATCH_SIZE="200"),
        stderr=subprocess.PIPE,
    )
    during = [batch(1000) for _ in range(20)]
    sent_at: list[float] = []

    def send_during() -> None:
        for chunk in during:
            rig.send("valuations", chunk)
            sent_at.append(time.monotonic())
            time.sleep(0.15)

    sender = threading.Thread(target=send_during)
    try:
        sender.start()
        time.sleep(0.5)
        resync_started = time.monotonic()
        report = asyncio.run(run_resync(rig.settings(), ["valuations"]))
        resync_finished = time.monotonic()
        sender.join(timeout=120)
        total = 30_000 + 20_000
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = rig.rows(
                "SELECT coalesce(sum(next_offset), 0) FROM pacs_sync.sync_offsets WHERE consumer = "
                f"'{rig.prefix}-sink'"
            )[0][0]
            if done >= total:
                break
            time.sleep(0.3)
        assert done == total
    finally:
        live_sink.send_signal(signal.SIGTERM)
        live_sink.wait(timeout=30)
    assert any(resync_started < t < resync_finished for t in sent_at), "no change was made during the resync"
    assert report.replayed["valuations"] >= 30_000
    table = valuations(rig)
    assert set(table) == set(expected)
    for vid, record in expected.items():
        assert table[vid] == (record["assessed_value"], record["deleted"], record["source_commit_lsn"]), vid
    drift = rig.rows("SELECT count(*) FROM pacs_sync.valuations WHERE land_value = 1.00")[0][0]
    assert drift == 0, "the rebuilt table still holds the drifted values"
    runs = rig.rows("SELECT kind, state FROM pacs_sync.sync_runs")
    assert [tuple(r) for r in runs] == [("resync", "succeeded")]
    assert rig.rows("SELECT count(*) FROM pacs_sync.sync_offsets WHERE consumer LIKE 'resync-%'")[0][0] == 0
    assert rig.rows("SELECT to_regclass('pacs_sync.valuations__shadow') IS NULL")[0][0]
    view = rig.rows("SELECT count(*) FROM terrafusion.valuations")[0][0]
    assert view == sum(1 for r in expected.values() if not r["deleted"])


def test_delete_markers_older_than_the_retention_are_purged(rig: SinkRig) -> None:
    rig.send("valuations", [valuation(1, 10), valuation(2, 11), valuation(1, 12, deleted=True)], partitions=1)
    rig.send("valuations", [valuation(2, 13, deleted=True)], partitions=1)
    rig.run()
    rig.rows("UPDATE pacs_sync.valuations SET synced_at = now() - interval '10 days' WHERE valuation_id = 1")
    rig.send("valuations", [valuation(3, 14)], partitions=1)
    rig.run(marker_retention_days=5)
    assert sorted(valuations(rig)) == [2, 3], "only the marker older than the retention goes"


def test_a_re_snapshot_sweep_marks_only_older_rows_the_source_no_longer_has(rig: SinkRig) -> None:
    """RELIABILITY.md problem 3: rows deleted while their changes were lost go at the re-snapshot."""
    rig.send("valuations", [valuation(i, 10 + i) for i in range(1, 13)])
    rig.send("valuations", [valuation(11, 500, assessed="11.00"), valuation(12, 30, deleted=True)])
    topic_prefix = f"s{uuid.uuid4().hex[:8]}"
    snapshot = Lsn.parse(lsn(100))
    # The source had 1, 2, 3, 5 up to the first chunk's last key, and 6, 7, 9, 10 after it; 11 changed
    # after the snapshot LSN (position 500), 12 was already deleted.
    sweeps = chunk_sweeps("valuations", "PropertyValue", snapshot, None, [1, 2, 3, 5], last=False)
    sweeps += chunk_sweeps("valuations", "PropertyValue", snapshot, 5, [6, 7, 9, 10], last=True)
    sweeps.append(Sweep("owners", "PropertyOwner", snapshot, None, None, ()))  # an entity with no rows

    def send_sweeps() -> None:
        topic = sweeps_topic(topic_prefix, "pacs")
        ensure_topics(rig.bootstrap, [TopicSpec(topic, 1)])
        producer = Producer({"bootstrap.servers": rig.bootstrap})
        for sweep in sweeps:
            producer.produce(topic, key=sweep.entity.encode(), value=sweep.to_json())
        assert producer.flush(30) == 0

    send_sweeps()
    rig.run(topic_prefix=topic_prefix)
    table = valuations(rig)
    assert table[4] == (None, True, lsn(100))
    assert table[8] == (None, True, lsn(100))
    assert table[11] == (Decimal("11.00"), False, lsn(500)), "a row newer than the snapshot was swept"
    assert table[12] == (None, True, lsn(30))
    assert all(not table[k][1] for k in (1, 2, 3, 5, 6, 7, 9, 10))
    swept_positions = rig.rows("SELECT source_position FROM pacs_sync.valuations WHERE valuation_id = 4")
    assert bytes(swept_positions[0][0]) == sweeps[0].position

    # Applying the sweeps again changes nothing; an older change of a swept key cannot bring it back.
    before = rig.rows("SELECT valuation_id, synced_at FROM pacs_sync.valuations ORDER BY 1")
    send_sweeps()
    rig.send("valuations", [valuation(4, 50, assessed="4.00")])
    rig.run(topic_prefix=topic_prefix)
    assert rig.rows("SELECT valuation_id, synced_at FROM pacs_sync.valuations ORDER BY 1") == before
    offsets = rig.rows(
        f"SELECT next_offset FROM pacs_sync.sync_offsets WHERE topic = '{sweeps_topic(topic_prefix, 'pacs')}'"
    )
    assert offsets[0][0] == 2 * len(sweeps)


def test_the_extreme_dates_round_trip_exactly(rig: SinkRig) -> None:
    """SQL Server's 0001-01-01 and 9999-12-31 are stored as those dates, never as -infinity/infinity."""
    owner = {
        "owner_id": 1,
        "property_id": 2,
        "owner_name": "Open End Trust",
        "owner_type": "trust",
        "ownership_pct": Decimal("100.00"),
        "start_date": date(1, 1, 1),
        "end_date": date(9999, 12, 31),
        "source_commit_lsn": lsn(10),
        "source_change_lsn": lsn(10),
        "source_serial": 2,
        "source_ts": datetime.now(tz=UTC),
        "deleted": False,
    }
    ordinary = {**owner, "owner_id": 2, "start_date": date(2020, 2, 29), "end_date": date(2030, 1, 1)}
    rig.send("owners", [owner, ordinary], partitions=1)
    rig.run()
    stored = rig.rows(
        "SELECT owner_id, start_date::text, end_date::text, isfinite(end_date) "
        "FROM pacs_sync.owners ORDER BY 1"
    )
    assert [tuple(r) for r in stored] == [
        (1, "0001-01-01", "9999-12-31", True),
        (2, "2020-02-29", "2030-01-01", True),
    ]

    # Read back through the sink's own pool (its codec): the same dates.
    async def read() -> list[tuple[Any, ...]]:
        target = await TargetDatabase.connect(rig.settings().target_parts)
        try:
            rows = await target.fetch("SELECT start_date, end_date FROM pacs_sync.owners ORDER BY owner_id")
        finally:
            await target.close()
        return [tuple(r) for r in rows]

    assert asyncio.run(read()) == [(date(1, 1, 1), date(9999, 12, 31)), (date(2020, 2, 29), date(2030, 1, 1))]


def test_a_connection_cut_inside_a_copy_is_a_retriable_lost_connection(rig: SinkRig) -> None:
    """A backend terminated while the sink COPYs (as a PostgreSQL restart does) is PACS-001, never fatal.

    asyncpg reports most of these cuts as InternalClientError("cannot switch to state 15; another
    operation (2) is in progress"); the pool must drop the broken connection, so the retry works.
    """
    from sink.changes import ConsumedRecord, to_row
    from sink.errors import TargetUnavailableError
    from sink.tables import ENTITIES

    spec = ENTITIES["valuations"]
    batch = [ConsumedRecord(to_row(spec, valuation(i, 10 + i)), "t", 0, i, None, b"") for i in range(30_000)]
    forms: list[str] = []

    async def go() -> None:
        target = await TargetDatabase.connect(rig.settings().target_parts, pool_size=1)
        killer = await asyncpg.connect(rig.dsn)
        try:
            await target.migrate()
            for attempt in range(6):
                pid = (await target.fetch("SELECT pg_backend_pid()"))[0][0]
                write = asyncio.create_task(target.write_batch("cut", {"valuations": batch}, {("t", 0): 1}))
                for _ in range(500):  # cut it inside the COPY
                    query = await killer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
                    if (query or "").startswith("COPY") or write.done():
                        break
                    await asyncio.sleep(0.002)
                await asyncio.sleep(0.01 * attempt)
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
                (failed,) = await asyncio.wait_for(asyncio.gather(write, return_exceptions=True), timeout=60)
                if isinstance(failed, BaseException):
                    assert isinstance(failed, TargetUnavailableError), repr(failed)
                    assert failed.retriable
                    assert failed.code.value == "PACS-001"
                    forms.append(f"{type(failed.__cause__).__name__}: {failed.__cause__}"[:80])
                else:
                    forms.append("committed before the cut")
                # The broken connection is dropped: a statement on it fails at most once (a cut that
                # landed while it was idle in the pool), as PACS-001; the retry runs on a new backend.
                try:
                    new_pid = (await target.fetch("SELECT pg_backend_pid()"))[0][0]
                except TargetUnavailableError:
                    forms.append("idle connection cut, dropped on its next use")
                    new_pid = (await target.fetch("SELECT pg_backend_pid()"))[0][0]
                assert new_pid != pid
            await target.write_batch("cut", {"valuations": batch}, {("t", 0): 30_000})
        finally:
            await killer.close()
            await target.close()

    asyncio.run(go())
    print(f"cut forms: {forms}")  # noqa: T201 - which forms asyncpg used this run
    assert any(form != "committed before the cut" for form in forms), forms
    assert rig.rows("SELECT count(*) FROM pacs_sync.valuations")[0][0] == 30_000


def test_resync_replays_the_re_snapshot_sweeps_so_swept_rows_stay_deleted(
    rig: SinkRig, caplog: pytest.LogCaptureFixture
) -> None:
    """The clean topics keep a swept row's last live record: a rebuild must apply the sweeps again."""
    import logging

    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

    from sink.resync import run_resync

    topic_prefix = f"s{uuid.uuid4().hex[:8]}"
    sweep_topic = sweeps_topic(topic_prefix, "pacs")
    admin = AdminClient({"bootstrap.servers": rig.bootstrap})
    # As an older version created it: the broker's time-limited retention.
    created = admin.create_topics([NewTopic(sweep_topic, 1, config={"retention.ms": "604800000"})])
    created[sweep_topic].result(timeout=30)
    rig.send("valuations", [valuation(i, 10 + i) for i in range(1, 7)])
    rig.send("valuations", [valuation(6, 500, assessed="6.00")])
    # The re-snapshot at LSN 100 found 1, 2, 3, 5: 4 was deleted in the lost window, 6 changed after.
    producer = Producer({"bootstrap.servers": rig.bootstrap})
    for sweep in chunk_sweeps(
        "valuations", "PropertyValue", Lsn.parse(lsn(100)), None, [1, 2, 3, 5], last=True
    ):
        producer.produce(sweep_topic, key=sweep.entity.encode(), value=sweep.to_json())
    assert producer.flush(30) == 0
    with caplog.at_level(logging.WARNING, logger="pacs_sync.kafka_topics"):
        rig.run(topic_prefix=topic_prefix)
    assert f"topic {sweep_topic} kept its records for a limited time (retention.ms=604800000)" in caplog.text

    config = admin.describe_configs([ConfigResource(ResourceType.TOPIC, sweep_topic)])
    entries = next(iter(config.values())).result(timeout=30)
    assert (entries["retention.ms"].value, entries["retention.bytes"].value) == ("-1", "-1")
    assert entries["cleanup.policy"].value == "delete"
    expected = {
        **{i: (Decimal("100.00"), False, lsn(10 + i)) for i in (1, 2, 3, 5)},
        4: (None, True, lsn(100)),
        6: (Decimal("6.00"), False, lsn(500)),
    }
    assert valuations(rig) == expected

    report = asyncio.run(run_resync(rig.settings(topic_prefix=topic_prefix), ["valuations"]))
    assert valuations(rig) == expected, "the rebuild brought back a row the re-snapshot swept"
    assert report.swept == {"valuations": 1}
    assert rig.rows("SELECT to_regclass('pacs_sync.valuations__shadow') IS NULL")[0][0]

    # Once the purge dropped the marker, a rebuild marks the row again (and the view still hides it).
    rig.rows("UPDATE pacs_sync.valuations SET synced_at = now() - interval '10 days' WHERE valuation_id = 4")
    rig.send("valuations", [valuation(7, 600)])
    rig.run(topic_prefix=topic_prefix, marker_retention_days=5)
    assert 4 not in valuations(rig)
    asyncio.run(run_resync(rig.settings(topic_prefix=topic_prefix), ["valuations"]))
    assert valuations(rig) == {**expected, 7: (Decimal("100.00"), False, lsn(600))}
    view = rig.rows("SELECT valuation_id FROM terrafusion.valuations ORDER BY 1")
    assert [r[0] for r in view] == [1, 2, 3, 5, 6, 7]


def test_resync_catches_up_with_a_sweep_the_live_sink_applied_during_it(
    rig: SinkRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep the live sink applies during the rebuild is in the swapped-in table too."""
    from sink.resync import Resync, run_resync

    topic_prefix = f"s{uuid.uuid4().hex[:8]}"
    sweep_topic = sweeps_topic(topic_prefix, "pacs")

    def publish(keys: list[int], at: int) -> None:
        producer = Producer({"bootstrap.servers": rig.bootstrap})
        for sweep in chunk_sweeps("valuations", "PropertyValue", Lsn.parse(lsn(at)), None, keys, last=True):
            producer.produce(sweep_topic, key=sweep.entity.encode(), value=sweep.to_json())
        assert producer.flush(30) == 0

    rig.send("valuations", [valuation(i, 10 + i) for i in range(1, 6)])
    rig.run(topic_prefix=topic_prefix)  # creates the sweep topic
    publish([1, 2, 3, 5], 100)
    rig.run(topic_prefix=topic_prefix)
    replay_sweeps = Resync._replay_sweeps
    rounds = 0

    async def and_meanwhile_a_re_snapshot(self: Resync, *args: Any) -> int:
        nonlocal rounds
        written = await replay_sweeps(self, *args)
        rounds += 1
        if rounds == 1:  # after the replay read the sweep topic's end: 5 goes, the live sink applies it
            publish([1, 2, 3], 200)
            await asyncio.to_thread(rig.run, topic_prefix=topic_prefix)
        return written

    monkeypatch.setattr(Resync, "_replay_sweeps", and_meanwhile_a_re_snapshot)
    report = asyncio.run(run_resync(rig.settings(topic_prefix=topic_prefix), ["valuations"]))
    table = valuations(rig)
    assert table[5] == (None, True, lsn(200)), "the rebuilt table lacks the sweep applied during the resync"
    assert table[4] == (None, True, lsn(100))
    assert rounds >= 2
    assert report.swept == {"valuations": 2}
