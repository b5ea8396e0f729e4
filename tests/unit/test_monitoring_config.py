"""The monitoring config in deploy/ uses only what the code exports.

Every ``pacs_sync_*`` name in the Grafana dashboard and the Prometheus alert rules must be a sample
name :func:`pacs_sync.metrics.exported_metric_names` returns, every label they group or match on must
be one the code sets (:class:`pacs_sync.metrics.Label`) or a scrape target label, and the scrape
config, datasource and compose mounts must fit together.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pacs_sync.metrics import (
    Label,
    ProcessorMetrics,
    ProducerMetrics,
    SinkMetrics,
    SupervisorMetrics,
    exported_metric_names,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "pacs-sync.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "pacs-sync.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
COMPOSE = DEPLOY / "compose.yaml"

# Labels Prometheus adds (job, instance), the scrape config sets (stage) or histograms carry (le).
TARGET_LABELS = frozenset({"job", "instance", "stage", "le"})
KNOWN_LABELS = frozenset(label.value for label in Label) | TARGET_LABELS

# One alert per required condition: lag over threshold, error rate over 0.5 %, retention headroom
# low, a stage down, dead-letter growth.
REQUIRED_ALERTS = {
    "PacsSyncSourceLagHigh": "PACS-005",
    "PacsSyncSinkLagHigh": "PACS-005",
    "PacsSyncErrorRateHigh": "{{ $labels.code }}",
    "PacsSyncRetentionHeadroomLow": "PACS-006",
    "PacsSyncStageDown": None,
    "PacsSyncDeadLetterGrowth": "PACS-004",
}
STAGE_PORTS = {9100, 9101, 9102, 9103}

_METRIC = re.compile(r"\bpacs_sync_[a-z0-9_]+")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\b(pacs_sync_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows keep collapsed panels inside


def _dashboard_exprs() -> list[str]:
    dashboard = _dashboard()
    exprs = [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):  # the query editor's form: {"qryType": 1, "query": "...", ...}
            query = query.get("query")
        exprs += [q for q in (variable.get("definition"), query) if isinstance(q, str) and q]
    return exprs


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def _alert_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in _alert_rules()]


def _exprs(source: str) -> list[str]:
    return _dashboard_exprs() if source == "dashboard" else _alert_exprs()


def _metric_labels() -> dict[str, frozenset[str]]:
    """Each exported sample name -> the label names the code gives it (plus ``le`` for buckets)."""
    registry = CollectorRegistry()
    labels: dict[str, frozenset[str]] = {}
    for metrics in (
        ProducerMetrics.create(registry),
        ProcessorMetrics.create(registry),
        SinkMetrics.create(registry),
        SupervisorMetrics.create(registry),
    ):
        for field in dataclasses.fields(metrics):
            metric = getattr(metrics, field.name)
            names = frozenset(metric._labelnames)  # the label names the metric was declared with
            base = metric._name  # a counter's name without _total
            for suffix in ("", "_total", "_created", "_sum", "_count"):
                labels[base + suffix] = names
            labels[base + "_bucket"] = names | {"le"}
    return labels


def test_exported_names_are_sample_names() -> None:
    names = exported_metric_names()
    assert "pacs_sync_producer_events_total" in names
    assert "pacs_sync_producer_events" not in names  # a counter's family name is no sample
    assert "pacs_sync_producer_source_lag_seconds" in names
    assert {"pacs_sync_end_to_end_latency_seconds_" + s for s in ("bucket", "sum", "count")} <= names
    assert {"pacs_sync_stage_up", "pacs_sync_stage_restarts_total"} <= names
    assert all(name.startswith("pacs_sync_") for name in names)


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_used_is_exported_by_the_code(source: str) -> None:
    exprs = _exprs(source)
    used = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert len(used) >= 5, f"{source}: should query the pipeline's metrics; found {sorted(used)}"
    missing = used - exported_metric_names()
    assert not missing, f"{source}: uses metrics pacs_sync/metrics.py does not export: {sorted(missing)}"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_label_used_is_set_by_the_code_or_the_scrape(source: str) -> None:
    unknown: set[str] = set()
    for expr in _exprs(source):
        for clause in _GROUPING.findall(expr):
            unknown |= {label.strip() for label in clause.split(",") if label.strip()} - KNOWN_LABELS
        for _metric, matchers in _SELECTOR.findall(expr):
            unknown |= set(_MATCHER.findall(matchers)) - KNOWN_LABELS
    assert not unknown, f"{source}: labels neither the code nor the scrape sets: {sorted(unknown)}"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_matchers_name_labels_of_their_metric(source: str) -> None:
    labels = _metric_labels()
    wrong = [
        f"{metric}{{{label}}}"
        for expr in _exprs(source)
        for metric, matchers in _SELECTOR.findall(expr)
        for label in _MATCHER.findall(matchers)
        if label not in labels.get(metric, frozenset()) | TARGET_LABELS
    ]
    assert not wrong, f"{source}: matchers on labels their metrics do not have: {wrong}"


def test_grouping_and_matcher_patterns_find_what_they_should() -> None:
    expr = (
        'sum by (stage, code) (rate(pacs_sync_sink_errors_total{code=~"PACS-011|PACS-012"}[5m]))'
        " / on (stage) group_left () sum by (stage) (rate(pacs_sync_sink_rows_total[5m]))"
    )
    assert _GROUPING.findall(expr) == ["stage, code", "stage", "", "stage"]
    assert _SELECTOR.findall(expr) == [("pacs_sync_sink_errors_total", 'code=~"PACS-011|PACS-012"')]
    assert _MATCHER.findall('entity=~"$entity", op!="stale"') == ["entity", "op"]


def test_the_required_alerts_exist_with_severity_for_and_annotations() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert set(REQUIRED_ALERTS) <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
    for name, code in REQUIRED_ALERTS.items():
        if code is not None:
            text = rules[name]["annotations"]["summary"] + rules[name]["annotations"]["description"]
            assert code in text, f"{name} should name {code}"
    assert "0.005" in str(rules["PacsSyncErrorRateHigh"]["expr"])  # 0.5 %


def test_prometheus_scrapes_every_stage_every_5s_and_loads_the_alerts() -> None:
    config = _yaml(PROMETHEUS)
    assert config["global"]["scrape_interval"] == "5s"
    rule_files = config["rule_files"]
    assert all((PROMETHEUS.parent / path).is_file() for path in rule_files)
    assert "alerts.yml" in rule_files
    ports: set[int] = set()
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            assert static["labels"]["stage"], job["job_name"]
            ports |= {int(target.rsplit(":", 1)[1]) for target in static["targets"]}
    assert ports >= STAGE_PORTS


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    (datasource,) = _yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"

    def refs(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = [ref for ref in refs(_dashboard()) if ref.get("type") != "grafana"]
    assert found
    assert {ref["uid"] for ref in found} == {datasource["uid"]}
    assert {ref["type"] for ref in found} == {"prometheus"}


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert "entity" in {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
    assert any("$entity" in expr for expr in _dashboard_exprs())
    assert any("histogram_quantile(0.99" in expr for expr in _dashboard_exprs())


def test_compose_mounts_the_config_where_prometheus_and_grafana_read_it() -> None:
    services = _yaml(COMPOSE)["services"]
    prometheus_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert prometheus_mounts["/etc/prometheus"] == "./prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert grafana_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    (provider,) = _yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert grafana_mounts[provider["options"]["path"]] == "./grafana/dashboards"
