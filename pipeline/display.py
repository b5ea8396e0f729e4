"""How ``pacs-sync sync`` shows its progress: bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.progress import BarColumn, Progress, TaskID, TextColumn

from pipeline.sync import EntityProgress

logger = logging.getLogger(__name__)


def describe(item: EntityProgress) -> str:
    """One entity's progress as text (pure)."""
    published = "published" if item.published else "publishing"
    return f"{item.entity:<11} {published:<10} processed {item.processed:6.1%}  written {item.written:6.1%}"


class ProgressDisplay:
    """A context manager whose ``update`` callback renders the sync's progress."""

    def __init__(self, *, interactive: bool | None = None, interval_s: float = 2.0) -> None:
        """Bars when stdout is a terminal (or ``interactive``), log lines every ``interval_s`` otherwise."""
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.interval_s = interval_s
        self._last_line = 0.0
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Callable[[list[EntityProgress]], None]:
        """Start rendering; returns the update callback."""
        if self.interactive:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%")
            )
            self._progress.start()
        return self.update

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop rendering."""
        if self._progress is not None:
            self._progress.stop()

    def update(self, items: list[EntityProgress]) -> None:
        """Render the current progress."""
        if self._progress is not None:
            for item in items:
                share = (0.1 if item.published else 0.0) + 0.45 * item.processed + 0.45 * item.written
                task = self._tasks.get(item.entity)
                if task is None:
                    task = self._tasks[item.entity] = self._progress.add_task(item.entity, total=1.0)
                self._progress.update(task, completed=share, description=describe(item))
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval_s:
            self._last_line = now
            for item in items:
                logger.info("%s", describe(item))
