"""The verify report: verdict, exit code, JSON form and the human table (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconcile.compare import EntityReport
from reconcile.dlq import DeadLetterIndex

EXIT_MATCH = 0
"""Source and target agree (dead-lettered keys allowed, and listed)."""
EXIT_DIFFERENT = 1
"""At least one unexplained difference."""


@dataclass
class VerifyReport:
    """What one ``pacs-sync verify`` found."""

    entities: list[EntityReport]
    dead_letters: DeadLetterIndex
    limit: int
    source: str = ""
    target: str = ""
    seconds: float = 0.0
    run_id: int | None = None
    """The ``pacs_sync.sync_runs`` row recorded for this run (None: the target has no such table)."""
    notes: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        """Every entity matches (dead-lettered keys allowed)."""
        return all(report.matched for report in self.entities)

    @property
    def exit_code(self) -> int:
        """0 when matched, 1 when any difference is unexplained."""
        return EXIT_MATCH if self.matched else EXIT_DIFFERENT

    def summary(self) -> dict[str, Any]:
        """The counts only (what ``pacs_sync.sync_runs.detail`` keeps besides the first keys)."""
        return {
            "matched": self.matched,
            "entities": {
                r.entity: {
                    "source_count": r.source_count,
                    "target_count": r.target_count,
                    "missing": r.missing.count,
                    "extra": r.extra.count,
                    "different": r.different.count,
                    "untransformable": r.untransformable.count,
                    "dead_lettered": r.dead_lettered.count,
                }
                for r in self.entities
            },
        }

    def as_dict(self) -> dict[str, Any]:
        """The whole report, JSON-ready (first ``limit`` keys of each list)."""
        return {
            "matched": self.matched,
            "exit_code": self.exit_code,
            "source": self.source,
            "target": self.target,
            "limit": self.limit,
            "seconds": round(self.seconds, 3),
            "run_id": self.run_id,
            "dead_letters": self.dead_letters.as_dict(),
            "entities": {r.entity: r.as_dict() for r in self.entities},
            "notes": list(self.notes),
        }


_HEADINGS = (
    "entity",
    "source",
    "target",
    "missing",
    "extra",
    "different",
    "untransformable",
    "dead-lettered",
)


def render_text(report: VerifyReport) -> str:
    """The human form: one table row per entity, then the first keys of each non-empty list."""
    rows = [
        (
            r.entity,
            f"{r.source_count:,}",
            f"{r.target_count:,}",
            f"{r.missing.count:,}",
            f"{r.extra.count:,}",
            f"{r.different.count:,}",
            f"{r.untransformable.count:,}",
            f"{r.dead_lettered.count:,}",
        )
        for r in report.entities
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(_HEADINGS)]
    lines = [
        f"source {report.source}",
        f"target {report.target}",
        "",
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(_HEADINGS, widths, strict=True))
        ),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for r in report.entities:
        details = _details(r)
        if details:
            lines.append("")
            lines.append(f"{r.entity}:")
            lines.extend(details)
    letters = report.dead_letters
    lines.append("")
    lines.append(
        f"dead letters: {letters.read:,} read from {letters.topic or '-'} "
        f"({letters.attributed:,} of this database, {letters.foreign:,} of others, "
        f"{letters.unattributed:,} naming no row)"
    )
    lines.extend(report.notes)
    verdict = "MATCH" if report.matched else "DIFFERENT"
    unexplained = sum(r.unexplained for r in report.entities)
    explained = sum(r.dead_lettered.count for r in report.entities)
    tail = f"{unexplained:,} unexplained difference(s)" if unexplained else "no unexplained difference"
    lines.append(f"{verdict}: {tail}, {explained:,} dead-lettered, in {report.seconds:.1f} s")
    return "\n".join(lines)


def _more(count: int, shown: int) -> str:
    return f" (first {shown} of {count:,})" if count > shown else ""


def _details(r: EntityReport) -> list[str]:
    lines: list[str] = []
    if r.missing.count:
        keys = ", ".join(str(k) for k in r.missing.first)
        lines.append(f"  missing in target{_more(r.missing.count, len(r.missing.first))}: {keys}")
    if r.extra.count:
        keys = ", ".join(str(k) for k in r.extra.first)
        lines.append(f"  extra in target{_more(r.extra.count, len(r.extra.first))}: {keys}")
    if r.different.count:
        lines.append(f"  different{_more(r.different.count, len(r.different.first))}:")
        for d in r.different.first:
            lines.append(f"    {d.key}: {', '.join(d.columns)}")
    if r.untransformable.count:
        lines.append(
            "  untransformable, not dead-lettered"
            f"{_more(r.untransformable.count, len(r.untransformable.first))}:"
        )
        for d in r.untransformable.first:
            lines.append(f"    {d.key}: {d.detail or ''}")
    if r.dead_lettered.count:
        lines.append(f"  dead-lettered{_more(r.dead_lettered.count, len(r.dead_lettered.first))}:")
        for item in r.dead_lettered.first:
            lines.append(f"    {item.key}: {item.kind} ({item.reason})")
    if r.differing_ranges.count:
        shown = ", ".join(
            f"{x.low}–{x.high} ({x.source_count}/{x.target_count})" for x in r.differing_ranges.first
        )
        lines.append(
            f"  key ranges differing{_more(r.differing_ranges.count, len(r.differing_ranges.first))} "
            f"of {r.ranges_compared:,} (source/target rows): {shown}"
        )
    return lines
