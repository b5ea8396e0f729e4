"""The dead-letter topic as an index: which (entity, key) the pipeline rejected, and why.

Two stages write to ``<clean prefix>.dlq``, in one record schema (``io.terrafusion.pacs.DeadLetter``):

* the processors (PACS-004 validation, PACS-012 undecodable): ``value`` is the original change event
  (``pacs.dbo.<Table>Envelope``, key in its ``after`` or ``before`` image), ``topic`` the change topic
  – or, for owners, the processors' re-key topic (the value is still the change event);
* the sink (PACS-011 refused by PostgreSQL, PACS-012 undecodable): ``value`` is the clean record
  (``io.terrafusion.model.<Name>``), ``topic`` the clean topic.

:func:`attribute_letter` finds a letter's entity and key from the decoded ``value``, else from the
``topic`` and the Avro ``key`` bytes; a change event of another PACS database is *foreign* and
ignored. :func:`read_dead_letters` reads the whole topic, from the beginning to the end offsets it
had when the read started (confluent-kafka, ``read_committed``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from pacs_sync.errors import ErrorCode, RetriableError
from producer.mapping import TableMapping
from schemas.codec import AvroCodec, UndecodableEventError, schema_for_table
from sink.tables import ENTITIES

logger = logging.getLogger(__name__)

DEAD_LETTER_SCHEMA = "io.terrafusion.pacs.DeadLetter"


_CLEAN_RECORDS = {spec.schema_name: entity for entity, spec in ENTITIES.items()}
_CLEAN_KEYS = {spec.schema_name + "Key": entity for entity, spec in ENTITIES.items()}


@dataclass(frozen=True)
class LetterContext:
    """What attributing a letter needs to know about this installation (see :meth:`build`)."""

    mappings: Mapping[str, TableMapping]
    """PACS table -> its mapping (entity, event field names)."""
    db_name: str
    topic_prefix: str
    db_schema: str
    envelopes: Mapping[str, str]
    """Envelope schema name -> PACS table."""
    key_schemas: Mapping[str, str]
    """Change-event key schema name -> PACS table."""

    @classmethod
    def build(
        cls, mappings: Mapping[str, TableMapping], *, topic_prefix: str, db_name: str, db_schema: str
    ) -> LetterContext:
        """The context of one installation (the producer's topic naming)."""
        return cls(
            mappings=mappings,
            db_name=db_name,
            topic_prefix=topic_prefix,
            db_schema=db_schema,
            envelopes={schema_for_table(table, "envelope"): table for table in mappings},
            key_schemas={schema_for_table(table, "key"): table for table in mappings},
        )

    def is_other_database(self, topic: str, table: str) -> bool:
        """``topic`` is the change topic of ``table`` in another PACS database (same prefix)."""
        ours = f"{self.topic_prefix}.{self.db_name}.{self.db_schema}.{table}"
        return (
            topic != ours
            and topic.startswith(self.topic_prefix + ".")
            and topic.endswith(f".{self.db_schema}.{table}")
        )


@dataclass(frozen=True, slots=True)
class Attribution:
    """The entity and key a dead letter is about."""

    entity: str
    key: int
    reason: str


def letter_reason(letter: Mapping[str, Any]) -> str:
    """``<error code> <rule ids>``: the error-severity rule ids, or every rule id when none is an error."""
    violations = [v for v in letter.get("violations") or () if isinstance(v, Mapping)]
    errors = [str(v.get("rule_id")) for v in violations if v.get("severity") == "error"]
    rules = errors or [str(v.get("rule_id")) for v in violations]
    unique = list(dict.fromkeys(rules))
    code = str(letter.get("error_code") or "?")
    return f"{code} {','.join(unique)}" if unique else code


def _int_key(image: object, field_name: str) -> int | None:
    if isinstance(image, Mapping):
        value = image.get(field_name)
        if type(value) is int:
            return value
    return None


def _decoded(codec: AvroCodec, data: object) -> Any:
    if not isinstance(data, bytes | bytearray):
        return None
    try:
        return codec.decode(bytes(data))
    except UndecodableEventError:
        return None


def attribute_letter(
    codec: AvroCodec, letter: Mapping[str, Any], context: LetterContext
) -> Attribution | str:
    """The entity and key of one decoded dead letter, or why it has none.

    The letter's ``value`` decides when it decodes (a change event: its ``after`` or ``before``
    image, and its ``source.db`` must be this database; a clean record: its key column). Otherwise
    the Avro message ``key`` names the row, unless the ``topic`` is another database's change topic.

    Returns:
        An :class:`Attribution`, or ``"foreign"`` (about another PACS database) or ``"unattributed"``
        (nothing says which row it was: an undecodable value without an Avro key).
    """
    reason = letter_reason(letter)
    topic = str(letter.get("topic") or "")
    decoded = _decoded(codec, letter.get("value"))
    if decoded is not None:
        table = context.envelopes.get(decoded.schema_name)
        if table is not None:
            event = decoded.value
            source = event.get("source")
            db = source.get("db") if isinstance(source, Mapping) else None
            if db is not None and db != context.db_name:
                return "foreign"
            mapping = context.mappings[table]
            found = _int_key(event.get("after"), mapping.key_field)
            if found is None:
                found = _int_key(event.get("before"), mapping.key_field)
            if found is not None:
                return Attribution(mapping.entity, found, reason)
        entity = _CLEAN_RECORDS.get(decoded.schema_name)
        if entity is not None:
            found = _int_key(decoded.value, ENTITIES[entity].key_column)
            if found is not None:
                return Attribution(entity, found, reason)
    # The value says nothing (undecodable, or an evolved schema this process does not know): the
    # Avro message key names the row (owner events re-keyed by PropertyID carry no Avro key).
    key_record = _decoded(codec, letter.get("key"))
    if key_record is not None:
        table = context.key_schemas.get(key_record.schema_name)
        if table is not None:
            if context.is_other_database(topic, table):
                return "foreign"
            mapping = context.mappings[table]
            found = _int_key(key_record.value, mapping.key_field)
            if found is not None:
                return Attribution(mapping.entity, found, reason)
        entity = _CLEAN_KEYS.get(key_record.schema_name)
        if entity is not None:
            found = _int_key(key_record.value, ENTITIES[entity].key_column)
            if found is not None:
                return Attribution(entity, found, reason)
    return "unattributed"


@dataclass
class DeadLetterIndex:
    """The dead-lettered keys per entity (the newest letter's reason per key) and what was read."""

    keys: dict[str, dict[int, str]] = field(default_factory=dict)
    read: int = 0
    """Letters read."""
    attributed: int = 0
    """Letters tied to an entity and key of this installation."""
    foreign: int = 0
    """Letters about another PACS database (ignored)."""
    unattributed: int = 0
    """Letters that name no row (an undecodable value without an Avro key)."""
    unreadable: int = 0
    """Records on the topic that are not dead letters."""
    topic: str = ""
    seconds: float = 0.0

    def for_entity(self, entity: str) -> dict[int, str]:
        """The entity's dead-lettered keys and why."""
        return self.keys.get(entity, {})

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "topic": self.topic,
            "read": self.read,
            "attributed": self.attributed,
            "foreign": self.foreign,
            "unattributed": self.unattributed,
            "unreadable": self.unreadable,
            "keys": {entity: len(keys) for entity, keys in sorted(self.keys.items())},
            "seconds": round(self.seconds, 3),
        }


