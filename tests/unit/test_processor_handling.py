"""Dead letters always fit in a Kafka message and say what the whole original was."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from schemas.codec import AvroCodec, SchemaRegistry
from stream_processors.handling import ORIGINAL_BYTES_KEPT, VIOLATION_TEXT_KEPT, EventHandler
from tests.unit.property_events import property_insert

CODEC = AvroCodec(SchemaRegistry.from_package())
MESSAGE_MAX_BYTES = 1_000_000
"""confluent-kafka's default ``message.max.bytes``: the processors' output producer keeps it."""


def _handler() -> EventHandler:
    return EventHandler(CODEC, "properties", "tf.properties", "tf.dlq")


def _letter(key: bytes | None, value: bytes, *, offset: int = 5) -> tuple[Any, dict[str, bytes], Any]:
    outcome = _handler().handle(key, value, topic="pacs.pacs.dbo.Property", partition=1, offset=offset)
    (record,) = outcome.records
    assert record.topic == "tf.dlq"
    assert record.value is not None
    return record, dict(record.headers), CODEC.decode(record.value).value


@pytest.mark.parametrize("size", [0, 1, ORIGINAL_BYTES_KEPT - 1, ORIGINAL_BYTES_KEPT])
def test_an_original_up_to_the_limit_is_kept_whole(size: int) -> None:
    value = b"\xc3\x01" + b"\x07" * max(size - 2, 0) if size >= 2 else b"\x07" * size
    record, headers, letter = _letter(b"k", value)
    assert letter["value"] == value
    assert headers["original_value_length"] == str(len(value)).encode()
    assert headers["original_value_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["original_key_length"] == b"1"
    assert record.key == b"k"


def test_an_event_near_the_broker_limit_becomes_a_letter_that_fits() -> None:
    value = b"\xc3\x01" + bytes(range(256)) * 4_100  # 1,049,602 bytes: above message.max.bytes itself
    key = b"K" * 1_040_000
    record, headers, letter = _letter(key, value)
    assert headers["error_code"] == b"PACS-012"
    assert letter["value"] == value[:ORIGINAL_BYTES_KEPT]
    assert letter["key"] == key[:ORIGINAL_BYTES_KEPT] == record.key
    assert headers["original_value_length"] == str(len(value)).encode()
    assert headers["original_value_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["original_key_length"] == str(len(key)).encode()
    assert headers["original_key_sha256"] == hashlib.sha256(key).hexdigest().encode()
    size = len(record.value or b"") + len(record.key or b"") + sum(len(k) + len(v) for k, v in record.headers)
    assert size < MESSAGE_MAX_BYTES // 4


def test_long_violation_texts_are_cut() -> None:
    value = property_insert(7, "9" * 300_000)  # not a ZIP: rejected, the offending value in the letter
    record, headers, letter = _letter(None, value)
    assert headers["error_code"] == b"PACS-004"
    assert letter["violations"]
    for violation in letter["violations"]:
        assert len(violation["message"]) <= VIOLATION_TEXT_KEPT
        assert violation["value"] is None or len(violation["value"]) <= VIOLATION_TEXT_KEPT
    assert any((v["value"] or "").endswith("…") for v in letter["violations"])
    assert "original_key_length" not in headers
    assert len(record.value or b"") < MESSAGE_MAX_BYTES // 4
