from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pacs_sync.lsn import Lsn, SourcePosition
from producer.offsets import OFFSET_VERSION, SourceOffset
from schemas.codec import AvroCodec, SchemaRegistry

OFFSET_SCHEMA = "io.terrafusion.pacs.SourceOffset"
NOW = datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)
NOW_MS = 1714566615123

COMMIT = Lsn.parse("0000002a:00000104:0001")
CHANGE = Lsn.parse("0000002a:00000100:0003")
SNAPSHOT_LSN = Lsn.parse("00000029:000000ff:0002")


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SchemaRegistry.from_package())


COMPLETE = SourceOffset(position=SourcePosition(COMMIT), snapshot_completed=True, snapshot_lsn=SNAPSHOT_LSN)
MID_TRANSACTION = SourceOffset(
    position=SourcePosition(COMMIT, CHANGE, 4), snapshot_completed=True, snapshot_lsn=SNAPSHOT_LSN
)
SNAPSHOT_RUNNING = SourceOffset(
    snapshot_lsn=SNAPSHOT_LSN,
    snapshot_table="PropertyOwner",
    snapshot_last_key=1500,
    table_floors={"Property": COMMIT, "Structure": SNAPSHOT_LSN},
)
SNAPSHOT_DONE = SourceOffset(
    position=SourcePosition(SNAPSHOT_LSN), snapshot_completed=True, snapshot_lsn=SNAPSHOT_LSN
)
EXAMPLES = {
    "empty": SourceOffset(),
    "complete": COMPLETE,
    "mid-transaction": MID_TRANSACTION,
    "snapshot-running": SNAPSHOT_RUNNING,
    "snapshot-string-key": SourceOffset(
        snapshot_lsn=SNAPSHOT_LSN, snapshot_table="Property", snapshot_last_key="R-00012;x}"
    ),
    "snapshot-done": SNAPSHOT_DONE,
    "floors-while-streaming": SourceOffset(
        position=SourcePosition(COMMIT, CHANGE, 2),
        snapshot_completed=True,
        snapshot_lsn=SNAPSHOT_LSN,
        table_floors={"Structure": COMMIT},
    ),
}


def test_complete_position_record() -> None:
    assert COMPLETE.to_record(NOW) == {
        "version": OFFSET_VERSION,
        "commit_lsn": "0000002a:00000104:0001",
        "change_lsn": None,
        "event_serial_no": None,
        "snapshot_completed": True,
        "snapshot_lsn": "00000029:000000ff:0002",
        "snapshot_table": None,
        "snapshot_last_key": json.dumps({"table": None, "last_key": None, "floors": {}}),
        "ts_ms": NOW_MS,
    }
    assert OFFSET_VERSION == 1


def test_mid_transaction_record() -> None:
    record = MID_TRANSACTION.to_record(NOW)
    assert record["commit_lsn"] == "0000002a:00000104:0001"
    assert record["change_lsn"] == "0000002a:00000100:0003"
    assert record["event_serial_no"] == 4


def test_snapshot_running_record() -> None:
    record = SNAPSHOT_RUNNING.to_record(NOW)
    assert record["commit_lsn"] is None
    assert record["change_lsn"] is None
    assert record["event_serial_no"] is None
    assert record["snapshot_completed"] is False
    assert record["snapshot_table"] == "PropertyOwner"
    assert json.loads(record["snapshot_last_key"]) == {
        "table": "PropertyOwner",
        "last_key": 1500,
        "floors": {"Property": "0000002a:00000104:0001", "Structure": "00000029:000000ff:0002"},
    }


def test_ts_ms_defaults_to_now() -> None:
    before = int(datetime.now(tz=UTC).timestamp() * 1000)
    ts = SourceOffset().to_record()["ts_ms"]
    after = int(datetime.now(tz=UTC).timestamp() * 1000)
    assert before <= ts <= after


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_record_round_trip(name: str) -> None:
    offset = EXAMPLES[name]
    assert SourceOffset.from_record(offset.to_record(NOW)) == offset


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_record_encodes_with_the_shipped_schema(codec: AvroCodec, name: str) -> None:
    offset = EXAMPLES[name]
    record = offset.to_record(NOW)
    decoded = codec.decode(codec.encode(OFFSET_SCHEMA, record))
    assert decoded.schema_name == OFFSET_SCHEMA
    assert decoded.value == record
    assert SourceOffset.from_record(decoded.value) == offset


