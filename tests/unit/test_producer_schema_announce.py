"""Evolved schemas are announced for good only when the Kafka transaction that carries them commits."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from pacs_sync.metrics import ProducerMetrics
from producer.runner import ProducerRunner, schemas_topic
from producer.settings import ProducerSettings
from schemas.codec import AvroCodec, SchemaRegistry


class TransactionLog:
    """A publisher that keeps what each committed transaction held."""

    def __init__(self) -> None:
        self.committed: list[list[str]] = []
        self.open: list[str] | None = None

    def begin(self) -> None:
        self.open = []

    def produce(self, topic: str, key: bytes | None, value: bytes | None, **_: Any) -> None:
        assert self.open is not None
        self.open.append(topic)

    def commit(self) -> None:
        assert self.open is not None
        self.committed.append(self.open)
        self.open = None

    def abort(self) -> None:
        self.open = None


def test_a_schema_announced_in_an_aborted_transaction_is_announced_again() -> None:
    settings = ProducerSettings(db_name="pacs", metrics_port=0)
    runner = ProducerRunner(
        settings, AvroCodec(SchemaRegistry.from_package()), ProducerMetrics.create(CollectorRegistry())
    )
    log = TransactionLog()
    runner._publisher = log  # type: ignore[assignment]
    runner._pending_schemas.append((b"\x01" * 8, {"type": "record", "name": "Evolved", "fields": []}))

    log.begin()
    runner._announce_schemas()
    runner._before_retry(SimpleNamespace(outcome=None, next_action=None))  # type: ignore[arg-type]
    assert log.committed == []

    log.begin()  # the retried window
    runner._announce_schemas()
    runner._commit()
    assert log.committed == [[schemas_topic(settings)]]

    log.begin()  # later windows do not announce it again
    runner._announce_schemas()
    runner._commit()
    assert log.committed[1] == []
