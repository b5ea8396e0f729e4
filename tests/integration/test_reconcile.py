"""`pacs-sync verify` on the real stack: an emulated PACS source, a migrated target, a dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from confluent_kafka import Producer

from pacs_sync.lsn import Lsn
from pacs_sync.sim.generator import PacsDataset, generate, scale_for
from pacs_sync.stack import LocalStack
from producer.mapping import SourceInfo, default_mappings, envelope
from schemas.codec import AvroCodec, SchemaRegistry
from sink.changes import ConsumedRecord, to_row
from sink.tables import ENTITIES
from sink.target import TargetDatabase
from stream_processors.validation import transform_row
from tests.integration.conftest import EmulatedPacs

CODEC = AvroCodec(SchemaRegistry.from_package())
MAPPINGS = default_mappings()
_CLI = [sys.executable, "-m", "pacs_sync", "verify"]


def lsn(n: int) -> str:
    h = f"{n:020x}"
    return f"{h[:8]}:{h[8:16]}:{h[16:]}"


def load_source(pacs: EmulatedPacs, dataset: PacsDataset) -> None:
    """Insert the generated rows into the emulated PACS tables (parents first)."""
    conn = pacs.writer()
    try:
        cursor = conn.cursor()
        for qualified, rows in dataset.tables().items():
            width = len(rows[0])
            marks = ", ".join("?" * width)
            cursor.executemany(f"INSERT INTO {qualified} VALUES ({marks})", [tuple(r) for r in rows])
        conn.commit()
    finally:
        conn.close()


def fill_target(dsn: str, dataset: PacsDataset) -> None:
    """Migrate the target and write every source row through the sink's own write path."""
    parts = _parts(dsn)

    async def go() -> None:
        target = await TargetDatabase.connect(parts)
        try:
            await target.migrate()
            batch: dict[str, list[ConsumedRecord]] = {}
            serial = 0
            for table, rows in zip(MAPPINGS, dataset.tables().values(), strict=True):
                mapping = MAPPINGS[table]
                spec = ENTITIES[mapping.entity]
                records = batch.setdefault(mapping.entity, [])
                for values in rows:
                    serial += 1
                    record = transform_row(mapping.entity, mapping.record(values))
                    record.update(
                        source_commit_lsn=lsn(100),
                        source_change_lsn=None,
                        source_serial=0,
                        source_ts=None,
                        deleted=False,
                    )
                    records.append(ConsumedRecord(to_row(spec, record), "test", 0, serial, None, b""))
            result = await target.write_batch("verify-test", batch, {})
            assert sum(result.rejected.values()) == 0
        finally:
            await target.close()

    asyncio.run(go())


def _parts(dsn: str) -> dict[str, Any]:
    url = urlsplit(dsn)
    return {
        "host": url.hostname,
        "port": url.port,
        "database": url.path.lstrip("/"),
        "user": url.username,
        "password": url.password,
    }


@dataclass
class VerifyRig:
    pacs: EmulatedPacs
    dataset: PacsDataset
    target_dsn: str
    bootstrap: str
    prefix: str
    state_dir: Path
    make_topic: Callable[..., str]
    dlq_created: bool = False

    def env(self) -> dict[str, str]:
        kwargs = self.pacs.conn_kwargs
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("PACS_")},
            "PACS_DB_DRIVER": "pg8000",
            "PACS_DB_HOST": str(kwargs["host"]),
            "PACS_DB_PORT": str(kwargs["port"]),
            "PACS_DB_NAME": self.pacs.database,
            "PACS_DB_USER": self.pacs.reader_user,
            "PACS_DB_PASSWORD": self.pacs.reader_password,
            "PACS_TARGET_DSN": self.target_dsn,
            "PACS_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PACS_CLEAN_TOPIC_PREFIX": self.prefix,
            "PACS_STATE_DIR": str(self.state_dir),
            "PACS_VERIFY_RANGE_WIDTH": "50",
        }

    def verify(self, *args: str) -> tuple[int, dict[str, Any], str]:
        """Run `pacs-sync verify --json` as an operator would; (exit code, report, stderr)."""
        result = subprocess.run(
            [*_CLI, "--json", *args], capture_output=True, text=True, env=self.env(), timeout=120, check=False
        )
        try:
            report = json.loads(result.stdout) if result.stdout.strip() else {}
        except json.JSONDecodeError:
            pytest.fail(f"not JSON: {result.stdout!r}\n{result.stderr}")
        return result.returncode, report, result.stderr

    def sql(self, statement: str, *args: Any) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.target_dsn)
            try:
                return list(await conn.fetch(statement, *args))
            finally:
                await conn.close()

        return asyncio.run(go())

    def dead_letter(self, table: str, values: tuple[Any, ...], *, db: str | None = None) -> None:
        """Dead-letter the 'r' event of a source row, as the processors would (PACS-004)."""
        topic = f"{self.prefix}.dlq"
        if not self.dlq_created:
            self.make_topic("dlq")
            self.dlq_created = True
        mapping = MAPPINGS[table]
        database = db or self.pacs.database
        source = SourceInfo(database, "dbo", table, None, Lsn.parse(lsn(100)), None, 0, None, "true")
        event = envelope("r", None, mapping.record(values), source, datetime.now(tz=UTC))
        letter = {
            "error_code": "PACS-004",
            "topic": f"pacs.{database}.dbo.{table}",
            "partition": 0,
            "offset": 0,
            "key": CODEC.encode(f"pacs.dbo.{table}Key", {mapping.key_field: values[0]}),
            "value": CODEC.encode(f"pacs.dbo.{table}Envelope", event),
            "violations": [
                {
                    "rule_id": "VAL-SUM",
                    "severity": "error",
                    "field": "MarketValue",
                    "message": "x",
                    "value": "1",
                }
            ],
            "source_commit_lsn": lsn(100),
            "source_change_lsn": None,
            "failed_at": datetime.now(tz=UTC),
        }
        producer = Producer({"bootstrap.servers": self.bootstrap})
        producer.produce(topic, value=CODEC.encode("io.terrafusion.pacs.DeadLetter", letter))
        assert producer.flush(30) == 0


