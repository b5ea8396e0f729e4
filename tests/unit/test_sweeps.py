"""Re-snapshot sweeps (RELIABILITY.md problem 3): their format, their tiling of the key space, the
sink's statement and split, and the producer's re-snapshot publishing them with each chunk."""

from __future__ import annotations

import json
import os
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pacs_sync.lsn import Lsn, position_bytes
from pacs_sync.metrics import ProducerMetrics
from pacs_sync.sweeps import (
    MAX_SWEEP_KEYS,
    InvalidSweepError,
    Sweep,
    chunk_sweeps,
    sweeps_topic,
)
from producer.offsets import SourceOffset
from producer.runner import ProducerRunner
from producer.settings import ProducerSettings
from schemas.codec import AvroCodec, SchemaRegistry
from sink.sweeps import split_sweeps, sweep_statement
from sink.tables import ENTITIES

LSN = Lsn.parse("0000002a:00000166:0001")


def covering(sweeps: list[Sweep], key: int) -> list[Sweep]:
    return [
        s
        for s in sweeps
        if (s.after_key is None or key > s.after_key) and (s.through_key is None or key <= s.through_key)
    ]


@pytest.mark.parametrize("seed", range(25))
def test_a_re_snapshot_s_sweeps_tile_the_key_space_and_list_exactly_the_source_keys(seed: int) -> None:
    rng = random.Random(seed)
    source = sorted(rng.sample(range(1, 400), rng.randrange(0, 120)))
    chunk = rng.choice([1, 3, 10, 50, 500])
    max_keys = rng.choice([1, 2, 7, MAX_SWEEP_KEYS])
    sweeps: list[Sweep] = []
    last_key: int | None = None
    chunks = [source[i : i + chunk] for i in range(0, len(source), chunk)] or [[]]
    for index, keys in enumerate(chunks):
        sweeps += chunk_sweeps(
            "valuations",
            "PropertyValue",
            LSN,
            last_key,
            keys,
            last=index == len(chunks) - 1,
            max_keys=max_keys,
        )
        last_key = keys[-1] if keys else last_key
    for key in range(-5, 410):
        found = covering(sweeps, key)
        assert len(found) == 1, f"key {key} covered by {len(found)} sweeps"
        assert (key in found[0].keys) == (key in source)
    assert [k for s in sweeps for k in s.keys] == source
    assert all(len(s.keys) <= max_keys for s in sweeps)


def test_a_sweep_sits_at_the_snapshot_rows_position() -> None:
    sweep = Sweep("structures", "Structure", LSN, None, None, ())
    assert sweep.position == position_bytes(str(LSN), None, 0)


def test_chunk_keys_must_ascend_after_the_previous_chunk() -> None:
    with pytest.raises(ValueError, match="ascending"):
        chunk_sweeps("properties", "Property", LSN, None, [3, 2], last=True)
    with pytest.raises(ValueError, match="ascending"):
        chunk_sweeps("properties", "Property", LSN, 5, [5, 6], last=True)


def test_sweep_json_round_trip() -> None:
    sweep = Sweep("owners", "PropertyOwner", LSN, 10, 20, (11, 15, 20))
    assert Sweep.from_json(sweep.to_json()) == sweep
    assert json.loads(sweep.to_json())["commit_lsn"] == "0000002a:00000166:0001"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"version": 2}',
        b'{"version": 1, "entity": "owners"}',
        b'{"version":1,"entity":"owners","table":"PropertyOwner","commit_lsn":"x","after_key":null,'
        b'"through_key":null,"keys":[]}',
        b'{"version":1,"entity":"owners","table":"PropertyOwner","commit_lsn":"0000002a:00000166:0001",'
        b'"after_key":null,"through_key":null,"keys":["1"]}',
        b'{"version":1,"entity":"owners","table":"PropertyOwner","commit_lsn":"0000002a:00000166:0001",'
        b'"after_key":true,"through_key":null,"keys":[]}',
        b'{"version":1,"entity":"","table":"PropertyOwner","commit_lsn":"0000002a:00000166:0001",'
        b'"after_key":null,"through_key":null,"keys":[]}',
    ],
)
def test_an_unreadable_sweep_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidSweepError):
        Sweep.from_json(raw)


