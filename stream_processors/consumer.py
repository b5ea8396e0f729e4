"""The worker's Faust app and Kafka consumer: read_committed in every mode, commits that keep up.

Two changes to faust-streaming 0.15.3's aiokafka consumer, both for the producer's transactional
change topics:

* **Isolation.** Faust builds the worker's aiokafka consumer in
  ``AIOKafkaConsumerThread._create_worker_consumer`` with ``isolation_level="read_committed"`` only
  when the app is transactional (``processing_guarantee="exactly_once"``) and ``read_uncommitted``
  otherwise; no setting changes that. A ``read_uncommitted`` reader also sees the events of a
  transaction that is later aborted (a producer killed mid-window, a failed commit), and those would
  reach PostgreSQL. :class:`ProcessorConsumerThread` sets the level before the consumer starts
  (aiokafka hands it to its fetcher in ``start()``).
* **Commit progress.** Every transaction leaves a commit marker, an offset no consumer receives.
  Faust records such holes as "gaps" that count as acknowledged, but its gap runs *through the next
  record* (``_add_gap(tp, last_read + 1, offset)`` covers ``offset`` too), so that record's offset is
  in the acknowledged list twice; the duplicate ends the run of consecutive offsets that a commit
  takes, and each commit got past one transaction per partition only. On a topic written in many
  small transactions the committed offsets then trailed processing by minutes, without bound under
  load. :class:`ProcessorConsumer` records only the hole itself; when offsets are committed is
  otherwise Faust's.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

ISOLATION_LEVEL = "read_committed"


class ProcessorConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the worker consumer reading committed records only."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by aiokafka's start() (its Fetcher), which Faust calls after this returns.
        consumer._isolation_level = ISOLATION_LEVEL
        return consumer


class ProcessorConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer: a :class:`ProcessorConsumerThread`, gaps without the next record."""

    def _new_consumer_thread(self) -> ProcessorConsumerThread:
        return ProcessorConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        # Faust passes the offset of the record that follows the hole as ``offset_to`` (inclusive);
        # that record is acknowledged when processed, so the gap ends one before it.
        await super()._add_gap(tp, offset_from, offset_to - 1)


class ProcessorTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`ProcessorConsumer`."""

    Consumer = ProcessorConsumer


class ProcessorApp(faust.App):
    """A ``faust.App`` whose consumer is :class:`ProcessorConsumer`, whatever the processing guarantee."""

    def _new_transport(self) -> Any:
        return ProcessorTransport(self.conf.broker_consumer, self)
