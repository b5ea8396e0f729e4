"""The sync status: the target's rows, the stages' Prometheus figures and the running job, per entity.

Stages are scraped on their metrics endpoints (producer :9101, processor :9102, sink :9103 on
127.0.0.1 by default); a stage that does not answer is ``down``. Parsing and summarising are pure
functions over the exposition text, so they are unit-tested without servers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.store import EntityRows, JobRecord

logger = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scrape:
    """One stage's metrics (``up`` False and no samples when it did not answer)."""

    stage: str
    url: str
    up: bool
    error: str | None = None
    samples: Mapping[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    """Sample name (``…_total``, ``…_bucket``…) → (labels, value) pairs."""

    def total(self, name: str, **match: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``match``."""
        return sum(
            value
            for labels, value in self.samples.get(name, [])
            if all(labels.get(k) == v for k, v in match.items()) and not math.isnan(value)
        )

    def values(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        """The samples named ``name`` whose labels include ``match``."""
        return [
            (labels, value)
            for labels, value in self.samples.get(name, [])
            if all(labels.get(k) == v for k, v in match.items())
        ]

    def has(self, name: str, **match: str) -> bool:
        """True when at least one such sample exists."""
        return bool(self.values(name, **match))


def parse_exposition(stage: str, url: str, text: str) -> Scrape:
    """Parse Prometheus text exposition into a :class:`Scrape`."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return Scrape(stage, url, True, None, samples)


async def scrape_stages(
    urls: Mapping[str, str], *, timeout_s: float, client: httpx.AsyncClient | None = None
) -> dict[str, Scrape]:
    """Scrape every stage concurrently; failures become ``up=False`` with the reason."""
    own = client is None
    client = client or httpx.AsyncClient(timeout=timeout_s)
    try:

        async def one(stage: str, url: str) -> Scrape:
            try:
                response = await client.get(url, timeout=timeout_s)
                response.raise_for_status()
                return parse_exposition(stage, url, response.text)
            except (httpx.HTTPError, ValueError) as exc:
                return Scrape(
                    stage, url, False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                )

        results = await asyncio.gather(*(one(stage, url) for stage, url in urls.items()))
    finally:
        if own:
            await client.aclose()
    return {s.stage: s for s in results}


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs; None if empty."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _latency(scrape: Scrape | None, entity: str) -> dict[str, Any]:
    if scrape is None or not scrape.up:
        return {"count": None, "sum_s": None, "mean_s": None, "p50_s": None, "p95_s": None}
    name = "pacs_sync_end_to_end_latency_seconds"
    count = scrape.total(f"{name}_count", entity=entity)
    total = scrape.total(f"{name}_sum", entity=entity)
    buckets = [
        (float(labels["le"]), value) for labels, value in scrape.values(f"{name}_bucket", entity=entity)
    ]
    p50 = histogram_quantile(0.5, buckets)
    p95 = histogram_quantile(0.95, buckets)
    return {
        "count": int(count),
        "sum_s": round(total, 6),
        "mean_s": round(total / count, 6) if count else None,
        "p50_s": round(p50, 6) if p50 is not None else None,
        "p95_s": round(p95, 6) if p95 is not None else None,
    }


def _figure(scrape: Scrape | None, name: str, **match: str) -> float | None:
    if scrape is None or not scrape.up:
        return None
    return scrape.total(name, **match)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def entity_status(
    entity: str,
    rows: EntityRows | None,
    scrapes: Mapping[str, Scrape],
    running: JobRecord | None,
) -> dict[str, Any]:
    """One entity's status: state, counts, lag, latency, errors, DLQ and progress."""
    producer, processor, sink = scrapes.get("producer"), scrapes.get("processor"), scrapes.get("sink")
    snapshot = None
    if (
        producer is not None
        and producer.up
        and producer.has("pacs_sync_producer_snapshot_progress_ratio", entity=entity)
    ):
        snapshot = producer.total("pacs_sync_producer_snapshot_progress_ratio", entity=entity)
    invalid = _figure(processor, "pacs_sync_processor_events_total", entity=entity, outcome="invalid")
    undecodable = _figure(processor, "pacs_sync_processor_events_total", entity=entity, outcome="undecodable")
    rejected = _figure(sink, "pacs_sync_sink_rejected_rows_total", entity=entity)
    dlq_parts = [v for v in (invalid, undecodable, rejected) if v is not None]
    lag = _figure(sink, "pacs_sync_sink_consumer_lag_records", entity=entity)
    upserts = _figure(sink, "pacs_sync_sink_rows_total", entity=entity, op="upsert")
    deletes = _figure(sink, "pacs_sync_sink_rows_total", entity=entity, op="delete")
    job = None
    if running is not None and entity in running.entities:
        job = {
            "job_id": running.job_id,
            "kind": running.kind,
            "state": running.state,
            "ratio": running.progress.get("ratio"),
            "done": entity in running.progress.get("entities_done", []),
        }
    down = [s.stage for s in scrapes.values() if not s.up]
    if job is not None:
        state = "resyncing" if running and running.kind == "resync" else "syncing"
    elif down:
        state = "down"
    elif snapshot is not None and snapshot < 1.0:
        state = "snapshotting"
    elif lag:
        state = "catching_up"
    else:
        state = "streaming"
    return {
        "entity": entity,
        "state": state,
        "rows": {
            "present": rows.present if rows else False,
            "live": rows.live if rows else 0,
            "deleted": rows.deleted if rows else 0,
        },
        "events": _int(_figure(producer, "pacs_sync_producer_events_total", entity=entity)),
        "processed": _int(_figure(processor, "pacs_sync_processor_events_total", entity=entity)),
        "written": None if upserts is None or deletes is None else int(upserts + deletes),
        "invalid": _int(invalid),
        "dlq": int(sum(dlq_parts)) if dlq_parts else None,
        "lag": _int(lag),
        "latency": _latency(sink, entity),
        "last_position": rows.last_position if rows else None,
        "last_synced_at": rows.last_synced_at.isoformat() if rows and rows.last_synced_at else None,
        "progress": {"snapshot": snapshot, "job": job},
    }


def stage_status(scrapes: Mapping[str, Scrape]) -> dict[str, dict[str, Any]]:
    """Per stage: up/down, why not, and its error counters by PACS code."""
    errors_metric = {
        "producer": "pacs_sync_producer_errors_total",
        "sink": "pacs_sync_sink_errors_total",
    }
    shown: dict[str, dict[str, Any]] = {}
    for name, scrape in scrapes.items():
        by_code: dict[str, int] = {}
        metric = errors_metric.get(name)
        if scrape.up and metric:
            for labels, value in scrape.values(metric):
                code = labels.get("code", "?")
                by_code[code] = by_code.get(code, 0) + int(value)
        shown[name] = {
            "state": "up" if scrape.up else "down",
            "url": scrape.url,
            "error": scrape.error,
            "errors": by_code,
        }
    return shown


def build_status(
    entities: Sequence[str],
    rows: Mapping[str, EntityRows],
    scrapes: Mapping[str, Scrape],
    running: JobRecord | None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The whole ``GET /sync/status`` answer."""
    return {
        "generated_at": (now or datetime.now(tz=UTC)).isoformat(),
        "stages": stage_status(scrapes),
        "entities": [entity_status(e, rows.get(e), scrapes, running) for e in entities],
        "running_job": running.job_id if running else None,
    }