def test_sweeps_topic_name() -> None:
    assert sweeps_topic("pacs", "PACS_Benton") == "pacs.PACS_Benton._snapshot_sweeps"


# ---- the sink side ----


def test_sweep_statement_marks_only_live_older_rows_in_range_not_listed() -> None:
    sql = sweep_statement(ENTITIES["structures"])
    assert sql.startswith("UPDATE pacs_sync.structures SET property_id = NULL, ")
    assert "deleted = true" in sql
    assert "source_position = $2" in sql
    assert "WHERE NOT deleted AND source_position < $2" in sql
    assert "structure_id > $3" in sql
    assert "structure_id <= $4" in sql
    assert "structure_id <> ALL($5::bigint[])" in sql
    assert all(f"{c} = NULL" in sql for c in ENTITIES["structures"].data_columns)
    assert sweep_statement(ENTITIES["owners"], "pacs_sync.owners__shadow").startswith(
        "UPDATE pacs_sync.owners__shadow SET"
    )


class FakeMessage:
    def __init__(self, topic: str, offset: int, value: bytes | None) -> None:
        self._topic, self._offset, self._value = topic, offset, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value


def test_split_sweeps_separates_counts_and_positions() -> None:
    sweep = Sweep("owners", "PropertyOwner", LSN, None, None, (1,))
    messages: list[Any] = [
        FakeMessage("t.owners", 7, b"x"),
        FakeMessage("sw", 3, sweep.to_json()),
        FakeMessage("sw", 4, b"garbage"),
        FakeMessage("t.owners", 8, b"y"),
    ]
    clean, batch = split_sweeps(messages, "sw")
    assert [m.offset() for m in clean] == [7, 8]
    assert batch.sweeps == [sweep]
    assert batch.invalid == 1
    assert batch.next_offsets == {("sw", 0): 5}


# ---- the producer side ----


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class TableSource:
    def __init__(self, keys: list[int]) -> None:
        self.keys = keys

    def max_lsn(self) -> Lsn:
        return LSN

    def snapshot_chunk(
        self, table: str, columns: Any, key: str, after: Any, limit: int
    ) -> list[tuple[Any, ...]]:
        keys = [k for k in self.keys if after is None or k > after][:limit]
        return [(k, f"P-{k}", None, "Richland", "WA", "99352", None, Decimal("1.0000"), 1990) for k in keys]

    def end_read(self) -> None:
        pass


class RecordingPublisher:
    def __init__(self) -> None:
        self.transactions: list[list[tuple[str, bytes | None, bytes | None]]] = []
        self.open: list[tuple[str, bytes | None, bytes | None]] | None = None

    def begin(self) -> None:
        self.open = []

    def partition_count(self, _topic: str) -> int:
        return 3

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        assert self.open is not None
        self.open.append((topic, key, value))

    def commit(self) -> None:
        assert self.open is not None
        self.transactions.append(self.open)
        self.open = None


@pytest.mark.parametrize("keys", [[], [4], list(range(1, 24))])
def test_the_re_snapshot_commits_each_chunk_s_sweeps_with_its_rows(keys: list[int]) -> None:
    settings = ProducerSettings(db_name="pacs", metrics_port=0, snapshot_chunk_rows=10)
    runner = ProducerRunner(
        settings, AvroCodec(SchemaRegistry.from_package()), ProducerMetrics.create(CollectorRegistry())
    )
    publisher = RecordingPublisher()
    runner._source = TableSource(keys)  # type: ignore[assignment]
    runner._publisher = publisher  # type: ignore[assignment]
    runner.offset = SourceOffset(snapshot_completed=True)

    runner._resnapshot("Property")

    topic = sweeps_topic("pacs", "pacs")
    sweeps: list[Sweep] = []
    for transaction in publisher.transactions:
        rows = [k for t, k, _ in transaction if t == "pacs.pacs.dbo.Property"]
        mine = [Sweep.from_json(v or b"") for t, _, v in transaction if t == topic]
        assert mine, "a chunk without its sweep"
        assert sum(len(s.keys) for s in mine) == len(rows)
        sweeps += mine
    assert [k for s in sweeps for k in s.keys] == keys
    assert sweeps[0].after_key is None
    assert sweeps[-1].through_key is None
    assert all(s.entity == "properties" and s.commit_lsn == LSN for s in sweeps)
    assert runner.offset.table_floors["Property"] == LSN
