"""Kafka topic creation shared by every stage (the broker does not auto-create topics)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pacs_sync.errors import ErrorCode, RetriableError

logger = logging.getLogger(__name__)

_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicSpec:
    """A topic a stage needs: name, partitions, and whether it is log-compacted."""

    name: str
    partitions: int
    compacted: bool = False


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        existing = set(admin.list_topics(timeout=_TIMEOUT_S).topics)
    except KafkaException as exc:
        raise RetriableError(
            f"Kafka at {bootstrap} does not answer: {exc}", code=ErrorCode.CONNECTION_UNAVAILABLE
        ) from exc
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    new = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=-1,
            config={"cleanup.policy": "compact"} if s.compacted else {},
        )
        for s in wanted
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
