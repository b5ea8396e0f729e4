"""Delivery without an injected fault, as the control of the fault scenarios: the full ``sim churn``
workload must leave no valid row in the dead-letter topic, and events of an aborted producer
transaction must never reach PostgreSQL (the producer's exactly-once rests on readers skipping them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from schemas.codec import AvroCodec, SchemaRegistry
from tests.faults.conftest import FaultSettings
from tests.faults.harness import FaultPipeline

CODEC = AvroCodec(SchemaRegistry.from_package())


@pytest.mark.timeout(600)
def test_churn_of_every_kind_dead_letters_no_valid_row(
    fault_pipeline: Callable[..., FaultPipeline], fault_settings: FaultSettings
) -> None:
    p = fault_pipeline("control")
    p.init_source("300", seed=12)
    p.prepare_target()
    p.start()
    p.settle(timeout=300)
    p.start_churn(fault_settings.churn_rate, seed=fault_settings.seed)
    time.sleep(25)
    p.stop_churn()
    p.settle(timeout=300)
    verified = p.verify()
    reasons = p.dead_letter_reasons()
    explained = {
        e: r.get("dead_lettered", {}).get("count") for e, r in verified.report.get("entities", {}).items()
    }
    p.note(
        "control",
        verify_exit=verified.exit_code,
        dead_letters=verified.dead_letters_read,
        reasons=reasons,
        missing_but_explained=explained,
    )
    if verified.exit_code != 0:
        p.fail_verify(f"verify exited {verified.exit_code}: {json.dumps(verified.report)[:3000]}")
    assert not p.audit().duplicates
    # Owner events are routed by property (producer/mapping.py), so a sale's sellers end before
    # its buyers are checked: no valid row of the churn may be dead-lettered.
    assert not verified.dead_letters_read, (
        f"valid rows dead-lettered: {reasons}; rows missing from the target: {explained}"
    )


@pytest.mark.timeout(300)
def test_events_of_an_aborted_producer_transaction_never_reach_postgres(
    fault_pipeline: Callable[..., FaultPipeline],
) -> None:
    p = fault_pipeline("aborted")
    p.init_source("20", seed=14)
    p.prepare_target()
    p.start()
    p.settle(timeout=300)
    topic = p.change_topics()[0]
    real = next(value for key, value, _ in p.read_topic(topic) if key and value)
    event = CODEC.decode(real).value
    event["after"]["PropertyID"] = 9_400_001
    event["op"] = "c"
    producer = Producer(
        {"bootstrap.servers": p.bootstrap, "transactional.id": f"{p.prefix}-aborting", "log_level": 0}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(
        topic,
        key=CODEC.encode("pacs.dbo.PropertyKey", {"PropertyID": 9_400_001}),
        value=CODEC.encode("pacs.dbo.PropertyEnvelope", event),
    )
    producer.flush(30)
    producer.abort_transaction(30)
    p.source_sql(
        (
            "UPDATE dbo.property SET city = 'After Abort' "
            "WHERE propertyid = (SELECT min(propertyid) FROM dbo.property)",
            (),
        )
    )
    p.settle(timeout=300)
    leaked = p.target_rows("SELECT count(*) FROM terrafusion.properties WHERE property_id = 9400001")[0][0]
    verified = p.verify()
    p.note("aborted-transaction", leaked_rows=leaked, verify_exit=verified.exit_code)
    assert leaked == 0
    assert verified.exit_code == 0


@pytest.mark.timeout(120)
def test_a_capture_between_the_producers_idle_checks_is_not_skipped(
    fault_pipeline: Callable[..., FaultPipeline],
) -> None:
    """The producer alone, in-process, with the capture job forced into the window between its two
    idle-poll queries (the race the capture Agent hits now and then under churn)."""
    import threading

    from prometheus_client import CollectorRegistry

    from pacs_sync.lsn import Lsn
    from pacs_sync.metrics import ProducerMetrics
    from producer.runner import ProducerRunner
    from producer.settings import ProducerSettings
    from producer.source import CdcSource

    p = fault_pipeline("idlerace")
    p.init_source("5", seed=15)
    p.cli("sim", "agent", "stop")  # captures happen only when this test says so

    class CaptureInBetween(CdcSource):
        armed = False

        def max_transaction_lsn(self) -> Lsn | None:
            newest = super().max_transaction_lsn()
            if CaptureInBetween.armed:
                CaptureInBetween.armed = False
                p.scan()  # the capture job commits a new transaction right now
            return newest

    settings = ProducerSettings(
        db_name=p.db_name, topic_prefix=f"{p.prefix}race", kafka_bootstrap_servers=p.bootstrap, metrics_port=0
    )
    runner = ProducerRunner(
        settings,
        CODEC,
        ProducerMetrics.create(CollectorRegistry()),
        source_factory=CaptureInBetween,
    )
    try:
        runner.start()
        runner.snapshot(threading.Event())
        runner.poll()  # idle: nothing new
        p.source_sql(
            (
                "UPDATE dbo.property SET city = 'Raced' "
                "WHERE propertyid = (SELECT min(propertyid) FROM dbo.property)",
                (),
            )
        )
        CaptureInBetween.armed = True
        runner.poll()  # idle when it looked; the update is captured before it reads the max LSN
        for _ in range(3):
            runner.poll()
        updates = runner.summary.events.get("u", 0)
    finally:
        runner.close()
    p.note("idle-race", updates_published=updates, position=str(runner.offset.position))
    assert updates == 1
