"""The worker's Faust app and Kafka consumer: read_committed in every mode, commits that never skip.

faust-streaming 0.15.3's consumer decides which input offsets to commit from three pieces of
bookkeeping: the offsets acknowledged by the streams, "gaps" (offsets the fetcher never delivered:
transaction markers, aborted records) and a per-partition read offset. :class:`ProcessorConsumer`
replaces the parts of it that could commit past a change event that was never processed; the
producer's change topics are transactional, which is where they bite.

* **Isolation.** Faust reads ``read_uncommitted`` unless the app is transactional; such a reader also
  sees the events of transactions that are later aborted. :class:`ProcessorConsumerThread` sets
  ``read_committed`` before the consumer starts.
* **Only processed events are acknowledged.** Faust's streams acknowledge, unprocessed, every event
  they *skip*: one fetched before a rebalance (an older consumer generation) or dequeued while a
  rebalance has suspended the flow. Those offsets were committed (the rebalance's own commit runs
  right then), and the events were never read again: lost. :meth:`ProcessorConsumer.ack` refuses
  such acknowledgements (the rebalance's seek reads the events again); a batch that finished during
  the rebalance is processed a second time, which at-least-once allows (byte-identical outputs, which
  the sink's position guard ignores).
* **A commit starts where the last one ended.** Faust commits the first run of consecutive
  acknowledged offsets and accepts a run that begins one *past* the committed offset (meant for a
  transaction marker there): an unacknowledged event at the committed offset was skipped for good.
  :meth:`ProcessorConsumer._new_offset` commits a run only if it begins exactly at the committed
  offset, counting gaps as acknowledged; the fetch loop records a marker at the committed offset as
  a gap, so restarts still get past it.
* **A fetch across a seek is read again.** Faust's table recovery resumes the flow and then seeks
  the stream partitions to their committed offsets with the fetch loop running, while aiokafka seeks
  one partition after another: a fetch requested before the seek returned records from before it,
  which Faust handed over, taking the jump back to the committed offset for a gap (and so committed
  past the events in between). :meth:`ProcessorConsumer._hand_over` drops the rest of a fetch
  requested before a seek, and its partitions are sought again to the next offset to hand over.
* **The fetch loop never marks an event read that the streams did not get.** Faust's loop keeps one
  read offset per partition, set after each hand-over even when a rebalance cancelled it, set by a
  hand-over that finishes after the rebalance's seek, and drops every later-fetched event below it:
  such an event was neither processed nor read again. :meth:`ProcessorConsumer._drain_messages`
  keeps the *next offset to hand over*, moves it only when a hand-over completed within one seek
  epoch, and records gaps from it (so a marker at the committed offset is one too). Its gaps stop
  before the next record: Faust's ran through it, listing that offset twice, which ended every
  commit's run after one transaction (committed offsets then trailed processing by minutes).

When offsets are committed (``broker_commit_interval``/``broker_commit_every``, rebalances,
shutdown) is still Faust's. A partition whose commit stays held behind an offset that is neither
acknowledged nor a gap is logged (:data:`HELD_WARNING_S`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import notify

logger = logging.getLogger(__name__)

ISOLATION_LEVEL = "read_committed"
HELD_WARNING_S = 60.0
"""How long a partition's commit may wait for one offset before the worker logs it."""
_YIELD_EVERY = 100  # hand-overs between two returns to the event loop (as Faust's loop)


class ProcessorConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the worker consumer reading committed records only."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by aiokafka's start() (its Fetcher), which Faust calls after this returns.
        consumer._isolation_level = ISOLATION_LEVEL
        return consumer


class ProcessorConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose commits never pass an offset that was not processed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_offset: dict[Any, int] = {}
        """Per partition: the next offset to hand to the streams (set by seeks and hand-overs)."""
        self._commit_floor: dict[Any, int] = {}
        """Per partition: the committed offset (0 included, unlike Faust's ``_committed_offset``,
        and kept through a revocation, when Faust forgets its own)."""
        self._seek_epoch = 0
        self._seeking = False
        self._reseek: dict[Any, int] = {}
        """Partitions whose fetched records were dropped as stale, and the lowest such offset."""
        self._held_since: dict[Any, tuple[int, float, bool]] = {}
        self._refusals_logged: set[tuple[Any, Any, Any]] = set()
        self._skips_logged: set[tuple[Any, int]] = set()

    def _new_consumer_thread(self) -> ProcessorConsumerThread:
        return ProcessorConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # -- positions ------------------------------------------------------------------------------

    async def perform_seek(self) -> None:
        """Seek every assigned partition to its committed offset and start reading there.

        Faust calls this with the flow running (its table recovery resumed it) and aiokafka seeks
        one partition after another, so a fetch under way returns records from before or after the
        seek: the epoch moves at both ends, and the fetch loop drops such a batch and seeks the
        partitions it held again (:meth:`_hand_over`).
        """
        self._seek_epoch += 1
        self._seeking = True
        try:
            committed = await self.seek_to_committed()
        finally:
            self._seeking = False
        self._seek_epoch += 1
        logger.info(
            "seek %d (generation %s): %s",
            self._seek_epoch,
            self.app.consumer_generation_id,
            ", ".join(f"{tp.topic.rsplit('.', 1)[-1]}[{tp.partition}]@{at}" for tp, at in committed.items()),
        )
        for raw_tp, offset in committed.items():
            tp = faust_consumer.ensure_TP(raw_tp)
            if offset is not None and offset >= 0:
                self._next_offset[tp] = offset
                self._commit_floor[tp] = offset
                self._committed_offset[tp] = offset if offset else None  # Faust's own convention
            else:
                self._next_offset.pop(tp, None)
                self._commit_floor.pop(tp, None)

    async def seek(self, partition: Any, offset: int) -> None:
        """Seek one partition: the next event handed over is the one at ``offset``."""
        await super().seek(partition, offset)
        self._seek_epoch += 1
        tp = faust_consumer.ensure_TP(partition)
        if self.app.topics.acks_enabled_for(tp.topic):
            self._next_offset[tp] = offset

    # -- acknowledgements and commits -----------------------------------------------------------

    def ack(self, message: Any) -> bool:
        """Acknowledge a processed event; refuse one a stream skipped because of a rebalance.

        Faust's streams acknowledge an event they skip (fetched in an older consumer generation, or
        dequeued while a rebalance suspends the flow) exactly like a processed one. Such an event is
        read again after the rebalance's seek, so its offset must not be committed now: it is only
        taken off the unacknowledged set (so that the rebalance's wait for the streams ends).
        """
        app = self.app
        if message.generation_id == app.consumer_generation_id and app.flow_control.is_active():
            return bool(super().ack(message))
        refusal = (message.tp, message.generation_id, app.consumer_generation_id)
        if refusal not in self._refusals_logged:
            self._refusals_logged.add(refusal)
            logger.info(
                "%s[%d]@%d: acknowledgement refused (event of generation %s, now %s, flow %s)",
                message.tp.topic,
                message.tp.partition,
                message.offset,
                message.generation_id,
                app.consumer_generation_id,
                "running" if app.flow_control.is_active() else "suspended",
            )
        with ack_lock:
            message.acked = True
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
        return False

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit for ``tp``: the end of the run of acknowledged offsets (gaps
        included) that begins at the committed offset; ``None`` while that offset is pending.

        Guarantee: every offset below the returned one was acknowledged after processing (its
        outputs flushed to Kafka) or is a gap the fetcher skipped (a transaction marker, an aborted
        record); an offset that is neither holds the commit, however many later ones are done.
        Idempotent: the offsets returned are removed from the acknowledged list; those below the
        committed offset (acknowledged twice across a re-read) are dropped.
        """
        acked: list[int] = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap[tp]
        if gaps:
            highest = max(acked)
            covered = sorted(gaps.overlap(0, highest + 1), key=lambda interval: interval.begin)
            if covered:
                for interval in covered:
                    acked.extend(range(interval.begin, interval.end))
                gaps.chop(0, max(covered[-1].end, highest + 1))
        pending = sorted(set(acked))
        floor = self._commit_floor.get(tp)
        if floor is not None and pending[0] < floor:
            self._acked_index[tp].difference_update(o for o in pending if o < floor)
            pending = [offset for offset in pending if offset >= floor]
        if floor is not None and (not pending or pending[0] != floor):
            acked[:] = pending
            self._note_held(tp, floor, pending)
            return None
        self._held_since.pop(tp, None)
        run = next(consecutive_numbers(pending))
        acked[:] = pending[len(run) :]
        self._acked_index[tp].difference_update(run)
        return int(run[-1]) + 1

    async def _commit_offsets(self, offsets: Mapping[Any, int], start_new_transaction: bool = True) -> bool:
        """Faust's commit; afterwards the next run must begin at the offsets it committed.

        Like Faust's ``_committed_offset``, the floor moves even when the commit failed (a rebalance
        under way, a flush that raised): :meth:`_new_offset` has taken those offsets off the
        acknowledged list, the events below them were processed, and the next seek sets the floor
        to what the broker holds (at worst they are processed again).
        """
        assignment = self.assignment()
        try:
            return bool(await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction))
        finally:
            for tp, offset in offsets.items():
                if tp in assignment:
                    self._commit_floor[tp] = offset

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Record offsets ``offset_from``..``offset_to`` (inclusive) as never delivered.

        Unlike Faust's, the committed offset itself may be a gap (a marker right where the last
        commit ended); offsets below it are already committed.
        """
        floor = self._commit_floor.get(tp)
        if floor is not None:
            offset_from = max(offset_from, floor)
        if offset_from <= offset_to:
            gaps = self._gap[tp]
            gaps.addi(offset_from, offset_to + 1)
            gaps.merge_overlaps()

    def _note_held(self, tp: Any, floor: int, pending: list[int]) -> None:
        if not pending:
            self._held_since.pop(tp, None)
            return
        now = time.monotonic()
        held_floor, since, warned = self._held_since.get(tp, (floor, now, False))
        if held_floor != floor:
            since, warned = now, False
        if not warned and now - since >= HELD_WARNING_S:
            logger.warning(
                "%s[%d]: commit held at offset %d for %.0f s: that event is neither acknowledged "
                "nor a gap, while %d later offsets are (next: %d)",
                tp.topic,
                tp.partition,
                floor,
                now - since,
                len(pending),
                pending[0],
            )
            warned = True
        self._held_since[tp] = (floor, since, warned)

    # -- the fetch loop -------------------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        """Hand fetched events to the streams, in offset order per partition.

        Faust's loop (``Consumer._drain_messages``) with its read offset replaced by
        :attr:`_next_offset`: it moves only when the hand-over completed and no seek happened
        meanwhile; an event below it was handed over already (a re-fetch) and is skipped; offsets
        between it and the event fetched are gaps.
        """
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
                if self._reseek and not self._seeking:
                    await self._seek_stale()
                epoch = self._seek_epoch  # before the fetch request: getmany sends it when iterated
                fetched = self.getmany(timeout=1.0)
                await self.sleep(0)  # getmany may return at once, many times in a row
                if not self.should_stop:
                    await self._hand_over(fetched, epoch)
                self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)

    async def _hand_over(self, fetched: Any, epoch: int) -> None:
        """Hand each event of one fetch to the streams (``self.callback``), tracking positions.

        ``epoch`` is the seek epoch when the fetch was requested. Once a seek has begun since, the
        rest of the fetch is stale: its records may come from before or after the seek, so they are
        neither handed over nor taken for gaps; their partitions are sought again, to the next
        offset to hand over, before the next fetch (the records handed over already are processed
        and may come again: at-least-once). Positions are kept for the acknowledged (input) topics
        only; records of the others (table changelogs, applied idempotently) are never skipped.
        """
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        since_yield = 0
        async for tp, message in fetched:
            since_yield += 1
            if since_yield > _YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            offset = message.offset
            if epoch != self._seek_epoch:
                self._reseek[tp] = min(offset, self._reseek.get(tp, offset))
                continue
            tracked = acks_enabled_for(message.topic)
            expected = self._next_offset.get(tp) if tracked else None
            if expected is not None and offset < expected:
                if (tp, self._seek_epoch) not in self._skips_logged:
                    self._skips_logged.add((tp, self._seek_epoch))
                    logger.info(
                        "%s[%d]@%d: handed over already (next %d), skipped",
                        tp.topic,
                        tp.partition,
                        offset,
                        expected,
                    )
                continue
            if tracked:
                if expected is None:
                    # No committed offset (a new group): the log's first event starts the commits.
                    self._commit_floor.setdefault(tp, offset)
                elif offset > expected:
                    await self._add_gap(tp, expected, offset - 1)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            delivery = self.callback(message)
            waited = await self.wait_first(delivery, self.suspend_flow.wait())
            if epoch != self._seek_epoch:
                self._reseek[tp] = min(offset, self._reseek.get(tp, offset))
            elif delivery in waited.done and tracked:
                self._next_offset[tp] = offset + 1

    async def _seek_stale(self) -> None:
        """Seek the partitions of dropped stale records to their next offset to hand over."""
        stale, self._reseek = self._reseek, {}
        assigned = self.assignment()
        targets = {tp: self._next_offset.get(tp, lowest) for tp, lowest in stale.items() if tp in assigned}
        # A partition revoked meanwhile is skipped: its next owner starts from the committed offset.
        logger.info(
            "a fetch requested before a seek was dropped; reading again: %s",
            ", ".join(f"{tp.topic}[{tp.partition}]@{target}" for tp, target in targets.items()) or "nothing",
        )
        for tp, target in targets.items():
            try:
                await self.seek(tp, target)
            except IllegalStateError:  # revoked between the check and the seek: as above
                logger.info("%s[%d]: revoked before the seek", tp.topic, tp.partition)

    def _forget(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self._next_offset.pop(tp, None)
            self._held_since.pop(tp, None)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """Faust's revocation; the positions of revoked partitions are re-read on assignment."""
        logger.info("revoked %d partitions (generation %s)", len(revoked), self.app.consumer_generation_id)
        self._forget(revoked)
        await super().on_partitions_revoked(revoked)


class ProcessorTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`ProcessorConsumer`."""

    Consumer = ProcessorConsumer


class ProcessorApp(faust.App):
    """A ``faust.App`` whose consumer is :class:`ProcessorConsumer`, whatever the processing guarantee."""

    def _new_transport(self) -> Any:
        return ProcessorTransport(self.conf.broker_consumer, self)
