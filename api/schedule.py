"""PACS_SYNC_SCHEDULE: start the configured scheduled job on a cron schedule (local time).

The default scheduled job is a reconciliation: ``pacs-sync verify``, then a full resync of each
entity whose verification failed (see :mod:`api.jobs`). A fire that finds a job already running is
skipped (and audited as refused); fires missed while the API was down are not caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from croniter import croniter

logger = logging.getLogger(__name__)

_MAX_SLEEP_S = 60.0


def next_fire(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that the cron ``expression`` names (same time zone)."""
    if after.tzinfo is None:
        raise ValueError("give an aware datetime (the schedule is read in local time)")
    fire: datetime = croniter(expression, after).get_next(datetime)
    return fire


def local_now() -> datetime:
    """Now, aware, in the machine's time zone (how operators read a cron line)."""
    return datetime.now(tz=UTC).astimezone()


class Scheduler:
    """Calls ``fire()`` at each time the cron expression names, until stopped."""

    def __init__(
        self,
        expression: str,
        fire: Callable[[], Awaitable[None]],
        *,
        clock: Callable[[], datetime] = local_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``fire`` starts the scheduled job (its errors are logged, never stop the schedule)."""
        self.expression = expression
        self._fire = fire
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.next_at: datetime | None = None

    def start(self) -> None:
        """Run in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pacs-sync-schedule")

    async def stop(self) -> None:
        """Stop the loop (a job already started keeps running)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        self.next_at = next_fire(self.expression, self._clock())
        logger.info("schedule %r: next run at %s", self.expression, self.next_at.isoformat())
        while True:
            wait = (self.next_at - self._clock()).total_seconds()
            if wait > 0:
                # Short sleeps: a suspended machine or a changed clock is noticed within a minute.
                await self._sleep(min(wait, _MAX_SLEEP_S))
                continue
            try:
                await self._fire()
            except Exception:  # the schedule outlives a failed start
                logger.exception("schedule %r: the scheduled job could not be started", self.expression)
            self.next_at = next_fire(self.expression, max(self._clock(), self.next_at))
            logger.info("schedule %r: next run at %s", self.expression, self.next_at.isoformat())
