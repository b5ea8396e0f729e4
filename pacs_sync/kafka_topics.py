"""Kafka topic creation shared by every stage (the broker does not auto-create topics)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from pacs_sync.errors import ErrorCode, RetriableError

logger = logging.getLogger(__name__)

_TIMEOUT_S = 30.0


_FOREVER = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


@dataclass(frozen=True)
class TopicSpec:
    """A topic a stage needs: name, partitions, and how long the broker keeps its records."""

    name: str
    partitions: int
    compacted: bool = False
    """Keep the last record of each key (the clean topics, offsets, schemas)."""
    retain_forever: bool = False
    """Keep every record for good (no time or size limit, never compacted): for records that a
    replay of the compacted topics needs as long as those keep theirs (re-snapshot sweeps)."""

    def __post_init__(self) -> None:
        """Reject a spec that asks for both policies (compaction drops all but a key's last record)."""
        if self.compacted and self.retain_forever:
            raise ValueError(f"topic {self.name}: compacted and retain_forever exclude each other")

    @property
    def config(self) -> dict[str, str]:
        """The topic configuration to create it with (the broker's defaults for the rest)."""
        if self.compacted:
            return {"cleanup.policy": "compact"}
        return dict(_FOREVER) if self.retain_forever else {}


def retention_fixes(spec: TopicSpec, current: Mapping[str, str]) -> dict[str, str]:
    """The settings an existing ``retain_forever`` topic lacks (empty: none, or not such a topic).

    ``current`` maps config names to the broker's values; a missing name counts as wrong.
    """
    if not spec.retain_forever:
        return {}
    return {name: value for name, value in _FOREVER.items() if current.get(name) != value}


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    An existing ``retain_forever`` topic whose retention is finite (created by an older version
    with the broker's default of 7 days) is altered to keep its records for good; see
    :func:`_keep_forever`. Idempotent: a second call creates and alters nothing.
    """
    specs = list(specs)
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        existing = set(admin.list_topics(timeout=_TIMEOUT_S).topics)
    except KafkaException as exc:
        raise RetriableError(
            f"Kafka at {bootstrap} does not answer: {exc}", code=ErrorCode.CONNECTION_UNAVAILABLE
        ) from exc
    _keep_forever(admin, [s for s in specs if s.retain_forever and s.name in existing])
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config) for s in wanted
    ]
    for name, future in admin.create_topics(new).items():
        try:
            future.result(timeout=_TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RetriableError(
                    f"cannot create topic {name}: {exc}", code=ErrorCode.KAFKA_DELIVERY_FAILED
                ) from exc
    _wait_until_visible(admin, [s.name for s in wanted])
    logger.info("created topics: %s", ", ".join(s.name for s in wanted))
    return [s.name for s in wanted]


def _keep_forever(admin: AdminClient, specs: list[TopicSpec]) -> None:
    """Set the forever retention on existing topics that lack it (a WARNING per topic changed).

    Altered rather than only reported: records past a finite retention are deleted by the broker
    while the operator has not acted yet, and the change only makes the broker keep more. If the
    broker refuses (no ALTER_CONFIGS permission), a WARNING names the topic and the settings, and
    the stage goes on: its own work does not depend on it, only a later replay does.
    """
    if not specs:
        return
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    try:
        described = admin.describe_configs(resources)
        current = {
            resource.name: {name: entry.value for name, entry in future.result(timeout=_TIMEOUT_S).items()}
            for resource, future in described.items()
        }
    except KafkaException as exc:
        logger.warning("cannot read the configuration of %s: %s", ", ".join(s.name for s in specs), exc)
        return
    for spec in specs:
        fixes = retention_fixes(spec, current.get(spec.name, {}))
        if not fixes:
            continue
        was = ", ".join(f"{k}={current.get(spec.name, {}).get(k)}" for k in fixes)
        wanted = ", ".join(f"{k}={v}" for k, v in fixes.items())
        resource = ConfigResource(
            ResourceType.TOPIC,
            spec.name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in fixes.items()
            ],
        )
        try:
            for future in admin.incremental_alter_configs([resource]).values():
                future.result(timeout=_TIMEOUT_S)
        except KafkaException as exc:
            logger.warning(
                "topic %s must keep its records for good (%s; it has %s) and the broker refused the "
                "change: %s; records older than its retention are lost to a later resync",
                spec.name,
                wanted,
                was,
                exc,
            )
            continue
        logger.warning("topic %s kept its records for a limited time (%s): set %s", spec.name, was, wanted)


def _wait_until_visible(admin: AdminClient, names: list[str]) -> None:
    """Wait until the broker's metadata lists every topic with a leader for each partition.

    A consumer subscribing to several topics while only some are visible gets those assigned and
    notices the others only at its next metadata refresh (5 minutes by default): a stage that
    creates its topics and subscribes right away must not see a half-created set.
    """
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        try:
            topics = admin.list_topics(timeout=_TIMEOUT_S).topics
        except KafkaException:
            topics = {}
        ready = all(
            name in topics
            and topics[name].partitions
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        )
        if ready or time.monotonic() > deadline:
            return
        time.sleep(0.1)
