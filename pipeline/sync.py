"""``pacs-sync sync --until-caught-up``: the seed's manual sync, on the streaming pipeline.

It notes the source's newest LSN when it starts, runs the stages (or uses those ``pacs-sync run``
already runs) and waits, stage by stage, until everything committed by then is in PostgreSQL
(:mod:`pipeline.catchup`). ``--full`` first asks the producer to re-snapshot the entities' tables.
Then it prints, per entity, the events, the invalid ones (dead-lettered), the time and the rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pacs_sync.errors import ErrorCode, FatalError, PacsSyncError, RetriableError
from pacs_sync.lsn import Lsn
from pacs_sync.metrics import SupervisorMetrics
from pacs_sync.stack.processes import is_running, read_pid
from pacs_sync.state_files import ensure_state_dir
from pacs_sync.sweeps import sweeps_topic
from pipeline.catchup import (
    TABLE_ENTITIES,
    KafkaPositions,
    Partition,
    behind,
    change_topic,
    clean_topic,
    dlq_topic,
    lsn_reached,
    progress,
    sink_offsets,
)
from pipeline.settings import PipelineSettings
from pipeline.supervisor import Supervisor, pipeline_stages
from producer.requests import request_file, request_resnapshot
from producer.runner import committed_offset
from producer.settings import ProducerSettings
from producer.source import CdcSource

logger = logging.getLogger(__name__)

ENTITY_TABLES = {entity: table for table, entity in TABLE_ENTITIES.items()}


@dataclass
class EntityProgress:
    """One entity's way through the stages, for the progress display."""

    entity: str
    published: bool = False
    processed: float = 0.0
    written: float = 0.0


@dataclass
class EntitySummary:
    """What the sync moved for one entity."""

    entity: str
    events: int
    invalid: int
    seconds: float

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SyncResult:
    """A finished sync."""

    entities: list[EntitySummary] = field(default_factory=list)
    seconds: float = 0.0
    started_stages: bool = False


def pipeline_pid_file(settings: PipelineSettings) -> Path:
    """Where ``pacs-sync run`` records its pid (a sync then uses the running stages).

    One pipeline per source database and clean-topic prefix: several can share a state dir.
    """
    return settings.state_dir / "run" / f"pipeline.{pipeline_name(settings)}.pid"


def pipeline_name(settings: PipelineSettings) -> str:
    """Names one pipeline's files: source database and clean-topic prefix."""
    return f"{settings.db_name}.{settings.clean_topic_prefix}"


def pipeline_running(settings: PipelineSettings) -> bool:
    """Whether a ``pacs-sync run`` supervisor is alive."""
    pid = read_pid(pipeline_pid_file(settings))
    return pid is not None and is_running(pid, cmdline_contains="pacs_sync")


def dead_letter_of(source_topic: str, change_topic: str, clean_topic: str) -> bool:
    """Whether a dead letter read from ``source_topic`` belongs to this entity (pure).

    The processors dead-letter from the change topic, or for owners from their re-key topic, whose
    name embeds the change topic; the sink dead-letters from the clean topic.
    """
    return source_topic in (change_topic, clean_topic) or f"-{change_topic}-" in source_topic


