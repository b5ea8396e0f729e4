"""The producer against the CDC emulator and the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from pacs_sync import dbapi
from pacs_sync.errors import ErrorCode
from pacs_sync.lsn import position_bytes
from pacs_sync.metrics import ProducerMetrics
from producer.errors import RetentionExceededError
from producer.runner import ProducerRunner, offsets_topic, run_producer, topic_name
from producer.settings import ProducerSettings
from schemas.codec import AvroCodec, SchemaRegistry
from tests.integration.conftest import EmulatedPacs

TABLES = ("Property", "PropertyOwner", "PropertyValue", "Structure")
INSERT_PROPERTY = "INSERT INTO dbo.Property (PropertyID, ParcelNumber, City, Acreage) VALUES (?, ?, ?, ?)"
INSERT_OWNER = (
    "INSERT INTO dbo.PropertyOwner (PropertyOwnerID, PropertyID, OwnerName, OwnerType, OwnershipPercentage) "
    "VALUES (?, ?, ?, ?, ?)"
)


@dataclass
class ProducerRig:
    pacs: EmulatedPacs
    settings: ProducerSettings
    codec: AvroCodec

    def runner(self) -> ProducerRunner:
        return ProducerRunner(self.settings, self.codec, ProducerMetrics.create(CollectorRegistry()))

    def run_until_caught_up(self) -> None:
        # Through the production dispatcher: PACS_ENABLE_CDC=false runs the polling producer.
        metrics = ProducerMetrics.create(CollectorRegistry())
        run_producer(self.settings, self.codec, metrics, threading.Event(), until_caught_up=True)

    def events(self, table: str) -> list[dict[str, Any]]:
        records = read_topic(self.settings, topic_name(self.settings, table))
        return [self.codec.decode(value).value for _key, value in records if value is not None]

    def write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        conn = self.pacs.writer()
        try:
            cursor = conn.cursor()
            for sql, params in statements:
                cursor.execute(sql, params)
            conn.commit()
        finally:
            conn.close()

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "PACS_DB_NAME": s.db_name,
            "PACS_DB_USER": s.db_user,
            "PACS_DB_PASSWORD": s.db_password.get_secret_value(),
            "PACS_TOPIC_PREFIX": s.topic_prefix,
            "PACS_METRICS_PORT": "0",
            "PACS_POLL_INTERVAL_S": "0.2",
        }


def read_topic(settings: ProducerSettings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every committed record of a topic, all partitions, in offset order per partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        consumer.assign(partitions)
        records: list[tuple[bytes | None, bytes | None]] = []
        idle = 0
        while idle < 4:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            if not batch:
                positions = consumer.position(partitions)
                if all(p.offset >= ends[p.partition] or ends[p.partition] == 0 for p in positions):
                    break
                idle += 1
                continue
            idle = 0
            records.extend((m.key(), m.value()) for m in batch if m.error() is None and m.value() is not None)
        return records
    finally:
        consumer.close()


@pytest.fixture
def rig(emulated_pacs: EmulatedPacs, kafka_bootstrap: str, unique_name: str) -> ProducerRig:
    settings = ProducerSettings(
        db_name=emulated_pacs.database,
        db_user=emulated_pacs.reader_user,
        db_password=SecretStr(emulated_pacs.reader_password),
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=unique_name,
        topic_partitions=2,
        metrics_port=0,
        poll_interval_s=0.2,
        min_poll_interval_s=0.0,
        heartbeat_interval_s=0.5,
        snapshot_chunk_rows=50,
        page_rows=7,
    )
    return ProducerRig(emulated_pacs, settings, AvroCodec(SchemaRegistry.from_package()))


def positions(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [
        (e["source"]["commit_lsn"], e["source"]["change_lsn"] or "", e["source"]["event_serial_no"] or 0)
        for e in events
    ]


def test_snapshot_then_stream_every_kind_of_change(rig: ProducerRig) -> None:
    rig.write(*[(INSERT_PROPERTY, (i, f"P-{i}", "Kennewick", 1.5)) for i in range(1, 121)])
    rig.write((INSERT_OWNER, (1, 1, "SMITH JOHN A", "Individual", 100)))
    rig.pacs.admin.scan()
    rig.run_until_caught_up()
    snapshot = rig.events("Property")
    assert len(snapshot) == 120
    assert {e["op"] for e in snapshot} == {"r"}
    assert sorted(e["after"]["PropertyID"] for e in snapshot) == list(range(1, 121))
    assert [e["op"] for e in rig.events("PropertyOwner")] == ["r"]
    assert [e for e in snapshot + rig.events("PropertyOwner") if e["source"]["snapshot"] == "last"]

    rig.write((INSERT_PROPERTY, (200, "P-200", "Pasco", 2)))  # c
    rig.write(
        ("UPDATE dbo.Property SET City = ?, Acreage = ? WHERE PropertyID = ?", ("Richland", 3.25, 1))
    )  # u
    rig.write(("DELETE FROM dbo.Property WHERE PropertyID = ?", (120,)))  # d
    rig.write(
        ("UPDATE dbo.Property SET PropertyID = ? WHERE PropertyID = ?", (300, 119))
    )  # key change: d + c
    rig.write(  # one transaction over two tables
        (INSERT_PROPERTY, (201, "P-201", "Prosser", 4)),
        (INSERT_OWNER, (2, 201, "DOE JANE", "Individual", 100)),
    )
    writer = rig.pacs.writer()
    writer.cursor().execute(INSERT_PROPERTY, (999, "P-999", "Nowhere", 1))
    writer.rollback()  # never appears
    writer.close()
    rig.pacs.admin.scan()
    rig.run_until_caught_up()

    streamed = [e for e in rig.events("Property") if e["op"] != "r"]
    summary = [
        (e["op"], (e["after"] or e["before"])["PropertyID"])
        for e in sorted(streamed, key=lambda e: positions([e]))
    ]
    assert summary == [("c", 200), ("u", 1), ("d", 120), ("d", 119), ("c", 300), ("c", 201)]
    update = next(e for e in streamed if e["op"] == "u")
    assert update["before"]["City"] == "Kennewick"
    assert update["after"]["City"] == "Richland"
    assert str(update["after"]["Acreage"]) == "3.2500"
    assert update["source"]["capture_instance"] == "dbo_Property"
    assert update["source"]["commit_ts_ms"] is not None
    key_change = [e for e in streamed if (e["after"] or e["before"])["PropertyID"] in (119, 300)]
    assert key_change[0]["source"]["change_lsn"] == key_change[1]["source"]["change_lsn"]
    owner = [e for e in rig.events("PropertyOwner") if e["op"] == "c"]
    multi = next(e for e in streamed if e["after"] and e["after"]["PropertyID"] == 201)
    assert owner[0]["source"]["commit_lsn"] == multi["source"]["commit_lsn"]
    assert all(e["after"] is None or e["after"]["PropertyID"] != 999 for e in rig.events("Property"))
    # Nothing is published twice, and every streamed change is after the snapshot LSN.
    streamed_positions = positions(streamed)
    assert len(set(streamed_positions)) == len(streamed_positions) == 6
    assert min(streamed_positions)[0] > snapshot[0]["source"]["commit_lsn"]


def _owner_events_by_partition(rig: ProducerRig) -> dict[int, list[dict[str, Any]]]:
    """The owner change topic's events per partition, in offset order."""
    topic = topic_name(rig.settings, "PropertyOwner")
    consumer = Consumer(
        {
            "bootstrap.servers": rig.settings.kafka_bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            tp = TopicPartition(topic, partition, 0)
            end = consumer.get_watermark_offsets(tp, timeout=10)[1]
            consumer.assign([tp])
            events = by_partition.setdefault(partition, [])
            while end and consumer.position([tp])[0].offset < end:
                for message in consumer.consume(num_messages=1000, timeout=1):
                    value = message.value()
                    if message.error() is None and value is not None:
                        events.append(rig.codec.decode(value).value)
        return by_partition
    finally:
        consumer.close()


def test_owner_events_of_a_property_share_one_partition_in_commit_order(rig: ProducerRig) -> None:
    # A sale ends the sellers and inserts the buyers in one transaction; keyed by owner, the events
    # would spread over the partitions and a processor could check a buyer before the sellers end.
    rig.write(*[(INSERT_PROPERTY, (i, f"P-{i}", "Kennewick", 1)) for i in range(1, 9)])
    rig.write(
        *[
            (INSERT_OWNER, (10 * i + n, i, f"SELLER {n}", "Individual", 50))
            for i in range(1, 9)
            for n in (1, 2)
        ]
    )
    rig.pacs.admin.scan()
    rig.run_until_caught_up()  # snapshot
    for i in range(1, 9):
        rig.write(
            ("UPDATE dbo.PropertyOwner SET EndDate = ? WHERE PropertyID = ?", (date(2026, 6, 1), i)),
            *[(INSERT_OWNER, (1000 + 10 * i + n, i, f"BUYER {n}", "Individual", 50)) for n in (1, 2)],
        )
    rig.pacs.admin.scan()
    rig.run_until_caught_up()

    by_partition = _owner_events_by_partition(rig)
    partitions_of: dict[int, set[int]] = {}
    for partition, events in by_partition.items():
        for event in events:
            partitions_of.setdefault((event["after"] or event["before"])["PropertyID"], set()).add(partition)
    assert sorted(partitions_of) == list(range(1, 9))
    assert all(len(p) == 1 for p in partitions_of.values()), partitions_of
    assert len({next(iter(p)) for p in partitions_of.values()}) == 2  # both partitions in use
    for events in by_partition.values():
        assert positions(events) == sorted(positions(events))  # commit order within the partition
        for pid in {e["after"]["PropertyID"] for e in events}:
            sale = [e for e in events if e["after"]["PropertyID"] == pid and e["op"] != "r"]
            assert [(e["op"], e["after"]["OwnerName"].split()[0]) for e in sale] == [
                ("u", "SELLER"),
                ("u", "SELLER"),
                ("c", "BUYER"),
                ("c", "BUYER"),
            ]


def test_restarting_resumes_without_duplicates(rig: ProducerRig) -> None:
    rig.write((INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    rig.pacs.admin.scan()
    rig.run_until_caught_up()
    for i in range(2, 12):
        rig.write((INSERT_PROPERTY, (i, f"P-{i}", "Kennewick", 1)))
    rig.pacs.admin.scan()
    rig.run_until_caught_up()
    rig.run_until_caught_up()
    events = rig.events("Property")
    assert sorted((e["after"]["PropertyID"], e["op"]) for e in events) == [(1, "r")] + [
        (i, "c") for i in range(2, 12)
    ]
    offsets = read_topic(rig.settings, offsets_topic(rig.settings))
    assert offsets  # the position lives in the compacted offsets topic


def test_retention_loss_is_detected_mid_stream(rig: ProducerRig) -> None:
    admin = rig.pacs.admin
    admin.configure_jobs(idle_heartbeat_s=3600)
    rig.write((INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    admin.scan()
    runner = rig.runner()
    try:
        runner.start()
        runner.snapshot(threading.Event())
        runner.poll()
        rig.write((INSERT_PROPERTY, (2, "P-2", "Kennewick", 1)))
        admin.scan()
        admin.advance_clock(5 * 24 * 3600)
        rig.write((INSERT_PROPERTY, (3, "P-3", "Kennewick", 1)))
        admin.scan()
        admin.cleanup()  # change 2 is gone before the producer read it
        with pytest.raises(RetentionExceededError) as caught:
            runner.poll()
        assert caught.value.code is ErrorCode.CDC_RETENTION_EXCEEDED
        assert "dbo_Property" in str(caught.value)
    finally:
        runner.close()


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs_sync", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_check_connection_reports_ok_and_conformance(rig: ProducerRig) -> None:
    result = _cli(["check-connection", "--conformance"], rig.env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")
    assert "CHANGES dbo_Property" in result.stdout
    assert "FAIL" not in result.stdout


def test_closed_port_is_pacs_001_and_wrong_password_is_pacs_002(rig: ProducerRig) -> None:
    closed = _cli(["check-connection"], {**rig.env(), "PACS_DB_PORT": "1"})
    assert closed.returncode == 1
    assert "PACS-001" in closed.stderr
    wrong = _cli(["check-connection"], {**rig.env(), "PACS_DB_PASSWORD": "not-it"})
    assert wrong.returncode == 1
    assert "PACS-002" in wrong.stderr


def test_reader_without_cdc_access_is_reported(rig: ProducerRig, stack: Any) -> None:
    conn = dbapi.connect(**rig.pacs.conn_kwargs, autocommit=True)
    try:
        conn.cursor().execute(f'REVOKE cdc_emu_readers FROM "{rig.pacs.reader_user}"')
    finally:
        conn.close()
    result = _cli(["check-connection"], rig.env())
    assert result.returncode == 1
    assert "FAIL" in result.stdout


def test_kill_9_at_random_points_loses_and_duplicates_nothing(rig: ProducerRig) -> None:
    import random
    import time

    from pacs_sync.lsn import Lsn
    from pacs_sync.sim.agent import CaptureAgent

    rng = random.Random(1234)
    rig.write(*[(INSERT_PROPERTY, (i, f"P-{i}", "Kennewick", 1)) for i in range(1, 301)])
    rig.pacs.admin.configure_jobs(capture_interval_s=0.1)
    rig.pacs.admin.scan()
    stop = threading.Event()
    agent = threading.Thread(
        target=CaptureAgent(lambda: dbapi.connect(**rig.pacs.conn_kwargs, autocommit=True)).run, args=(stop,)
    )

    def churn() -> None:
        conn = rig.pacs.writer()
        next_id = 1000
        try:
            while not stop.is_set():
                cursor = conn.cursor()
                target = rng.randint(1, 300)
                cursor.execute(
                    "UPDATE dbo.Property SET Acreage = Acreage + 1 WHERE PropertyID = ?", (target,)
                )
                cursor.execute(INSERT_PROPERTY, (next_id, f"P-{next_id}", "Pasco", 1))
                conn.commit()
                next_id += 1
                time.sleep(0.005)
        finally:
            conn.close()

    writer = threading.Thread(target=churn)
    agent.start()
    writer.start()
    env = {
        **rig.env(),
        "PACS_SNAPSHOT_CHUNK_ROWS": "40",
        "PACS_PAGE_ROWS": "25",
        "PACS_MAX_TRANSACTIONS_PER_POLL": "20",
    }
    try:
        for _ in range(6):
            proc = subprocess.Popen(
                [sys.executable, "-m", "pacs_sync", "producer"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(1.0, 3.0))
            proc.kill()  # SIGKILL: no clean shutdown, an open Kafka transaction is left behind
            proc.wait()
    finally:
        stop.set()
        writer.join()
        agent.join()
    rig.pacs.admin.scan()
    final = subprocess.run(
        [sys.executable, "-m", "pacs_sync", "producer", "--until-caught-up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert final.returncode == 0, final.stderr[-2000:]

    events = rig.events("Property")
    snapshot = [e for e in events if e["op"] == "r"]
    assert len({e["after"]["PropertyID"] for e in snapshot}) == len(snapshot)  # each row once
    snapshot_lsn = snapshot[0]["source"]["commit_lsn"]
    streamed = positions([e for e in events if e["op"] != "r"])
    assert len(set(streamed)) == len(streamed)  # no duplicates
    conn = dbapi.connect(**rig.pacs.conn_kwargs)
    try:
        truth = {
            (str(Lsn(bytes(r[0]))), str(Lsn(bytes(r[1]))), int(r[2]))
            for r in dbapi.fetch_all(
                conn,
                "SELECT __$start_lsn, __$seqval, __$operation FROM cdc.dbo_property_ct "
                "WHERE __$operation <> 3 AND __$start_lsn > ?",
                (Lsn.parse(snapshot_lsn).value,),
            )
        }
    finally:
        conn.close()
    assert len(truth) > 50
    assert set(streamed) == truth  # every change after the snapshot LSN exactly once
    by_key: dict[int, list[tuple[str, str, int]]] = {}
    for event in events:
        if event["op"] != "r":
            by_key.setdefault((event["after"] or event["before"])["PropertyID"], []).append(
                positions([event])[0]
            )
    assert all(p == sorted(p) for p in by_key.values())  # per-key order preserved


def test_capture_instance_switch_publishes_the_evolved_schema(rig: ProducerRig) -> None:
    admin = rig.pacs.admin
    rig.write((INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    admin.scan()
    rig.run_until_caught_up()
    rig.write(("ALTER TABLE dbo.Property ADD ZoningCode varchar(10)", ()))
    rig.write(("UPDATE dbo.Property SET City = ?, ZoningCode = ? WHERE PropertyID = ?", ("Pasco", "R-1", 1)))
    admin.scan()
    admin.enable_table("Property", capture_instance="dbo_Property_v2")
    admin.scan()
    rig.write(
        ("UPDATE dbo.Property SET City = ?, ZoningCode = ? WHERE PropertyID = ?", ("Richland", "C-2", 1))
    )
    rig.write((INSERT_PROPERTY, (2, "P-2", "Prosser", 2)))
    admin.scan()
    rig.run_until_caught_up()

    # A reader that knows only the shipped schemas resolves the evolved one from the schemas topic.
    from producer.runner import schemas_topic

    published = {
        key: value for key, value in read_topic(rig.settings, schemas_topic(rig.settings)) if key and value
    }
    assert len(published) == 1
    import json

    reader = AvroCodec(
        SchemaRegistry.from_package(resolver=lambda fp: json.loads(published[fp.hex().encode()]))
    )
    raw = [value for _key, value in read_topic(rig.settings, topic_name(rig.settings, "Property")) if value]
    events = [reader.decode(value).value for value in raw]
    streamed = sorted((e for e in events if e["op"] != "r"), key=lambda e: positions([e]))
    assert [(e["op"], e["source"]["capture_instance"]) for e in streamed] == [
        ("u", "dbo_Property"),  # before the switch: the old instance, old shape
        ("u", "dbo_Property_v2"),  # from the new instance's start LSN on
        ("c", "dbo_Property_v2"),
    ]
    # The new column keeps the catalog's spelling (SQL Server: as declared; the emulator: lower case).
    zoning = next(k for k in streamed[1]["after"] if k.lower() == "zoningcode")
    assert streamed[0]["after"].get(zoning) is None  # the old instance never captured it
    assert streamed[1]["after"][zoning] == "C-2"
    assert streamed[1]["before"][zoning] == "R-1"
    assert streamed[2]["after"][zoning] is None
    assert streamed[1]["after"]["City"] == "Richland"
    shipped = AvroCodec(
        SchemaRegistry.from_package(resolver=lambda fp: json.loads(published[fp.hex().encode()]))
    )
    assert zoning not in shipped.decode_as(raw[-1], "pacs.dbo.PropertyEnvelope").value["after"]


def test_when_needed_re_snapshots_a_table_whose_changes_were_lost(rig: ProducerRig) -> None:
    from producer.settings import SnapshotMode

    rig.settings = rig.settings.model_copy(update={"snapshot_mode": SnapshotMode.WHEN_NEEDED})
    admin = rig.pacs.admin
    admin.configure_jobs(idle_heartbeat_s=3600)
    rig.write((INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)), (INSERT_OWNER, (1, 1, "A", "Individual", 100)))
    admin.scan()
    rig.run_until_caught_up()
    rig.write((INSERT_PROPERTY, (2, "P-2", "Kennewick", 1)))  # will be lost from the change table
    admin.scan()
    admin.advance_clock(5 * 24 * 3600)
    rig.write((INSERT_PROPERTY, (3, "P-3", "Kennewick", 1)))
    admin.scan()
    admin.cleanup()
    rig.run_until_caught_up()  # re-snapshots at the current high-water mark
    rig.write((INSERT_PROPERTY, (4, "P-4", "Kennewick", 1)), (INSERT_OWNER, (2, 4, "B", "Individual", 100)))
    admin.scan()
    rig.run_until_caught_up()  # then streams on
    events = rig.events("Property")
    first_snapshot = min(e["source"]["commit_lsn"] for e in events if e["op"] == "r")
    resnapshot = [e for e in events if e["op"] == "r" and e["source"]["commit_lsn"] > first_snapshot]
    assert sorted(e["after"]["PropertyID"] for e in resnapshot) == [1, 2, 3]  # row 2 is back
    assert [e["after"]["PropertyID"] for e in events if e["op"] == "c"] == [4]  # changes after it only
    # Cleanup moves every capture instance's low end, so every table is re-snapshotted; the owner
    # table's later change still streams after its own re-snapshot.
    owners = sorted(rig.events("PropertyOwner"), key=lambda e: positions([e]))
    assert [(e["op"], e["after"]["PropertyOwnerID"]) for e in owners] == [("r", 1), ("r", 1), ("c", 2)]


def _final_state(rig: ProducerRig) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Apply a Property topic in position order, by Kafka key: the table as a reader rebuilds it."""
    records = read_topic(rig.settings, topic_name(rig.settings, "Property"))
    decoded = [(rig.codec.decode(k).value, rig.codec.decode(v).value) for k, v in records if k and v]
    state: dict[int, dict[str, Any]] = {}
    for key, event in sorted(decoded, key=lambda pair: positions([pair[1]])):
        if event["op"] == "d":
            state.pop(key["PropertyID"], None)
        else:
            state[key["PropertyID"]] = event["after"]
    return state, [event["op"] for _key, event in decoded]


def test_polling_mode_yields_the_same_net_changes_as_cdc(rig: ProducerRig, stack: Any) -> None:
    from pacs_sync.sim.generator import generate, scale_for
    from pacs_sync.sim.workload import WorkloadPlanner

    dataset = generate(scale_for("300"), seed=5)  # a first scan of more than 255 events
    rig.write(
        *[(f"INSERT INTO dbo.Property VALUES ({', '.join('?' * 9)})", tuple(r)) for r in dataset.properties]
    )
    rig.pacs.admin.scan()
    polling = rig.settings.model_copy(
        update={"enable_cdc": False, "topic_prefix": rig.settings.topic_prefix + "p"}
    )
    poll_rig = ProducerRig(rig.pacs, polling, rig.codec)
    rig.run_until_caught_up()  # CDC mode: snapshot
    poll_rig.run_until_caught_up()  # polling mode: first scan

    # A churn run restricted to dbo.Property (this data set has no child rows).
    planner = WorkloadPlanner.from_state(dataset.properties, [], [], [], seed=9)
    applied = 0
    while applied < 60:
        txn = planner.next_transaction()
        if any(s.table and s.table.split(".")[-1] != "property" for s in txn.statements):
            continue
        rig.write(*[(s.sql, s.params) for s in txn.statements])
        applied += 1
    rig.write(("UPDATE dbo.Property SET LegalDescription = ?", ("re-platted",)))  # > 255 changes in a scan
    rig.pacs.admin.scan()
    rig.run_until_caught_up()
    poll_rig.run_until_caught_up()

    conn = dbapi.connect(**rig.pacs.conn_kwargs)
    try:
        truth = {r[0] for r in dbapi.fetch_all(conn, "SELECT PropertyID FROM dbo.Property")}
    finally:
        conn.close()
    cdc_state, cdc_ops = _final_state(rig)
    poll_state, poll_ops = _final_state(poll_rig)
    assert set(cdc_state) == truth
    assert cdc_state == poll_state  # the same rows with the same values
    assert {"r", "u"} <= set(poll_ops)
    assert ("d" in cdc_ops) == ("d" in poll_ops)
    assert len(poll_ops) <= len(cdc_ops)  # polling sees only net changes
    # Every polled event has a position the sink can order (a scan's n-th event is its change LSN).
    polled = [e["source"] for e in poll_rig.events("Property") if e["op"] != "r"]
    assert len(polled) > 255
    order = [position_bytes(s["commit_lsn"], s["change_lsn"], s["event_serial_no"] or 0) for s in polled]
    assert len(set(order)) == len(order)


def test_snapshot_mode_never_streams_what_the_change_tables_hold(rig: ProducerRig) -> None:
    from producer.settings import SnapshotMode

    rig.write((INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    rig.pacs.admin.scan()
    rig.write(("UPDATE dbo.Property SET City = ? WHERE PropertyID = ?", ("Pasco", 1)))
    rig.pacs.admin.scan()
    rig.settings = rig.settings.model_copy(update={"snapshot_mode": SnapshotMode.NEVER})
    rig.run_until_caught_up()
    assert [e["op"] for e in sorted(rig.events("Property"), key=lambda e: positions([e]))] == ["c", "u"]


def test_metrics_count_events_snapshot_progress_and_headroom(rig: ProducerRig) -> None:
    rig.write(*[(INSERT_PROPERTY, (i, f"P-{i}", "Kennewick", 1)) for i in range(1, 6)])
    rig.pacs.admin.scan()
    registry = CollectorRegistry()
    runner = ProducerRunner(rig.settings, rig.codec, ProducerMetrics.create(registry))
    try:
        runner.start()
        runner.snapshot(threading.Event())
        rig.write(*[(INSERT_PROPERTY, (i, f"P-{i}", "Pasco", 1)) for i in range(6, 9)])
        rig.pacs.admin.scan()
        assert runner.poll() is True
    finally:
        runner.close()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("pacs_sync_producer_events_total", entity="properties", op="r") == 5
    assert value("pacs_sync_producer_events_total", entity="properties", op="c") == 3
    assert value("pacs_sync_producer_snapshot_progress_ratio", entity="properties") == 1.0
    headroom = value("pacs_sync_producer_retention_headroom_seconds", capture_instance="dbo_Property")
    assert headroom is not None
    assert 4000 * 60 < headroom <= 4320 * 60
    assert (value("pacs_sync_producer_poll_duration_seconds_count") or 0) >= 1


def test_a_mapping_the_source_does_not_match_stops_start_up_with_pacs_003(
    rig: ProducerRig, tmp_path: Any
) -> None:
    from producer.errors import SchemaMismatchError

    mapping = tmp_path / "mapping.json"
    mapping.write_text('{"Property": {"ZipCode": "Zip5"}}')
    rig.settings = rig.settings.model_copy(update={"column_mapping_file": mapping})
    runner = rig.runner()
    try:
        with pytest.raises(SchemaMismatchError) as caught:
            runner.start()
    finally:
        runner.close()
    assert caught.value.code is ErrorCode.SCHEMA_MISMATCH
    assert "Zip5" in str(caught.value)
    result = _cli(["check-connection"], {**rig.env(), "PACS_COLUMN_MAPPING_FILE": str(mapping)})
    assert result.returncode == 1
    assert "PACS-003" in result.stdout
    mapping.write_text('{"Property": {"ZipCode": "zipcode"}}')  # the same column, spelled as the catalog does
    assert _cli(["check-connection"], {**rig.env(), "PACS_COLUMN_MAPPING_FILE": str(mapping)}).returncode == 0