def index_letters(
    codec: AvroCodec, values: Iterable[bytes | None], context: LetterContext
) -> DeadLetterIndex:
    """Index raw dead-letter record values (in topic order: a later letter's reason wins)."""
    index = DeadLetterIndex()
    for raw in values:
        if raw is None:
            continue
        try:
            decoded = codec.decode(raw)
        except UndecodableEventError:
            index.unreadable += 1
            continue
        if decoded.schema_name != DEAD_LETTER_SCHEMA:
            index.unreadable += 1
            continue
        index.read += 1
        found = attribute_letter(codec, decoded.value, context)
        if isinstance(found, Attribution):
            index.attributed += 1
            index.keys.setdefault(found.entity, {})[found.key] = found.reason
        elif found == "foreign":
            index.foreign += 1
        else:
            index.unattributed += 1
    return index


def read_dead_letters(bootstrap: str, topic: str, *, timeout_s: float) -> list[bytes | None]:
    """Every record value of ``topic``, from its beginning to the end offsets it has now.

    A missing topic holds no letters. ``read_committed``: a rejected letter of an aborted
    transaction does not count, and an open transaction's letters are waited for until it ends
    (the partition-EOF event marks the readable end).

    Raises:
        RetriableError: Kafka does not answer, or the topic is not read to its end in ``timeout_s``.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"pacs-sync-verify-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "log_level": 3,
        }
    )
    deadline = time.monotonic() + timeout_s
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=min(timeout_s, 15.0))
        except KafkaException as exc:
            raise RetriableError(
                f"Kafka at {bootstrap} does not answer: {exc}", code=ErrorCode.CONNECTION_UNAVAILABLE
            ) from exc
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            logger.info("dead-letter topic %s does not exist: no dead letters", topic)
            return []
        pending: dict[int, int] = {}
        partitions = []
        for partition in sorted(described.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                pending[partition] = high
                partitions.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        if not partitions:
            return []
        consumer.assign(partitions)
        values: list[bytes | None] = []
        while pending:
            if time.monotonic() > deadline:
                raise RetriableError(
                    f"could not read dead-letter topic {topic} to its end in {timeout_s:g} s "
                    f"(partitions left: {sorted(pending)})",
                    code=ErrorCode.KAFKA_DELIVERY_FAILED,
                )
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                error = message.error()
                partition = message.partition() or 0
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.pop(partition, None)
                        continue
                    if error.fatal() or not error.retriable():
                        raise RetriableError(
                            f"reading dead-letter topic {topic} failed: {error}",
                            code=ErrorCode.KAFKA_DELIVERY_FAILED,
                        )
                    continue
                if partition not in pending:
                    continue  # past the end offsets taken at the start
                values.append(message.value())
                if (message.offset() or 0) + 1 >= pending[partition]:
                    pending.pop(partition, None)
        return values
    except KafkaException as exc:
        raise RetriableError(
            f"reading dead-letter topic {topic} failed: {exc}", code=ErrorCode.KAFKA_DELIVERY_FAILED
        ) from exc
    finally:
        consumer.close()