class SyncUntilCaughtUp:
    """One manual sync."""

    def __init__(
        self,
        settings: PipelineSettings,
        entities: Sequence[str],
        *,
        full: bool = False,
        timeout_s: float = 3600.0,
        on_progress: Callable[[list[EntityProgress]], None] | None = None,
    ) -> None:
        """Bind the settings and what to sync."""
        unknown = [e for e in entities if e not in ENTITY_TABLES]
        if unknown:
            raise FatalError(
                f"unknown entities {unknown}; expected some of {list(ENTITY_TABLES)}",
                code=ErrorCode.CONFIGURATION_INVALID,
            )
        self.settings = settings
        self.entities = list(entities)
        self.full = full
        self.timeout_s = timeout_s
        self.on_progress = on_progress or (lambda _: None)
        self._supervisor_error: PacsSyncError | None = None
        self.producer_settings = ProducerSettings.load(
            topic_prefix=settings.topic_prefix, state_dir=settings.state_dir, db_name=settings.db_name
        )

    def run(self, stop: threading.Event | None = None) -> SyncResult:
        """Sync, wait until caught up, summarise; stages this started are stopped again.

        The state dir is checked first (PACS-008 naming ``PACS_STATE_DIR``): nothing is asked of the
        producer and nothing started when it cannot take a file.
        """
        ensure_state_dir(self.settings.state_dir)
        stop = stop or threading.Event()
        started = time.monotonic()
        kafka = KafkaPositions(self.settings.kafka_bootstrap_servers)
        change_topics = {e: change_topic(self.settings, ENTITY_TABLES[e]) for e in self.entities}
        clean_topics = {e: clean_topic(self.settings, e) for e in self.entities}
        source = CdcSource(self.producer_settings)
        try:
            target_lsn = source.max_lsn()
        finally:
            source.close()
        change_start = kafka.end_offsets(change_topics.values())
        clean_start = kafka.end_offsets(clean_topics.values())
        dlq_start = kafka.end_offsets([dlq_topic(self.settings)])
        if self.full:
            tables = [ENTITY_TABLES[e] for e in self.entities]
            request_resnapshot(
                request_file(self.settings.state_dir, self.settings.topic_prefix, self.settings.db_name),
                tables,
            )
            logger.info("asked the producer to re-snapshot %s", ", ".join(tables))
        supervisor = None
        supervisor_stop = threading.Event()
        state = {e: EntityProgress(e) for e in self.entities}
        deadline = time.monotonic() + self.timeout_s
        try:
            if not pipeline_running(self.settings):
                from prometheus_client import CollectorRegistry

                supervisor = Supervisor(
                    self.settings,
                    pipeline_stages(self.settings),
                    SupervisorMetrics.create(CollectorRegistry()),
                )
                # Started here, inside the try: a failure stops what started (finally below).
                supervisor.start()
                threading.Thread(
                    target=self._supervise, args=(supervisor, supervisor_stop, stop), daemon=True
                ).start()
            self._wait(stop, deadline, "the producer", lambda: self._published(target_lsn, state))
            change_ends = kafka.data_ends(change_topics.values())
            self._wait(
                stop,
                deadline,
                "the processors",
                lambda: self._processed(kafka, change_start, change_ends, state),
            )
            repartition = kafka.topics_matching(f"{self.settings.processor_app_id}-", "-repartition")
            repartition_ends = kafka.data_ends(repartition)
            self._wait(
                stop,
                deadline,
                "the processors' re-keyed owners",
                lambda: (
                    not behind(kafka.committed(self.settings.processor_app_id, repartition), repartition_ends)
                ),
            )
            clean_ends = kafka.data_ends(clean_topics.values())
            self._wait(stop, deadline, "the sink", lambda: self._written(clean_start, clean_ends, state))
            # A re-snapshot's sweeps (rows the source no longer has) reach the sink on their own topic.
            sweep_ends = kafka.data_ends([sweeps_topic(self.settings.topic_prefix, self.settings.db_name)])
            self._wait(
                stop,
                deadline,
                "the sink's re-snapshot sweeps",
                lambda: not behind(sink_offsets(self.settings), sweep_ends),
            )
            seconds = time.monotonic() - started
            events = kafka.count_records(change_topics.values(), change_start)
            invalid = kafka.count_records([dlq_topic(self.settings)], dlq_start, header="source_topic")
        finally:
            kafka.close()
            if supervisor is not None:
                supervisor_stop.set()
                supervisor.stop()
        result = SyncResult(seconds=seconds, started_stages=supervisor is not None)
        for entity in self.entities:
            topic = change_topics[entity]
            rejected = sum(
                n for name, n in invalid.items() if dead_letter_of(name, topic, clean_topics[entity])
            )
            result.entities.append(EntitySummary(entity, events.get(topic, 0), rejected, seconds))
        return result

    def _supervise(self, supervisor: Supervisor, until: threading.Event, stop: threading.Event) -> None:
        try:
            supervisor.supervise(until)
        except PacsSyncError as exc:  # e.g. a restart could not open its log: the sync stops with it
            self._supervisor_error = exc
            stop.set()

    def _wait(self, stop: threading.Event, deadline: float, what: str, done: Callable[[], bool]) -> None:
        while not self._check(done):
            if self._supervisor_error is not None:
                raise self._supervisor_error
            if stop.is_set():
                raise FatalError("sync cancelled", code=ErrorCode.SYNC_TIMEOUT)
            if time.monotonic() > deadline:
                raise FatalError(
                    f"sync did not catch up within {self.timeout_s:.0f} s (waiting for {what})",
                    code=ErrorCode.SYNC_TIMEOUT,
                )
            stop.wait(1.0)
        logger.info("%s caught up", what)

    @staticmethod
    def _check(done: Callable[[], bool]) -> bool:
        """``done()``, a retriable error (Kafka settling, a stage restarting) counting as "not yet"."""
        try:
            return done()
        except RetriableError as exc:
            logger.warning("%s; asking again", exc)
            return False

    def _published(self, target_lsn: Lsn | None, state: dict[str, EntityProgress]) -> bool:
        try:
            offset = committed_offset(self.producer_settings)
        except RetriableError as exc:  # e.g. the producer has not created its offsets topic yet
            logger.debug("producer offset not readable yet: %s", exc)
            return False
        pending = request_file(
            self.settings.state_dir, self.settings.topic_prefix, self.settings.db_name
        ).exists()
        position = offset.position if offset else None
        reached = (
            offset is not None
            and offset.snapshot_completed
            and not pending
            and lsn_reached(
                position.commit_lsn if position else None,
                bool(position and position.transaction_complete),
                target_lsn,
            )
        )
        for item in state.values():
            item.published = reached
        self.on_progress(list(state.values()))
        return reached

    def _processed(
        self,
        kafka: KafkaPositions,
        start: dict[Partition, int],
        ends: dict[Partition, int],
        state: dict[str, EntityProgress],
    ) -> bool:
        committed = kafka.committed(self.settings.processor_app_id, {tp[0] for tp in ends})
        for entity, item in state.items():
            topic = change_topic(self.settings, ENTITY_TABLES[entity])
            mine = {tp: end for tp, end in ends.items() if tp[0] == topic}
            item.processed = progress(start, committed, mine)
        self.on_progress(list(state.values()))
        return not behind(committed, ends)

    def _written(
        self, start: dict[Partition, int], ends: dict[Partition, int], state: dict[str, EntityProgress]
    ) -> bool:
        done = sink_offsets(self.settings)
        for entity, item in state.items():
            topic = clean_topic(self.settings, entity)
            item.written = progress(start, done, {tp: e for tp, e in ends.items() if tp[0] == topic})
        self.on_progress(list(state.values()))
        return not behind(done, ends)
