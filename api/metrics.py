"""The API's own Prometheus metrics (served at ``/metrics``, bearer token required).

Kept beside the API rather than in :mod:`pacs_sync.metrics` because only this process registers them;
names follow the same ``pacs_sync_<stage>_<thing>_<unit>`` convention.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ApiMetrics:
    """Requests, jobs and the target's rows as the API sees them."""

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    jobs_started: Counter
    jobs: Gauge
    entity_rows: Gauge
    stage_up: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ApiMetrics:
        """Register the API's metrics in ``registry`` (default: a fresh one)."""
        registry = registry or CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "pacs_sync_api_requests",
                "API requests by route template, method and status",
                ["route", "method", "status"],
                registry=registry,
            ),
            request_duration=Histogram(
                "pacs_sync_api_request_duration_seconds",
                "API request duration by route template",
                ["route"],
                buckets=_REQUEST_BUCKETS,
                registry=registry,
            ),
            jobs_started=Counter(
                "pacs_sync_api_jobs_started",
                "Sync jobs started, by kind and trigger",
                ["kind", "trigger"],
                registry=registry,
            ),
            jobs=Gauge("pacs_sync_api_jobs", "Recorded sync jobs by state", ["state"], registry=registry),
            entity_rows=Gauge(
                "pacs_sync_api_entity_rows",
                "Rows in the target per entity (live, deleted markers)",
                ["entity", "state"],
                registry=registry,
            ),
            stage_up=Gauge(
                "pacs_sync_api_stage_up",
                "1 when the stage's metrics endpoint answered the API's last scrape",
                ["stage"],
                registry=registry,
            ),
        )