@pytest.fixture
def verify_target(stack: LocalStack, target_dsn: str, unique_name: str) -> Iterator[str]:
    """A fresh target database beside the emulated source.

    conftest's ``target_database`` names its database after the test, as ``emulated_pacs`` does, so
    the two cannot be used together: this is the same fixture with a suffix.
    """
    parts = urlsplit(target_dsn)
    name = f"{unique_name}_target"
    root = stack.postgres.connect()
    root.cursor().execute(f'CREATE DATABASE "{name}" OWNER "{parts.username}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        root.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        root.close()


@pytest.fixture
def rig(
    emulated_pacs: EmulatedPacs,
    verify_target: str,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_name: str,
    tmp_path: Path,
) -> VerifyRig:
    dataset = generate(scale_for("60"), seed=11)
    load_source(emulated_pacs, dataset)
    fill_target(verify_target, dataset)
    return VerifyRig(
        emulated_pacs,
        dataset,
        verify_target,
        kafka_bootstrap,
        unique_name,
        tmp_path / "state",
        topic_factory,
    )


def _counts(entity: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (
        entity["missing"]["count"],
        entity["extra"]["count"],
        entity["different"]["count"],
        entity["untransformable"]["count"],
        entity["dead_lettered"]["count"],
    )


def test_verify_matches_then_finds_exactly_the_injected_differences(rig: VerifyRig) -> None:
    sizes = {
        "properties": len(rig.dataset.properties),
        "owners": len(rig.dataset.owners),
        "valuations": len(rig.dataset.valuations),
        "structures": len(rig.dataset.structures),
    }
    started = time.monotonic()
    code, report, stderr = rig.verify()
    assert code == 0, stderr
    assert report["matched"] is True
    assert time.monotonic() - started < 60
    for entity, size in sizes.items():
        assert report["entities"][entity]["source_count"] == size
        assert report["entities"][entity]["target_count"] == size
        assert _counts(report["entities"][entity]) == (0, 0, 0, 0, 0)
    assert report["dead_letters"]["read"] == 0  # the dead-letter topic does not even exist yet

    changed = rig.dataset.properties[7][0]
    removed = rig.dataset.valuations[30][0]
    extra = 39_999_999
    rig.sql("UPDATE pacs_sync.properties SET city = 'Nowhere' WHERE property_id = $1", changed)
    rig.sql("DELETE FROM pacs_sync.valuations WHERE valuation_id = $1", removed)
    rig.sql(
        "INSERT INTO pacs_sync.structures (structure_id, property_id, condition, source_commit_lsn, "
        "source_serial, deleted, source_position) VALUES ($1, 100001, 'good', $2, 0, false, $3)",
        extra,
        lsn(100),
        b"\x00" * 21,
    )
    code, report, stderr = rig.verify()
    assert code == 1, stderr
    assert report["matched"] is False
    entities = report["entities"]
    assert _counts(entities["properties"]) == (0, 0, 1, 0, 0)
    assert entities["properties"]["different"]["rows"] == [
        {"key": changed, "columns": {"city": {"source": _city(rig, changed), "target": "Nowhere"}}}
    ]
    assert _counts(entities["valuations"]) == (1, 0, 0, 0, 0)
    assert entities["valuations"]["missing"]["keys"] == [removed]
    assert entities["valuations"]["target_count"] == sizes["valuations"] - 1
    assert _counts(entities["structures"]) == (0, 1, 0, 0, 0)
    assert entities["structures"]["extra"]["keys"] == [extra]
    assert _counts(entities["owners"]) == (0, 0, 0, 0, 0)
    # The key ranges (width 50) that hold a difference, and only those.
    (changed_range,) = entities["properties"]["ranges"]["first_differing"]
    assert changed_range["low"] <= changed <= changed_range["high"]
    assert changed_range["high"] - changed_range["low"] == 49
    assert changed_range["source_count"] == changed_range["target_count"]
    (removed_range,) = entities["valuations"]["ranges"]["first_differing"]
    assert removed_range["source_count"] == removed_range["target_count"] + 1
    assert entities["owners"]["ranges"]["differing"] == 0

    # A delete marker hides a row from the view: that key is missing too. Two entities asked for.
    hidden = rig.dataset.properties[20][0]
    rig.sql("UPDATE pacs_sync.properties SET deleted = true WHERE property_id = $1", hidden)
    code, report, _ = rig.verify("--entity", "structures,properties", "--limit", "0")
    assert code == 1
    assert list(report["entities"]) == ["properties", "structures"]
    assert report["entities"]["properties"]["missing"] == {"count": 1, "keys": []}
    assert report["entities"]["properties"]["different"] == {"count": 1, "rows": []}
    assert report["entities"]["structures"]["extra"] == {"count": 1, "keys": []}

    runs = rig.sql("SELECT kind, state, entities, detail FROM pacs_sync.sync_runs ORDER BY run_id")
    assert [(r["kind"], r["state"]) for r in runs] == [
        ("verify", "succeeded"),
        ("verify", "failed"),
        ("verify", "failed"),
    ]
    assert runs[2]["entities"] == ["properties", "structures"]
    assert json.loads(runs[1]["detail"])["entities"]["valuations"]["missing"]["keys"] == [removed]


def _city(rig: VerifyRig, property_id: int) -> str:
    row = next(r for r in rig.dataset.properties if r[0] == property_id)
    city = transform_row("properties", MAPPINGS["Property"].record(row))["city"]
    assert isinstance(city, str)
    return city


def test_dead_lettered_keys_are_reported_as_such_and_the_run_passes(rig: VerifyRig) -> None:
    rejected = rig.dataset.valuations[12]
    differing = rig.dataset.owners[3]
    rig.sql("DELETE FROM pacs_sync.valuations WHERE valuation_id = $1", rejected[0])
    rig.sql("UPDATE pacs_sync.owners SET owner_name = 'Someone Else' WHERE owner_id = $1", differing[0])
    # A letter of the right key from another PACS database explains nothing.
    rig.dead_letter("PropertyOwner", differing, db="some_other_pacs")
    rig.dead_letter("PropertyValue", rejected)

    code, report, stderr = rig.verify()
    assert code == 1, stderr
    assert report["dead_letters"]["read"] == 2
    assert report["dead_letters"]["foreign"] == 1
    owners, valuations = report["entities"]["owners"], report["entities"]["valuations"]
    assert [r["key"] for r in owners["different"]["rows"]] == [differing[0]]
    assert list(owners["different"]["rows"][0]["columns"]) == ["owner_name"]
    assert _counts(valuations) == (0, 0, 0, 0, 1)
    assert valuations["dead_lettered"]["rows"] == [
        {"key": rejected[0], "kind": "missing", "reason": "PACS-004 VAL-SUM"}
    ]

    rig.dead_letter("PropertyOwner", differing)
    code, report, stderr = rig.verify()
    assert code == 0, stderr
    assert report["matched"] is True
    assert report["entities"]["owners"]["dead_lettered"]["rows"] == [
        {"key": differing[0], "kind": "different", "reason": "PACS-004 VAL-SUM"}
    ]
    # The human form lists them too, and still exits 0.
    human = subprocess.run(_CLI, capture_output=True, text=True, env=rig.env(), timeout=120, check=False)
    assert human.returncode == 0, human.stderr
    assert f"{rejected[0]}: missing (PACS-004 VAL-SUM)" in human.stdout
    assert (
        human.stdout.rstrip().splitlines()[-1].startswith("MATCH: no unexplained difference, 2 dead-lettered")
    )


def test_configuration_errors_exit_2(rig: VerifyRig) -> None:
    result = subprocess.run(
        [*_CLI, "--entity", "parcels"], capture_output=True, text=True, env=rig.env(), timeout=60, check=False
    )
    assert result.returncode == 2
    assert "parcels" in result.stderr
    env = {**rig.env(), "PACS_VERIFY_CHUNK_ROWS": "5"}
    result = subprocess.run(_CLI, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 2
    assert "PACS_VERIFY_CHUNK_ROWS" in result.stderr
