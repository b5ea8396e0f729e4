"""The bad-input corpus (tests/data/bad_inputs.json) through the real pipeline: every case ends in
PostgreSQL byte-correct or in the dead-letter topic with its code and rule id, and no stage crashes.

Source rows are written into the emulated PACS database with bound parameters and flow through the
producer, the processors and the sink; change events are produced straight onto the producer's change
topics (or a clean topic), as a broken or foreign producer would. Then: the stage processes are the
same ones as before (nothing crashed or restarted), each case is where the corpus says, every dead
letter is accounted for, verify exits 0 and no change was applied twice.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import MAGIC, AvroCodec, SchemaRegistry
from stream_processors.handling import ORIGINAL_BYTES_KEPT
from stream_processors.transform import TRANSFORMS, normalize_owner_name
from stream_processors.validation import ROW_FIELDS
from tests.faults.harness import REPO_ROOT, FaultPipeline

CORPUS = REPO_ROOT / "tests" / "data" / "bad_inputs.json"
ENTITY_OF = {
    "Property": "properties",
    "PropertyOwner": "owners",
    "PropertyValue": "valuations",
    "Structure": "structures",
}
KEY_COLUMN = {
    "properties": "property_id",
    "owners": "owner_id",
    "valuations": "valuation_id",
    "structures": "structure_id",
}
CLEAN_KEY_SCHEMA = {
    "properties": "io.terrafusion.model.PropertyKey",
    "owners": "io.terrafusion.model.OwnerKey",
    "valuations": "io.terrafusion.model.ValuationKey",
    "structures": "io.terrafusion.model.StructureKey",
}
CLEAN_SCHEMA = {entity: name.removesuffix("Key") for entity, name in CLEAN_KEY_SCHEMA.items()}
CODEC = AvroCodec(SchemaRegistry.from_package())


def load_corpus(path: Path = CORPUS) -> dict[str, Any]:
    """The corpus, as written."""
    corpus: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return corpus


def source_row(table: str, values: dict[str, Any]) -> dict[str, Any]:
    """A corpus row as the change event's row image: PascalCase fields, typed values."""
    row: dict[str, Any] = {}
    for name, kind, _nullable, _precision, _scale in ROW_FIELDS[ENTITY_OF[table]]:
        value = values.get(name.lower())
        if value is not None and kind is Decimal:
            value = Decimal(value)
        elif value is not None and kind is date:
            value = date.fromisoformat(value)
        row[name] = value
    return row


