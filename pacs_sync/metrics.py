"""Every Prometheus metric of the pipeline, named in one place (dashboards and alerts use these names).

Names follow ``pacs_sync_<stage>_<thing>_<unit>`` with base units (seconds). Metrics are built
against an injected registry so tests get a fresh one; each long-running process serves its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Label(StrEnum):
    """Label names, shared by code and dashboards."""

    ENTITY = "entity"
    OP = "op"
    CODE = "code"
    CAPTURE_INSTANCE = "capture_instance"
    PHASE = "phase"
    OUTCOME = "outcome"
    RULE = "rule"
    STAGE = "stage"
    ROUTE = "route"
    METHOD = "method"
    STATUS = "status"
    KIND = "kind"
    TRIGGER = "trigger"
    STATE = "state"


# End-to-end latencies bracket seconds to minutes (the seed's target was "under 15 minutes").
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# Polls and queries are fast; the upper buckets catch a stalled source.
_POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ProducerMetrics:
    """The producer's metrics."""

    events: Counter
    poll_duration: Histogram
    source_lag: Gauge
    retention_headroom: Gauge
    snapshot_rows: Counter
    snapshot_progress: Gauge
    errors: Counter
    transactions: Counter
    source_up: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ProducerMetrics:
        """Register the producer's metrics in ``registry``."""
        return cls(
            events=Counter(
                "pacs_sync_producer_events",
                "Change events published",
                [Label.ENTITY, Label.OP],
                registry=registry,
            ),
            poll_duration=Histogram(
                "pacs_sync_producer_poll_duration_seconds",
                "Duration of one CDC poll window",
                buckets=_POLL_BUCKETS,
                registry=registry,
            ),
            source_lag=Gauge(
                "pacs_sync_producer_source_lag_seconds",
                "Age of the newest source commit not yet published (0 when caught up)",
                registry=registry,
            ),
            retention_headroom=Gauge(
                "pacs_sync_producer_retention_headroom_seconds",
                "Time left before CDC cleanup would remove changes the producer has not read",
                [Label.CAPTURE_INSTANCE],
                registry=registry,
            ),
            snapshot_rows=Counter(
                "pacs_sync_producer_snapshot_rows",
                "Rows published by the snapshot",
                [Label.ENTITY],
                registry=registry,
            ),
            snapshot_progress=Gauge(
                "pacs_sync_producer_snapshot_progress_ratio",
                "Snapshot progress per entity (0..1)",
                [Label.ENTITY],
                registry=registry,
            ),
            errors=Counter(
                "pacs_sync_producer_errors", "Errors by PACS code", [Label.CODE], registry=registry
            ),
            transactions=Counter(
                "pacs_sync_producer_kafka_transactions",
                "Kafka transactions committed",
                [Label.PHASE],
                registry=registry,
            ),
            source_up=Gauge(
                "pacs_sync_producer_source_up",
                "1 while the PACS source answers, 0 while the producer cannot reach it (retrying, PACS-001)",
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class ProcessorMetrics:
    """The stream processors' metrics."""

    processed: Counter
    violations: Counter
    latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ProcessorMetrics:
        """Register the processors' metrics in ``registry``."""
        return cls(
            processed=Counter(
                "pacs_sync_processor_events",
                "Change events processed, by outcome (valid, invalid, undecodable, skipped)",
                [Label.ENTITY, Label.OUTCOME],
                registry=registry,
            ),
            violations=Counter(
                "pacs_sync_processor_rule_violations",
                "Business-rule violations by rule id",
                [Label.ENTITY, Label.RULE],
                registry=registry,
            ),
            latency=Histogram(
                "pacs_sync_processor_latency_seconds",
                "Source commit to processed, per event",
                [Label.ENTITY],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
        )


# Sink batches: a few rows to a Benton-size load.
_BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)


@dataclass(frozen=True)
class SinkMetrics:
    """The sink's metrics."""

    rows: Counter
    batch_rows: Histogram
    batch_duration: Histogram
    end_to_end_latency: Histogram
    consumer_lag: Gauge
    errors: Counter
    rejected: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SinkMetrics:
        """Register the sink's metrics in ``registry``."""
        return cls(
            rows=Counter(
                "pacs_sync_sink_rows",
                "Rows written to PostgreSQL by entity and op (upsert, delete, stale = ignored by the guard)",
                [Label.ENTITY, Label.OP],
                registry=registry,
            ),
            batch_rows=Histogram(
                "pacs_sync_sink_batch_rows",
                "Records per committed batch",
                buckets=_BATCH_SIZE_BUCKETS,
                registry=registry,
            ),
            batch_duration=Histogram(
                "pacs_sync_sink_batch_duration_seconds",
                "Time to write and commit one batch",
                buckets=_POLL_BUCKETS,
                registry=registry,
            ),
            end_to_end_latency=Histogram(
                "pacs_sync_end_to_end_latency_seconds",
                "Source commit to PostgreSQL commit, per streamed change",
                [Label.ENTITY],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            consumer_lag=Gauge(
                "pacs_sync_sink_consumer_lag_records",
                "Clean-topic records not yet written, per entity",
                [Label.ENTITY],
                registry=registry,
            ),
            errors=Counter("pacs_sync_sink_errors", "Errors by PACS code", [Label.CODE], registry=registry),
            rejected=Counter(
                "pacs_sync_sink_rejected_rows",
                "Rows PostgreSQL refused (dead-lettered), by entity",
                [Label.ENTITY],
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class SupervisorMetrics:
    """The ``pacs-sync run`` supervisor's metrics: which stages are up, how often they restarted."""

    stage_up: Gauge
    restarts: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SupervisorMetrics:
        """Register the supervisor's metrics in ``registry``."""
        return cls(
            stage_up=Gauge(
                "pacs_sync_stage_up",
                "1 while a pipeline stage process runs, else 0",
                [Label.STAGE],
                registry=registry,
            ),
            restarts=Counter(
                "pacs_sync_stage_restarts",
                "Times a crashed pipeline stage was restarted",
                [Label.STAGE],
                registry=registry,
            ),
        )


# Sample-name suffixes per metric family type, as the text exposition writes them. A counter's family
# name drops ``_total``; ``_created`` is exported unless PROMETHEUS_DISABLE_CREATED_SERIES is set.
_SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ApiMetrics:
    """The management API's metrics: requests, jobs and the target's rows as the API sees them."""

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
                [Label.ROUTE, Label.METHOD, Label.STATUS],
                registry=registry,
            ),
            request_duration=Histogram(
                "pacs_sync_api_request_duration_seconds",
                "API request duration by route template",
                [Label.ROUTE],
                buckets=_REQUEST_BUCKETS,
                registry=registry,
            ),
            jobs_started=Counter(
                "pacs_sync_api_jobs_started",
                "Sync jobs started, by kind and trigger",
                [Label.KIND, Label.TRIGGER],
                registry=registry,
            ),
            jobs=Gauge("pacs_sync_api_jobs", "Recorded sync jobs by state", [Label.STATE], registry=registry),
            entity_rows=Gauge(
                "pacs_sync_api_entity_rows",
                "Rows in the target per entity (live, deleted markers)",
                [Label.ENTITY, Label.STATE],
                registry=registry,
            ),
            stage_up=Gauge(
                "pacs_sync_api_stage_up",
                "1 when the stage's metrics endpoint answered the API's last scrape",
                [Label.STAGE],
                registry=registry,
            ),
        )


def exported_metric_names() -> set[str]:
    """Every sample name the pipeline's processes can export: the names dashboards and alerts may use.

    Builds each metrics dataclass against a fresh registry and derives the sample names of each
    family from its type (labelled metrics have no samples until first used), e.g. a counter
    ``x`` gives ``x_total`` and ``x_created``, a histogram ``_bucket``, ``_sum``, ``_count`` and
    ``_created``.
    """
    registry = CollectorRegistry()
    for metrics in (ProducerMetrics, ProcessorMetrics, SinkMetrics, SupervisorMetrics, ApiMetrics):
        metrics.create(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def serve(registry: CollectorRegistry, port: int) -> None:
    """Expose ``registry`` on ``http://0.0.0.0:<port>/metrics`` (0: do nothing)."""
    if port:
        start_http_server(port, registry=registry)
