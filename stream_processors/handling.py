"""From one raw change event to the records it produces: a clean record, or a dead letter.

No Kafka and no Faust here: bytes in, (topic, key, value, headers) out, so the agents stay thin and
this is unit-tested directly. Output bytes depend only on the input event (no wall-clock fields in
clean records), so a record re-emitted after a crash is byte-identical to its first emission.

Dead letters always fit in a Kafka message: a letter keeps the original key and value whole up to
:data:`ORIGINAL_BYTES_KEPT` bytes each and only their first ``ORIGINAL_BYTES_KEPT`` bytes beyond
that, and violation texts are cut at :data:`VIOLATION_TEXT_KEPT` characters. Every letter says what
the whole original was in its headers: ``original_value_length`` and ``original_value_sha256`` (hex)
of the value, and ``original_key_length``/``original_key_sha256`` when it has a key; the original is
shortened exactly when its length header exceeds the bytes kept. The letter's own message key is the
(shortened) original key.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pacs_sync.errors import ErrorCode
from schemas.codec import AvroCodec, UndecodableEventError
from stream_processors.rules import OwnerShareLedger, Violation
from stream_processors.validation import process_event

logger = logging.getLogger(__name__)

DEAD_LETTER_SCHEMA = "io.terrafusion.pacs.DeadLetter"
ORIGINAL_BYTES_KEPT = 65_536
"""A dead letter keeps at most this many bytes of the original key, and as many of its value.

Far above any PACS row's event (a few kB), far below the producers' 1,000,000-byte message limit
even with both originals at this size and every violation text at its limit."""
VIOLATION_TEXT_KEPT = 1_000
"""Characters kept of a violation's message and offending value (longer ones end with "…")."""

# PACS table -> (entity, output schema base name)
TABLE_ENTITIES: dict[str, str] = {
    "Property": "properties",
    "PropertyOwner": "owners",
    "PropertyValue": "valuations",
    "Structure": "structures",
}
OUTPUT_NAMES: dict[str, str] = {
    "properties": "Property",
    "owners": "Owner",
    "valuations": "Valuation",
    "structures": "Structure",
}


@dataclass(frozen=True)
class OutRecord:
    """A record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What one input event became."""

    records: tuple[OutRecord, ...]
    outcome: str
    """"valid", "invalid" (dead-lettered for its rules), "undecodable" or "skipped" (a tombstone)."""
    violations: tuple[Violation, ...] = ()
    commit_time: datetime | None = None


class EventHandler:
    """Turns raw change events of one entity into clean records or dead letters."""

    def __init__(
        self, codec: AvroCodec, entity: str, output_topic: str, dlq_topic: str, *, as_of: date | None = None
    ) -> None:
        """Bind the codec, the entity and its output and dead-letter topics."""
        self.codec = codec
        self.entity = entity
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.as_of = as_of
        name = OUTPUT_NAMES[entity]
        self.key_schema = f"io.terrafusion.model.{name}Key"
        self.value_schema = f"io.terrafusion.model.{name}"

    def handle(
        self,
        key: bytes | None,
        value: bytes | None,
        *,
        topic: str,
        partition: int,
        offset: int,
        ledger: OwnerShareLedger | None = None,
    ) -> Outcome:
        """Decode, validate and transform one event; never raises for bad input."""
        if value is None:
            return Outcome((), "skipped")
        try:
            event = self.codec.decode(value).value
        except UndecodableEventError as exc:
            reason = str(exc.context.get("reason", "undecodable"))
            violation = Violation("AVRO-DECODE", "error", "", str(exc.message), reason)
            letter = self._dead_letter(
                ErrorCode.UNDECODABLE_EVENT, key, value, (violation,), topic, partition, offset, {}
            )
            return Outcome((letter,), "undecodable", (violation,))
        result = process_event(self.entity, event, ledger=ledger, as_of=self.as_of, key=self._key_record(key))
        source = event.get("source") or {}
        commit_time = source.get("commit_ts_ms")
        if not result.ok or result.record is None:
            letter = self._dead_letter(
                ErrorCode.DATA_VALIDATION, key, value, result.violations, topic, partition, offset, source
            )
            return Outcome((letter,), "invalid", result.violations, commit_time)
        record = OutRecord(
            self.output_topic,
            self.codec.encode(self.key_schema, result.key),
            self.codec.encode(self.value_schema, result.record),
        )
        return Outcome((record,), "valid", result.violations, commit_time)

    def _key_record(self, key: bytes | None) -> dict[str, Any] | None:
        """The decoded Avro key (deletes without a before image carry only it), when the key is Avro."""
        if key is None or not key.startswith(b"\xc3\x01"):
            return None  # e.g. the PropertyID re-key of owner events
        try:
            return self.codec.decode(key).value
        except UndecodableEventError:
            return None

    def _dead_letter(
        self,
        code: ErrorCode,
        key: bytes | None,
        value: bytes | None,
        violations: tuple[Violation, ...],
        topic: str,
        partition: int,
        offset: int,
        source: Mapping[str, Any],
    ) -> OutRecord:
        kept_key, key_headers = _kept_original("key", key)
        kept_value, value_headers = _kept_original("value", value)
        letter = {
            "error_code": code.value,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": kept_key,
            "value": kept_value,
            "violations": [
                {
                    "rule_id": v.rule_id,
                    "severity": v.severity,
                    "field": v.field,
                    "message": _kept_text(v.message),
                    "value": None if v.value is None else _kept_text(v.value),
                }
                for v in violations
            ],
            "source_commit_lsn": source.get("commit_lsn"),
            "source_change_lsn": source.get("change_lsn"),
            "failed_at": datetime.now(tz=UTC),
        }
        headers = (
            ("error_code", code.value.encode()),
            ("rule_ids", ",".join(v.rule_id for v in violations).encode()),
            ("source_topic", topic.encode()),
            ("source_partition", str(partition).encode()),
            ("source_offset", str(offset).encode()),
            ("source_commit_lsn", str(source.get("commit_lsn") or "").encode()),
            *key_headers,
            *value_headers,
        )
        return OutRecord(self.dlq_topic, kept_key, self.codec.encode(DEAD_LETTER_SCHEMA, letter), headers)


def _kept_original(name: str, data: bytes | None) -> tuple[bytes | None, tuple[tuple[str, bytes], ...]]:
    """What a dead letter keeps of an original key or value, and the headers describing the whole."""
    if data is None:
        return None, ()
    data = bytes(data)
    headers = (
        (f"original_{name}_length", str(len(data)).encode()),
        (f"original_{name}_sha256", hashlib.sha256(data).hexdigest().encode()),
    )
    return data[:ORIGINAL_BYTES_KEPT], headers


def _kept_text(text: str) -> str:
    return text if len(text) <= VIOLATION_TEXT_KEPT else text[: VIOLATION_TEXT_KEPT - 1] + "…"