def test_round_trip_keeps_position_order_and_completeness() -> None:
    complete = SourceOffset.from_record(COMPLETE.to_record(NOW)).position
    mid = SourceOffset.from_record(MID_TRANSACTION.to_record(NOW)).position
    assert complete is not None
    assert mid is not None
    assert complete.transaction_complete
    assert not mid.transaction_complete
    assert mid < complete
    assert mid == SourcePosition(COMMIT, CHANGE, 4)


def test_advanced_replaces_only_the_position() -> None:
    moved = SNAPSHOT_DONE.advanced(SourcePosition(COMMIT, CHANGE, 2))
    assert moved.position == SourcePosition(COMMIT, CHANGE, 2)
    assert moved.snapshot_completed
    assert moved.snapshot_lsn == SNAPSHOT_LSN
    assert SNAPSHOT_DONE.position == SourcePosition(SNAPSHOT_LSN)


# ---- tolerant loading ----


def test_empty_record_is_the_default_offset() -> None:
    assert SourceOffset.from_record({}) == SourceOffset()


def test_record_with_only_a_commit_lsn() -> None:
    offset = SourceOffset.from_record({"commit_lsn": "0000002a:00000104:0001"})
    assert offset == SourceOffset(position=SourcePosition(COMMIT))
    assert offset.position is not None
    assert offset.position.transaction_complete


def test_nulls_everywhere_are_defaults() -> None:
    record: dict[str, Any] = {
        "version": 1,
        "commit_lsn": None,
        "change_lsn": None,
        "event_serial_no": None,
        "snapshot_completed": False,
        "snapshot_lsn": None,
        "snapshot_table": None,
        "snapshot_last_key": None,
        "ts_ms": 0,
    }
    assert SourceOffset.from_record(record) == SourceOffset()


def test_unknown_keys_and_future_versions_are_ignored() -> None:
    record = {**COMPLETE.to_record(NOW), "version": 7, "new_field": [1, 2, 3]}
    assert SourceOffset.from_record(record) == COMPLETE


@pytest.mark.parametrize("garbage", ["not json", "{", "{'table': 'Property'}", "\x00\x01"])
def test_garbage_snapshot_last_key_is_ignored(garbage: str) -> None:
    record = {**SNAPSHOT_RUNNING.to_record(NOW), "snapshot_last_key": garbage}
    offset = SourceOffset.from_record(record)
    assert offset.snapshot_table == "PropertyOwner"  # from the record's own field
    assert offset.snapshot_last_key is None
    assert offset.table_floors == {}
    assert offset.snapshot_lsn == SNAPSHOT_LSN


def test_snapshot_extras_with_missing_keys() -> None:
    record = {"snapshot_lsn": str(SNAPSHOT_LSN), "snapshot_last_key": json.dumps({"table": "Structure"})}
    offset = SourceOffset.from_record(record)
    assert offset.snapshot_table == "Structure"
    assert offset.snapshot_last_key is None
    assert offset.table_floors == {}
    record["snapshot_last_key"] = json.dumps({"floors": None, "last_key": 0})
    offset = SourceOffset.from_record(record)
    assert offset.snapshot_last_key == 0
    assert offset.table_floors == {}
    assert offset.snapshot_table is None


def test_snapshot_table_field_wins_over_the_json_copy() -> None:
    record = {"snapshot_table": "Property", "snapshot_last_key": json.dumps({"table": "Structure"})}
    assert SourceOffset.from_record(record).snapshot_table == "Property"


@pytest.mark.parametrize("raw", ["1500", "null", "[1500]", '"R-1"'])
def test_non_object_snapshot_last_key_is_tolerated(raw: str) -> None:
    offset = SourceOffset.from_record({"snapshot_table": "Property", "snapshot_last_key": raw})
    assert offset.snapshot_table == "Property"
    assert offset.table_floors == {}
