"""The sink's pure logic: rows, reduction by key, source positions as bytes, SQL text, decoding, drift."""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pacs_sync.errors import ErrorCode
from pacs_sync.lsn import LSN_SIZE, Lsn, SourcePosition, position_bytes
from schemas.codec import AvroCodec, SchemaRegistry
from sink import statements
from sink.changes import ConsumedRecord, DeadLetter, reduce_by_key, to_row
from sink.kafka_io import records_pending
from sink.runner import decode_batch
from sink.tables import ENTITIES, POSITION_COLUMNS, SYNC_SCHEMA, EntitySpec

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATION = REPO_ROOT / "sink" / "migrations" / "0001_terrafusion_schema.sql"
CODEC = AvroCodec(SchemaRegistry.from_package())
VALUATIONS = ENTITIES["valuations"]
TOPIC = "tf.valuations"
TS = datetime(2025, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def lsn(n: int) -> str:
    """Debezium's text form of the LSN numbered ``n``."""
    h = f"{n:020x}"
    return f"{h[:8]}:{h[8:16]}:{h[16:]}"


def valuation(
    vid: int,
    commit: int,
    *,
    change: int | None = -1,
    serial: int = 4,
    deleted: bool = False,
    assessed: str = "100.00",
) -> dict[str, Any]:
    """A clean valuation record; ``change=-1`` means change LSN = commit LSN, None a snapshot read."""
    change_lsn = lsn(commit) if change == -1 else (None if change is None else lsn(change))
    data = {
        "property_id": 1000 + vid,
        "tax_year": 2025,
        "assessed_value": Decimal(assessed),
        "market_value": Decimal(assessed),
        "land_value": Decimal("0.00"),
        "improvement_value": Decimal(assessed),
    }
    return {
        "valuation_id": vid,
        **(dict.fromkeys(data) if deleted else data),
        "source_commit_lsn": lsn(commit),
        "source_change_lsn": change_lsn,
        "source_serial": 0 if change_lsn is None else serial,
        "source_ts": None if change_lsn is None else TS,
        "deleted": deleted,
    }


def consumed(record: dict[str, Any], offset: int = 0, partition: int = 0) -> ConsumedRecord:
    return ConsumedRecord(to_row(VALUATIONS, record), TOPIC, partition, offset, b"k", b"v")


# ---- to_row ----


def test_to_row_is_the_record_in_table_column_order_with_the_position_last() -> None:
    record = valuation(7, 300, change=299, serial=2)
    row = to_row(VALUATIONS, record)
    assert len(row) == len(VALUATIONS.table_columns)
    assert row[:-1] == tuple(record[c] for c in VALUATIONS.record_columns)
    assert row[-1] == position_bytes(lsn(300), lsn(299), 2)
    assert VALUATIONS.table_columns[-1] == "source_position"


def test_to_row_ignores_fields_it_does_not_write_and_needs_every_one_it_does() -> None:
    record = valuation(1, 10)
    assert to_row(VALUATIONS, {**record, "unrelated": 1}) == to_row(VALUATIONS, record)
    incomplete = dict(record)
    del incomplete["tax_year"]
    with pytest.raises(KeyError):
        to_row(VALUATIONS, incomplete)


def test_to_row_of_a_snapshot_read_sorts_after_every_change_of_its_commit() -> None:
    snapshot = to_row(VALUATIONS, valuation(1, 10, change=None))
    change = to_row(VALUATIONS, valuation(1, 10, change=10, serial=4))
    assert snapshot[VALUATIONS.table_columns.index("source_change_lsn")] is None
    assert change[-1] < snapshot[-1]


# ---- ConsumedRecord accessors ----


def test_position_columns_are_the_clean_records_sync_fields_in_order() -> None:
    assert POSITION_COLUMNS == (
        "source_commit_lsn",
        "source_change_lsn",
        "source_serial",
        "source_ts",
        "deleted",
    )
    for spec in ENTITIES.values():
        assert spec.record_columns[-len(POSITION_COLUMNS) :] == POSITION_COLUMNS


@pytest.mark.parametrize("spec", ENTITIES.values(), ids=lambda s: s.entity)
def test_consumed_record_accessors_read_the_columns_they_are_named_after(spec: EntitySpec) -> None:
    row: list[Any] = [f"value-{c}" for c in spec.table_columns]
    row[spec.table_columns.index("deleted")] = True
    record = ConsumedRecord(tuple(row), "t", 1, 2, None, b"")

    def column(name: str) -> Any:
        return row[spec.table_columns.index(name)]

    assert record.commit_lsn == column("source_commit_lsn")
    assert record.change_lsn == column("source_change_lsn")
    assert record.source_ts == column("source_ts")
    assert record.deleted is True
    assert record.position == column("source_position")
    assert record.key_value == column(spec.key_column)


def test_consumed_record_accessors_on_a_real_row() -> None:
    record = consumed(valuation(9, 500, change=498, serial=1, deleted=True))
    assert record.commit_lsn == lsn(500)
    assert record.change_lsn == lsn(498)
    assert record.source_ts == TS
    assert record.deleted is True
    assert record.key_value == 9
    assert record.position == position_bytes(lsn(500), lsn(498), 1)
    live = consumed(valuation(9, 501, change=None))
    assert (live.deleted, live.change_lsn, live.source_ts) == (False, None, None)


# ---- reduce_by_key ----


def test_reduce_keeps_the_newest_position_per_key_whatever_the_arrival_order() -> None:
    records = [
        consumed(valuation(1, 300), offset=0),
        consumed(valuation(1, 100), offset=1),
        consumed(valuation(2, 50), offset=2),
        consumed(valuation(1, 200), offset=3),
        consumed(valuation(2, 60, deleted=True), offset=4),
    ]
    reduced = reduce_by_key(records)
    assert [(r.key_value, r.offset) for r in reduced] == [(1, 0), (2, 4)]


def test_reduce_ties_keep_the_later_record() -> None:
    first, second = consumed(valuation(1, 10), offset=5), consumed(valuation(1, 10), offset=6)
    assert first.position == second.position
    assert reduce_by_key([first, second]) == [second]


def test_reduce_keeps_first_seen_key_order() -> None:
    records = [consumed(valuation(k, 10 + i), offset=i) for i, k in enumerate([3, 1, 2, 1, 3, 4])]
    assert [r.key_value for r in reduce_by_key(records)] == [3, 1, 2, 4]


def test_reduce_orders_same_commit_changes_by_change_lsn_then_serial() -> None:
    records = [
        consumed(valuation(1, 700, change=702, serial=1), offset=0),
        consumed(valuation(1, 700, change=701, serial=4), offset=1),
        consumed(valuation(2, 700, change=700, serial=2), offset=2),
        consumed(valuation(2, 700, change=700, serial=1), offset=3),
    ]
    assert [r.offset for r in reduce_by_key(records)] == [0, 2]


def test_reduce_of_nothing_is_nothing() -> None:
    assert reduce_by_key([]) == []


# ---- DeadLetter.rejected ----


def test_rejected_dead_letter_carries_the_record_and_the_sqlstate() -> None:
    record = ConsumedRecord(
        to_row(VALUATIONS, valuation(4, 99, change=98, serial=2)), TOPIC, 2, 41, b"key", b"value"
    )
    letter = DeadLetter.rejected(record, "23514", "violates check constraint")
    assert letter == DeadLetter(
        ErrorCode.TARGET_WRITE_REJECTED,
        "PG-23514",
        "violates check constraint",
        TOPIC,
        2,
        41,
        b"key",
        b"value",
        lsn(99),
        lsn(98),
    )
    assert letter.code.value == "PACS-011"


def test_rejected_dead_letter_without_a_sqlstate() -> None:
    letter = DeadLetter.rejected(consumed(valuation(1, 10, change=None)), None, "boom")
    assert letter.rule_id == "PG-ERROR"
    assert letter.change_lsn is None


# ---- position_bytes: byte order is SourcePosition order ----


def position(commit: int, change: int | None, serial: int) -> tuple[bytes, SourcePosition]:
    as_bytes = position_bytes(lsn(commit), None if change is None else lsn(change), serial)
    as_object = SourcePosition(
        Lsn.parse(lsn(commit)), None if change is None else Lsn.parse(lsn(change)), serial
    )
    return as_bytes, as_object


def assert_same_order(*positions: tuple[bytes, SourcePosition]) -> None:
    """Listed in ascending log order: bytes and SourcePosition agree pairwise, strictly."""
    for (a_bytes, a_obj), (b_bytes, b_obj) in itertools.combinations(positions, 2):
        assert a_obj < b_obj
        assert a_bytes < b_bytes


def test_position_bytes_layout() -> None:
    value = position_bytes("0000002a:00000104:0001", "0000002a:00000100:0003", 4)
    assert len(value) == 2 * LSN_SIZE + 1
    assert value == bytes.fromhex("0000002a000001040001" + "0000002a000001000003" + "04")


def test_position_bytes_different_commits_order_by_commit_first() -> None:
    assert_same_order(position(100, 999, 4), position(101, 1, 1), position(0x1_0000_0000, 2, 2))


def test_position_bytes_same_commit_orders_by_change_lsn() -> None:
    assert_same_order(position(500, 10, 4), position(500, 11, 1), position(500, 0xFFFF_0000, 2))


def test_position_bytes_same_change_lsn_orders_delete_insert_update() -> None:
    assert_same_order(position(500, 400, 1), position(500, 400, 2), position(500, 400, 4))


def test_position_bytes_snapshot_read_comes_after_every_change_of_its_commit() -> None:
    highest_change = int.from_bytes(b"\xff" * LSN_SIZE, "big")
    assert_same_order(
        position(500, 499, 4),
        position(500, 500, 4),
        position(500, highest_change, 254),
        position(500, None, 0),
        position(501, 1, 1),
    )


def test_position_bytes_of_a_snapshot_read_ignores_the_serial() -> None:
    assert position_bytes(lsn(5), None, 0) == position_bytes(lsn(5), None, 3)


@pytest.mark.parametrize("seed", range(3))
def test_position_bytes_sorts_like_source_positions(seed: int) -> None:
    rng = random.Random(seed)
    positions = [
        position(
            rng.choice([10, 11, 12, 2**40]),
            rng.choice([None, 9, 10, 11, 12, 2**40]),
            rng.choice([1, 2, 3, 4]),
        )
        for _ in range(200)
    ]
    by_bytes = sorted(positions, key=lambda p: p[0])
    by_object = sorted(positions, key=lambda p: p[1])
    assert [p[1] for p in by_bytes] == [p[1] for p in by_object]
    assert [p[0] for p in by_bytes] == [p[0] for p in by_object]


@pytest.mark.parametrize("serial", [-1, 255, 256, 10**6])
def test_position_bytes_rejects_a_serial_out_of_range(serial: int) -> None:
    with pytest.raises(ValueError, match="serial"):
        position_bytes(lsn(1), lsn(1), serial)


def test_position_bytes_rejects_a_malformed_lsn() -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        position_bytes("0000002a:0104", lsn(1), 1)
    with pytest.raises(ValueError, match="not an LSN"):
        position_bytes(lsn(1), "nonsense", 1)


# ---- statements ----


@pytest.mark.parametrize("spec", ENTITIES.values(), ids=lambda s: s.entity)
def test_upsert_is_guarded_by_the_source_position_and_never_updates_the_key(spec: EntitySpec) -> None:
    sql = statements.upsert(spec)
    assert sql.startswith(f"INSERT INTO {spec.table} AS t (")
    assert sql.endswith("WHERE t.source_position < excluded.source_position")
    assert f"FROM {statements.stage_table(spec)}" in sql
    assert f"ON CONFLICT ({spec.key_column}) DO UPDATE SET" in sql
    inserted = re.search(r"AS t \(([^)]*)\)", sql)
    assert inserted is not None
    assert [c.strip() for c in inserted.group(1).split(",")] == [*spec.table_columns, "synced_at"]
    set_clause = sql.split("DO UPDATE SET", 1)[1].split(" WHERE ", 1)[0]
    assigned = [part.split("=")[0].strip() for part in set_clause.split(",")]
    assert spec.key_column not in assigned
    assert sorted(assigned) == sorted([c for c in spec.table_columns if c != spec.key_column] + ["synced_at"])


def test_upsert_into_another_table() -> None:
    shadow = VALUATIONS.table + statements.SHADOW_SUFFIX
    sql = statements.upsert(VALUATIONS, shadow)
    assert sql.startswith(f"INSERT INTO {shadow} AS t ")
    assert "t.source_position < excluded.source_position" in sql


@pytest.mark.parametrize("spec", ENTITIES.values(), ids=lambda s: s.entity)
def test_swap_renames_the_tables_and_recreates_the_view_in_order(spec: EntitySpec) -> None:
    swap = statements.swap_shadow(spec)
    replaced = f"{spec.entity}__replaced"
    assert swap == [
        f"LOCK TABLE {spec.table} IN ACCESS EXCLUSIVE MODE",
        f"ALTER TABLE {spec.table} RENAME TO {replaced}",
        f"ALTER TABLE {spec.table}{statements.SHADOW_SUFFIX} RENAME TO {spec.entity}",
        statements.public_view(spec),
        f"DROP TABLE {SYNC_SCHEMA}.{replaced}",
    ]
    view = statements.public_view(spec)
    assert view.startswith(f"CREATE OR REPLACE VIEW terrafusion.{spec.entity} AS SELECT {spec.key_column}, ")
    assert view.endswith(f"FROM {spec.table} WHERE NOT deleted")


# ---- drift: Avro schema, entity spec and migration agree ----


def _migration_columns() -> dict[str, list[str]]:
    """Column names of each ``CREATE TABLE pacs_sync.<name> (...)`` in the migration."""
    text = MIGRATION.read_text(encoding="utf-8")
    tables: dict[str, list[str]] = {}
    for name, body in re.findall(r"CREATE TABLE pacs_sync\.(\w+) \((.*?)\n\);", text, flags=re.DOTALL):
        columns = []
        for line in body.splitlines():
            words = line.split()
            if words and words[0].upper() not in {"CHECK", "PRIMARY", "UNIQUE", "CONSTRAINT", "--"}:
                columns.append(words[0])
        tables[name] = columns
    return tables


def test_the_migration_parser_finds_every_table() -> None:
    tables = _migration_columns()
    assert set(ENTITIES) <= set(tables)
    assert tables["sync_offsets"] == ["consumer", "topic", "partition", "next_offset", "updated_at"]


@pytest.mark.parametrize("spec", ENTITIES.values(), ids=lambda s: s.entity)
def test_record_columns_are_the_clean_avro_schemas_fields_in_order(spec: EntitySpec) -> None:
    namespace, name = spec.schema_name.rsplit(".", 1)
    schema = json.loads((REPO_ROOT / "schemas" / f"TerraFusion.{name}.avsc").read_text(encoding="utf-8"))
    assert f"{schema['namespace']}.{schema['name']}" == spec.schema_name
    assert namespace == "io.terrafusion.model"
    assert tuple(f["name"] for f in schema["fields"]) == spec.record_columns
    assert spec.key_column == schema["fields"][0]["name"]


@pytest.mark.parametrize("spec", ENTITIES.values(), ids=lambda s: s.entity)
def test_every_table_column_is_created_by_the_migration(spec: EntitySpec) -> None:
    created = _migration_columns()[spec.entity]
    missing = [c for c in spec.table_columns if c not in created]
    assert not missing, f"{spec.table} lacks {missing}"
    assert "synced_at" in created  # the upsert writes it


# ---- decode_batch ----


@dataclass
class FakeMessage:
    """The parts of a confluent_kafka.Message that decode_batch reads."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


ENTITY_OF = {f"tf.{entity}": entity for entity in ENTITIES}


def message(offset: int, value: bytes | None, *, topic: str = TOPIC, partition: int = 0) -> FakeMessage:
    return FakeMessage(topic, partition, offset, f"key-{offset}".encode(), value)


def encoded(record: dict[str, Any]) -> bytes:
    return CODEC.encode(VALUATIONS.schema_name, record)


def test_decode_batch_turns_messages_into_rows_per_entity() -> None:
    prop = {
        "property_id": 5,
        "parcel_number": "1-0289-101-0021-000",
        "address": "8903 W Clearwater Ave",
        "city": "Kennewick",
        "state": "WA",
        "zip5": "99336",
        "zip4": None,
        "legal_description": "LOT 1 BLK 2",
        "acreage": Decimal("0.2500"),
        "year_built": 1978,
        "source_commit_lsn": lsn(20),
        "source_change_lsn": None,
        "source_serial": 0,
        "source_ts": None,
        "deleted": False,
    }
    messages = [
        message(0, encoded(valuation(1, 10))),
        message(0, CODEC.encode(ENTITIES["properties"].schema_name, prop), topic="tf.properties"),
    ]
    records, undecodable, next_offsets = decode_batch(CODEC, messages, ENTITY_OF)  # type: ignore[arg-type]
    assert undecodable == []
    assert set(records) == {"valuations", "properties"}
    assert records["valuations"][0].row == to_row(VALUATIONS, valuation(1, 10))
    (prop_record,) = records["properties"]
    assert prop_record.row == to_row(ENTITIES["properties"], prop)
    assert (prop_record.topic, prop_record.partition, prop_record.offset) == ("tf.properties", 0, 0)
    assert prop_record.key == b"key-0"
    assert prop_record.value == messages[1].value()
    assert next_offsets == {(TOPIC, 0): 1, ("tf.properties", 0): 1}


def test_decode_batch_tombstones_only_advance_the_offsets() -> None:
    messages = [message(7, encoded(valuation(1, 10))), message(8, None), message(3, None, partition=2)]
    records, undecodable, next_offsets = decode_batch(CODEC, messages, ENTITY_OF)  # type: ignore[arg-type]
    assert [r.offset for r in records["valuations"]] == [7]
    assert undecodable == []
    assert next_offsets == {(TOPIC, 0): 9, (TOPIC, 2): 4}
    only_tombstones = decode_batch(CODEC, [message(0, None)], ENTITY_OF)  # type: ignore[list-item]
    assert only_tombstones == ({}, [], {(TOPIC, 0): 1})


def test_decode_batch_dead_letters_undecodable_bytes_as_pacs_012() -> None:
    garbage = b"\xc3\x01garbage-bytes"
    messages = [message(0, encoded(valuation(1, 10))), message(1, garbage), message(2, b"x")]
    records, undecodable, next_offsets = decode_batch(CODEC, messages, ENTITY_OF)  # type: ignore[arg-type]
    assert [r.offset for r in records["valuations"]] == [0]
    assert next_offsets == {(TOPIC, 0): 3}, "the offset moves past undecodable records"
    assert [(d.code, d.rule_id, d.offset) for d in undecodable] == [
        (ErrorCode.UNDECODABLE_EVENT, "AVRO-DECODE", 1),
        (ErrorCode.UNDECODABLE_EVENT, "AVRO-DECODE", 2),
    ]
    letter = undecodable[0]
    assert (letter.topic, letter.partition, letter.key, letter.value) == (TOPIC, 0, b"key-1", garbage)
    assert letter.code.value == "PACS-012"
    assert letter.message


def test_decode_batch_dead_letters_a_record_of_another_entity_and_a_bad_serial() -> None:
    wrong = CODEC.encode(
        "io.terrafusion.model.Structure",
        {
            "structure_id": 1,
            "source_commit_lsn": lsn(1),
            "source_serial": 0,
            "deleted": True,
        },
    )
    bad_serial = encoded(valuation(2, 10, serial=300))
    records, undecodable, _ = decode_batch(
        CODEC,
        [message(0, wrong), message(1, bad_serial)],  # type: ignore[list-item]
        ENTITY_OF,
    )
    assert records == {}
    assert [d.offset for d in undecodable] == [0, 1]
    assert all(d.code is ErrorCode.UNDECODABLE_EVENT for d in undecodable)
    assert "io.terrafusion.model.Valuation" in undecodable[0].message
    assert "serial" in undecodable[1].message


def test_decode_batch_reduces_the_records_of_a_key() -> None:
    messages = [
        message(0, encoded(valuation(1, 100, assessed="1.00"))),
        message(1, encoded(valuation(2, 101))),
        message(2, encoded(valuation(1, 300, assessed="3.00"))),
        message(0, encoded(valuation(1, 200, assessed="2.00")), partition=1),
        message(3, encoded(valuation(2, 400, deleted=True))),
        message(4, encoded(valuation(3, 50, change=None))),
    ]
    records, undecodable, next_offsets = decode_batch(CODEC, messages, ENTITY_OF)  # type: ignore[arg-type]
    assert undecodable == []
    reduced = records["valuations"]
    assert [(r.key_value, r.offset, r.partition) for r in reduced] == [(1, 2, 0), (2, 3, 0), (3, 4, 0)]
    assert reduced[0].row[VALUATIONS.table_columns.index("assessed_value")] == Decimal("3.00")
    assert reduced[1].deleted
    assert next_offsets == {(TOPIC, 0): 5, (TOPIC, 1): 1}


def test_decode_batch_keeps_dates_and_timestamps_as_python_values() -> None:
    owner = {
        "owner_id": 3,
        "property_id": 5,
        "owner_name": "Smith John A",
        "owner_type": "individual",
        "ownership_pct": Decimal("100.00"),
        "start_date": date(2020, 1, 2),
        "end_date": None,
        "source_commit_lsn": lsn(9),
        "source_change_lsn": lsn(9),
        "source_serial": 2,
        "source_ts": TS,
        "deleted": False,
    }
    value = CODEC.encode(ENTITIES["owners"].schema_name, owner)
    records, _, _ = decode_batch(CODEC, [message(0, value, topic="tf.owners")], ENTITY_OF)  # type: ignore[list-item]
    (record,) = records["owners"]
    assert record.row == to_row(ENTITIES["owners"], owner)
    assert record.source_ts == TS


@pytest.mark.parametrize(
    ("low", "high", "position", "assigned_at", "pending"),
    [
        (0, 100, 100, 40, 0),  # caught up
        (0, 100, 60, 40, 40),  # received up to 59, 40 more on the broker
        (0, 100, -1001, 100, 0),  # nothing received since the assignment, none to receive
        (0, 100, -1001, 40, 60),  # nothing received since the assignment at 40: the stall case
        (10, 100, -1001, -2, 90),  # no stored offset: from the partition's start
        (50, 100, -1001, 40, 50),  # the stored offset fell out of retention
    ],
)
def test_records_pending_from_the_consumer_position(
    low: int, high: int, position: int, assigned_at: int, pending: int
) -> None:
    assert records_pending(low, high, position, assigned_at) == pending
