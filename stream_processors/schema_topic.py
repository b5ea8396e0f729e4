"""Evolved schemas from the producer's ``_schemas`` topic: the resolver of the processors' codec.

After a capture-instance switch (a column added, a second capture instance) the producer publishes
its change events with an *evolved* envelope schema, whose fingerprint is in no shipped ``.avsc``
file. It writes that schema to ``<topic prefix>.<database>._schemas`` (compacted, one partition; key:
the fingerprint in hex, value: the schema's JSON) in the same Kafka transaction as, and before, the
first events that use it. :class:`SchemaTopicResolver` answers the codec's question "which schema has
this fingerprint?" from that topic:

* it reads ``read_committed``, so a schema of an aborted transaction is never used, and the schema
  of any committed event is there once the transaction's marker reached the schemas partition;
* what it has read is cached, and a lookup only reads what was added since (a watermark query when
  nothing was); a fingerprint still unknown then is answered None, and the event is dead-lettered
  ``AVRO-DECODE`` (PACS-012, reason ``unknown_fingerprint``) as before;
* while a transaction is open on the schemas partition (its marker may be a moment behind the change
  topic's) it waits up to :data:`SETTLE_S` for it before answering None;
* while Kafka does not answer it retries, with a warning, instead of failing the event: a schema
  that cannot be read now is not a bad event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

logger = logging.getLogger(__name__)

SETTLE_S = 5.0
"""Longest wait for an open transaction on the schemas partition before a fingerprint is unknown."""
_TIMEOUT_S = 10.0
_RETRY_MAX_S = 10.0
_NO_SUCH_PARTITION = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION)


class SchemaTopicResolver:
    """Looks fingerprints up in the schemas topic (a :data:`schemas.codec.SchemaResolver`).

    Thread-safe. Its Kafka consumers are created on the first lookup (a worker whose events all use
    shipped schemas never connects).
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        """Bind the broker and the schemas topic."""
        self.bootstrap = bootstrap
        self.topic = topic
        self._schemas: dict[bytes, Mapping[str, Any]] = {}
        self._position = 0
        self._reader: Consumer | None = None
        self._watcher: Consumer | None = None
        self._lock = threading.Lock()

    def __call__(self, fingerprint: bytes) -> Mapping[str, Any] | None:
        """The schema with this 8-byte fingerprint, or None if the topic has none (after a refresh)."""
        with self._lock:
            found = self._schemas.get(fingerprint)
            if found is not None:
                return found
            deadline = time.monotonic() + SETTLE_S
            while True:
                open_transaction = self._refresh()
                found = self._schemas.get(fingerprint)
                if found is not None or not open_transaction or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            if found is None:
                logger.warning(
                    "no schema with fingerprint %s in %s (read up to offset %d)",
                    fingerprint.hex(),
                    self.topic,
                    self._position,
                )
            else:
                logger.info(
                    "schema %s (fingerprint %s) read from %s",
                    found.get("name"),
                    fingerprint.hex(),
                    self.topic,
                )
            return found

    def close(self) -> None:
        """Close the Kafka consumers, if they were created."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        for consumer in (self._reader, self._watcher):
            if consumer is not None:
                consumer.close()
        self._reader = self._watcher = None

    def _refresh(self) -> bool:
        """Read what was committed since the last refresh; True while a transaction is still open."""
        backoff = 0.5
        while True:
            try:
                return self._read_new()
            except KafkaException as exc:
                logger.warning("cannot read %s (%s); retrying in %.1f s", self.topic, exc, backoff)
                self._close()
                time.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_S)

    def _read_new(self) -> bool:
        reader = self._reader
        partition = TopicPartition(self.topic, 0)
        if reader is None:
            reader = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"pacs-sync-schema-reader-{uuid.uuid4().hex}",  # never commits
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 10,
                    "log_level": 3,
                }
            )
            self._reader = reader
            reader.assign([TopicPartition(self.topic, 0, self._position)])
        try:
            # read_committed: the high offset is the last stable offset (open transactions excluded).
            _low, stable = reader.get_watermark_offsets(partition, timeout=_TIMEOUT_S, cached=False)
        except KafkaException as exc:
            if exc.args[0].code() in _NO_SUCH_PARTITION and not self._exists(reader):
                return False  # no producer has created it yet: no evolved schema exists
            raise
        deadline = time.monotonic() + _TIMEOUT_S
        while self._position < stable:
            for message in reader.consume(num_messages=1000, timeout=0.2):
                if message.error() is None:
                    self._keep(message.key(), message.value())
            self._position = reader.position([partition])[0].offset
            if time.monotonic() >= deadline:
                raise KafkaException(
                    KafkaError(KafkaError._TIMED_OUT, f"reading {self.topic} to offset {stable}")
                )
        return self._transaction_open(stable)

    def _exists(self, reader: Consumer) -> bool:
        metadata = reader.list_topics(self.topic, timeout=_TIMEOUT_S)
        found = metadata.topics.get(self.topic)
        return found is not None and found.error is None and bool(found.partitions)

    def _transaction_open(self, stable: int) -> bool:
        """Whether records past the last stable offset exist: a transaction not yet committed."""
        if self._watcher is None:
            # read_uncommitted, for its watermark query only: the high watermark, open records included.
            self._watcher = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"pacs-sync-schema-reader-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_uncommitted",
                    "log_level": 3,
                }
            )
        partition = TopicPartition(self.topic, 0)
        high = self._watcher.get_watermark_offsets(partition, timeout=_TIMEOUT_S, cached=False)[1]
        return bool(high > stable)

    def _keep(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or value is None:
            return
        try:
            fingerprint = bytes.fromhex(key.decode())
            schema = json.loads(value)
        except (UnicodeDecodeError, ValueError) as exc:
            logger.warning("skipping a malformed record of %s: %s", self.topic, exc)
            return
        if isinstance(schema, dict) and len(fingerprint) == 8:
            self._schemas[fingerprint] = schema