def insert_statement(table: str, row: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """A parameterised INSERT of a row image (the emulator's columns are the fields in lower case)."""
    columns = ", ".join(name.lower() for name in row)
    marks = ", ".join("?" for _ in row)
    return f"INSERT INTO dbo.{table.lower()} ({columns}) VALUES ({marks})", tuple(row.values())


class EventFactory:
    """Builds the corpus's change events from real events of the pipeline (so headers are genuine)."""

    def __init__(self, p: FaultPipeline, seed: int) -> None:
        self.p = p
        self.rng = random.Random(seed)
        self.samples: dict[str, tuple[bytes, bytes]] = {}

    def sample(self, topic: str) -> tuple[bytes, bytes]:
        """A real (key, value) from a topic (its first record with both)."""
        if topic not in self.samples:
            for key, value, _ in self.p.read_topic(topic):
                if key and value:
                    self.samples[topic] = (key, value)
                    break
            else:
                raise AssertionError(f"no record to copy on {topic}")
        return self.samples[topic]

    def topic(self, name: str) -> str:
        kind, _, what = name.partition(":")
        return f"pacs.{self.p.db_name}.dbo.{what}" if kind == "change" else f"{self.p.prefix}.{what}"

    def noise(self, size: int) -> bytes:
        return bytes(self.rng.randrange(256) for _ in range(size))

    def build(self, case: dict[str, Any], number: int) -> tuple[str, bytes | None, bytes | None]:
        """(topic, key, value) of one case."""
        topic = self.topic(case["topic"])
        key: bytes | None = f"bad-input:{number}".encode()
        _real_key, real = self.sample(topic)
        header = real[:10]
        build = case["build"]
        if build == "corrupt_body":
            value: bytes | None = header + self.noise(40)
            if case["topic"].startswith("clean:"):
                key = CODEC.encode(CLEAN_KEY_SCHEMA[case["entity"]], {KEY_COLUMN[case["entity"]]: case["id"]})
        elif build == "truncated":
            value = real[: len(real) // 2]
        elif build == "trailing_bytes":
            value = real + b"\x00\x00\x00"
        elif build == "unknown_fingerprint":
            value = MAGIC + b"\xde\xad\xbe\xef\x00\x11\x22\x33" + real[10:]
        elif build == "json":
            value = b'{"op": "c", "after": {"PropertyOwnerID": 1, "OwnerName": "JSON"}}'
        elif build == "one_byte":
            value = b"\xc3"
        elif build == "empty":
            value = b""
        elif build == "garbage_key":
            key, value = self.noise(12), header + self.noise(25)
        elif build == "large_corrupt":
            value = header + b"\x01" * int(case["size"])
        elif build == "tombstone":
            value = None
        elif build == "wrong_table":
            _structure_key, structure = self.sample(self.topic("change:Structure"))
            event = CODEC.decode(structure).value
            event["after"]["StructureID"] = case["id"]
            key = CODEC.encode("pacs.dbo.StructureKey", {"StructureID": case["id"]})
            value = CODEC.encode("pacs.dbo.StructureEnvelope", event)
        elif build == "oversize_legal":
            event = CODEC.decode(real).value
            event["after"]["PropertyID"] = case["id"]
            event["after"]["LegalDescription"] = "L" * 5000
            key = CODEC.encode("pacs.dbo.PropertyKey", {"PropertyID": case["id"]})
            value = CODEC.encode("pacs.dbo.PropertyEnvelope", event)
        elif build == "nul_owner_name":
            event = CODEC.decode(real).value
            event["after"].update(
                PropertyOwnerID=case["id"],
                PropertyID=case["id"] + 10,
                OwnerName="SMITH\x00JOHN",
                OwnershipPercentage=Decimal("100.00"),
                StartDate=None,
                EndDate=None,
            )
            key = CODEC.encode("pacs.dbo.PropertyOwnerKey", {"PropertyOwnerID": case["id"]})
            value = CODEC.encode("pacs.dbo.PropertyOwnerEnvelope", event)
        else:
            raise AssertionError(f"unknown build {build!r}")
        return topic, key, value


def letters(p: FaultPipeline) -> list[dict[str, Any]]:
    """Every dead letter, decoded, with its rule ids."""
    found = []
    for _key, value, headers in p.read_topic(p.dlq_topic):
        assert value is not None
        letter = CODEC.decode(value).value
        letter["rules"] = [v["rule_id"] for v in letter["violations"]]
        letter["headers"] = dict(headers)
        found.append(letter)
    return found


def original_digest(letter: dict[str, Any]) -> str | None:
    """sha256 of the original value a letter stands for (a processor letter may keep only a prefix)."""
    digest = letter["headers"].get("original_value_sha256")
    if digest is not None:
        return bytes(digest).decode()
    value = letter.get("value")
    return None if value is None else hashlib.sha256(bytes(value)).hexdigest()


def letter_key(letter: dict[str, Any]) -> tuple[str, int] | None:
    """(entity, key) a dead letter names: from the change event it holds, or the clean record's key."""
    for data in (letter.get("value"), letter.get("key")):
        if not data or not bytes(data).startswith(MAGIC):
            continue
        try:
            decoded = CODEC.decode(bytes(data))
        except Exception:  # noqa: BLE001, S112  (corrupt by design: the other bytes may name the row)
            continue
        record, name = decoded.value, decoded.schema_name
        for table, entity in ENTITY_OF.items():
            if name == f"pacs.dbo.{table}Envelope":
                image = record.get("after") or record.get("before") or {}
                return entity, int(image[f"{table}ID"])
            if name in (CLEAN_SCHEMA[entity], CLEAN_KEY_SCHEMA[entity]):
                return entity, int(record[KEY_COLUMN[entity]])
    return None


def target_row(p: FaultPipeline, entity: str, key: int) -> dict[str, Any] | None:
    """The live target row (the application view), or None."""
    conn = p.target()
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT * FROM terrafusion.{entity} WHERE {KEY_COLUMN[entity]} = ?", (key,))
        row = cursor.fetchone()
        names = [d[0] for d in cursor.description]
    finally:
        conn.close()
    return None if row is None else dict(zip(names, row, strict=True))


def shown(value: Any) -> Any:
    """A target value as the corpus writes it (JSON)."""
    if isinstance(value, Decimal | date):
        return str(value) if isinstance(value, Decimal) else value.isoformat()
    return value


@pytest.mark.timeout(600)
def test_the_bad_input_corpus_ends_in_postgres_or_the_dlq_and_no_stage_crashes(
    fault_pipeline: Callable[..., FaultPipeline],
) -> None:
    corpus = load_corpus()
    p = fault_pipeline("badinput")
    p.init_source("30", seed=6)
    p.prepare_target()
    pids = p.start()
    p.settle(timeout=300)

    p.source_sql(
        *(insert_statement(c["table"], source_row(c["table"], c["values"])) for c in corpus["source_rows"])
    )
    factory = EventFactory(p, seed=13)
    produced = []
    for number, case in enumerate(corpus["change_events"]):
        topic, key, value = factory.build(case, number)
        p.produce(topic, [(key, value)])
        produced.append((case, topic, key, value))
    p.settle(timeout=300)

    after = p.stage_pids()
    restarts = [line for line in p.read_log("supervisor").splitlines() if "exited with code" in line]
    dead = letters(p)
    by_value = {original_digest(letter): letter for letter in dead if letter.get("value") is not None}
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for each in dead:
        named = letter_key(each)
        if named is not None:
            by_key[named] = each
    letter: dict[str, Any] | None

    outcomes: list[dict[str, Any]] = []
    for case in corpus["source_rows"]:
        entity = ENTITY_OF[case["table"]]
        row = source_row(case["table"], case["values"])
        key = next(iter(row.values()))
        stored = target_row(p, entity, key)
        letter = by_key.get((entity, key))
        result = {"case": case["case"], "expect": case["expect"]}
        if case["expect"] == "target":
            expected = TRANSFORMS[entity](row)
            result["landed"] = stored is not None
            result["differences"] = (
                {c: [shown(v), shown(stored.get(c))] for c, v in expected.items() if stored.get(c) != v}
                if stored
                else "missing"
            )
            result["exact"] = {
                c: [v, shown(stored.get(c)) if stored else None]
                for c, v in case.get("target", {}).items()
                if not stored or shown(stored.get(c)) != v
            }
            result["ok"] = (
                stored is not None and not result["differences"] and not result["exact"] and letter is None
            )
        else:
            result["letter"] = None if letter is None else [letter["error_code"], letter["rules"]]
            result["ok"] = (
                stored is None
                and letter is not None
                and letter["error_code"] == case["code"]
                and case["rule"] in letter["rules"]
            )
        outcomes.append(result)
    for case, topic, key, value in produced:
        result = {"case": case["case"], "expect": case["expect"], "topic": topic}
        if case["expect"] == "ignored":
            result["ok"] = value is None and not any(each.get("key") == key for each in dead)
        elif case.get("entity"):  # the sink rejects it: its letter holds the clean record
            letter = by_key.get((case["entity"], case["id"]))
            result["letter"] = None if letter is None else [letter["error_code"], letter["rules"]]
            result["ok"] = (
                letter is not None
                and letter["error_code"] == case["code"]
                and case["rule"] in letter["rules"]
            )
        else:
            letter = by_value.get(hashlib.sha256(value or b"").hexdigest())
            result["letter"] = None if letter is None else [letter["error_code"], letter["rules"]]
            result["ok"] = (
                letter is not None
                and letter["error_code"] == case["code"]
                and case["rule"] in letter["rules"]
                # the letter keeps the original, or its first ORIGINAL_BYTES_KEPT bytes and its length
                and bytes(letter["value"]) == (value or b"")[:ORIGINAL_BYTES_KEPT]
                and letter["headers"].get("original_value_length") == str(len(value or b"")).encode()
            )
        outcomes.append(result)

    expected_letters = sum(1 for c in corpus["source_rows"] + corpus["change_events"] if c["expect"] == "dlq")
    failed = [o for o in outcomes if not o["ok"]]
    p.note(
        "bad-input",
        cases=len(outcomes),
        to_target=sum(1 for o in outcomes if o["expect"] == "target"),
        to_dlq=expected_letters,
        dead_letters=len(dead),
        stage_pids={"before": pids, "after": after},
        restarts=restarts,
        failed=failed,
    )
    assert after == pids, f"a stage crashed or restarted: {restarts}"
    assert not restarts
    assert not failed, json.dumps(failed, indent=1, ensure_ascii=False, default=str)
    p.check_nothing_lost_nothing_twice(dead_letters=expected_letters)


@pytest.mark.timeout(300)
def test_an_event_too_large_to_dead_letter_loses_no_valid_change(
    fault_pipeline: Callable[..., FaultPipeline],
) -> None:
    """A 1,040,000-byte corrupt event followed, in the same batch, by 30 valid property updates."""
    import os
    import signal
    import time

    from confluent_kafka import Producer

    p = fault_pipeline("poison")
    p.init_source("50", seed=3)
    p.prepare_target()
    pids = p.start()
    p.settle(timeout=300)
    topic = p.change_topics()[0]
    header = EventFactory(p, seed=1).sample(topic)[1][:10]
    os.kill(pids["processor"], signal.SIGSTOP)  # so the poison and the updates arrive in one batch
    try:
        producer = Producer(
            {"bootstrap.servers": p.bootstrap, "message.max.bytes": 1_048_000, "log_level": 0}
        )
        for partition in range(3):
            producer.produce(topic, key=b"poison", value=header + b"\x01" * 1_040_000, partition=partition)
        assert producer.flush(30) == 0
        ids = [
            r[0] for r in p.source_rows("SELECT propertyid FROM dbo.property ORDER BY propertyid LIMIT 30")
        ]
        for property_id in ids:
            p.source_sql(
                ("UPDATE dbo.property SET city = 'After Poison' WHERE propertyid = ?", (property_id,))
            )
        p.scan()
        time.sleep(5)  # the producer publishes the updates behind the poison
    finally:
        os.kill(pids["processor"], signal.SIGCONT)
    try:
        p.settle(timeout=90)
    except AssertionError as exc:
        p.note("poison-catch-up", error=str(exc)[-300:])
    landed = p.target_rows("SELECT count(*) FROM terrafusion.properties WHERE city = 'After Poison'")[0][0]
    crashed = [line[:200] for line in p.read_log("processor").splitlines() if "Crashed" in line]
    verified = p.verify()
    p.note(
        "poison",
        updates=len(ids),
        landed=landed,
        agent_crashes=crashed[:2],
        verify_exit=verified.exit_code,
        dead_letters=verified.dead_letters_read,
    )
    assert landed == len(ids)
    assert verified.exit_code == 0
    assert verified.dead_letters_read == 3
    assert p.stage_pids() == pids or not crashed


@pytest.mark.timeout(120)
def test_extreme_dates_are_stored_as_dates(fault_pipeline: Callable[..., FaultPipeline]) -> None:
    """The sink alone: one clean owner record with SQL Server's earliest and latest dates."""
    import asyncio

    from sink.changes import ConsumedRecord, to_row
    from sink.tables import ENTITIES
    from sink.target import TargetDatabase

    p = fault_pipeline("dates")
    p.prepare_target(audit=False)
    record = {
        "owner_id": 1,
        "property_id": 2,
        "owner_name": "Open End Trust",
        "owner_type": "trust",
        "ownership_pct": Decimal("100.00"),
        "start_date": date.min,
        "end_date": date.max,
        "source_commit_lsn": "00000001:00000001:0001",
        "source_change_lsn": "00000001:00000001:0001",
        "source_serial": 2,
        "source_ts": None,
        "deleted": False,
    }
    row = to_row(ENTITIES["owners"], record)

    async def write() -> None:
        from pacs_sync.settings import PacsSettings

        target = await TargetDatabase.connect(PacsSettings(target_dsn=p.target_dsn).target_parts)  # type: ignore[arg-type]
        try:
            await target.write_batch("faults", {"owners": [ConsumedRecord(row, "t", 0, 0, None, b"")]}, {})
        finally:
            await target.close()

    asyncio.run(write())
    stored = p.target_rows(
        "SELECT start_date::text, end_date::text FROM terrafusion.owners WHERE owner_id = 1"
    )
    p.note("extreme-dates", stored=stored)
    assert stored == [("0001-01-01", "9999-12-31")]


def test_title_casing_keeps_every_letter_of_a_name() -> None:
    name = normalize_owner_name("ﬁsh and chips llc") or ""
    assert name.replace("ﬁ", "fi").lower() == "fish and chips llc"
