"""monitoring/: Prometheus config and alerts (promtool), the Grafana dashboard, and that
every metric they query is one the service really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.deploy_support import (
    ROOT,
    Exposition,
    dashboard_exprs,
    find_tool,
    parse_exposition,
    promql_matchers,
    promql_metric_names,
    rule_exprs,
)

MONITORING = ROOT / "monitoring"
PROMETHEUS = MONITORING / "prometheus"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "payment-service.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"
JOB = "payment-service"
# Labels Prometheus adds at scrape time, not the service.
TARGET_LABELS = {"job", "instance", "service", "namespace", "pod"}
# Series Prometheus makes itself for every target (never on a /metrics page).
PROMETHEUS_SERIES = {"up"}
# Exact status codes (should_group_status_codes=False): what `status=~"5.."` may match.
HTTP_STATUS_CODES = {str(code) for code in range(100, 600)}
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"

# What prometheus_client prints for the service's metrics contract (SPEC §7).
CONTRACT_SAMPLE = """\
# HELP http_requests_total Total number of requests by method, status and handler.
# TYPE http_requests_total counter
http_requests_total{handler="/health",method="GET",status="200"} 1.0
# HELP http_request_duration_seconds Latency with only few buckets by handler.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{handler="/health",le="0.005",method="GET"} 1.0
http_request_duration_seconds_bucket{handler="/health",le="0.5",method="GET"} 1.0
http_request_duration_seconds_bucket{handler="/health",le="1.0",method="GET"} 1.0
http_request_duration_seconds_bucket{handler="/health",le="2.5",method="GET"} 1.0
http_request_duration_seconds_bucket{handler="/health",le="10.0",method="GET"} 1.0
http_request_duration_seconds_bucket{handler="/health",le="+Inf",method="GET"} 1.0
http_request_duration_seconds_count{handler="/health",method="GET"} 1.0
http_request_duration_seconds_sum{handler="/health",method="GET"} 0.004
# HELP payments_total Charges recorded, by method and resulting status
# TYPE payments_total counter
payments_total{method="CARD",status="SUCCESS"} 0.0
payments_created{method="CARD",status="SUCCESS"} 1.7e+09
# HELP payment_amount Charged amounts
# TYPE payment_amount histogram
# HELP refunds_total Refunds recorded
# TYPE refunds_total counter
refunds_total 0.0
# HELP refund_amount_total Money refunded
# TYPE refund_amount_total counter
refund_amount_total 0.0
# HELP idempotent_replays_total Requests answered from a stored idempotent response
# TYPE idempotent_replays_total counter
idempotent_replays_total{operation="charge"} 0.0
# HELP trip_service_requests_total Trip service lookups by outcome
# TYPE trip_service_requests_total counter
trip_service_requests_total{outcome="found"} 0.0
trip_service_requests_total{outcome="not_found"} 0.0
trip_service_requests_total{outcome="unavailable"} 0.0
trip_service_requests_total{outcome="invalid"} 0.0
# HELP trip_service_request_duration_seconds Trip service lookup latency
# TYPE trip_service_request_duration_seconds histogram
# HELP outbox_pending Outbox messages waiting for delivery
# TYPE outbox_pending gauge
outbox_pending 0.0
# HELP outbox_delivery_failures_total Failed notification delivery attempts
# TYPE outbox_delivery_failures_total counter
outbox_delivery_failures_total 0.0
"""


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def load_rules() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())


def all_queries() -> list[tuple[str, str]]:
    """(where, expr) of every dashboard query and alert rule."""
    return [(f"dashboard panel {t!r}", e) for t, e in dashboard_exprs(load_dashboard())] + [
        (f"alert {name}", expr) for name, expr in rule_exprs(load_rules())
    ]


def promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    binary = find_tool("promtool", "make ci-tools")
    run = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def _exported_values(exposition: Exposition, metric: str, label: str) -> set[str]:
    """Values `label` may take on `metric`: those scraped, or any status code for `status`
    (a healthy scrape has no 5xx yet; the instrumentator writes exact codes)."""
    if metric == "http_requests_total" and label == "status":
        return HTTP_STATUS_CODES
    return {sample[label] for sample in exposition.samples.get(metric, []) if label in sample}


def _missing_values(values: set[str], op: str, value: str) -> list[str]:
    if op == "=":
        return [] if value in values else [value]
    if op == "=~":
        return [] if any(re.fullmatch(value, v) for v in values) else [value]
    return []


def unexported(exposition: Exposition) -> list[str]:
    """Queries naming a metric, a label or a label value (a `le` bucket, a status code) the
    exposition does not offer."""
    problems = []
    exported = exposition.names | PROMETHEUS_SERIES
    for where, expr in all_queries():
        for name in sorted(promql_metric_names(expr) - exported):
            problems.append(f"{where}: metric {name} is not exported")
        for metric, label, op, value in promql_matchers(expr):
            seen = exposition.samples.get(metric, [])
            if label in TARGET_LABELS or not seen:
                continue
            if not any(label in sample for sample in seen):
                problems.append(f"{where}: {metric} has no label {label}")
                continue
            values = _exported_values(exposition, metric, label)
            for wanted in _missing_values(values, op, value):
                problems.append(f"{where}: {metric}{{{label}{op}{wanted!r}}} never exported")
    return problems


def alert_test_series() -> list[tuple[str, dict[str, str]]]:
    """(metric, labels) of every input series of alerts.test.yml."""
    found = []
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            match = re.fullmatch(
                r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*", series["series"]
            )
            assert match, series["series"]
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"', match[2] or ""))
            found.append((match[1], labels))
    return found


def unscraped_test_series(exposition: Exposition) -> list[str]:
    """alerts.test.yml series whose name, label or value (`le`, `status`, `outcome`...)
    a real scrape does not have: a unit test on such a series proves nothing."""
    problems = []
    for metric, labels in alert_test_series():
        if metric in PROMETHEUS_SERIES:
            continue
        if metric not in exposition.names:
            problems.append(f"alerts.test.yml: {metric} is not exported")
            continue
        for label, value in labels.items():
            if label in TARGET_LABELS or label in {"handler", "method"}:
                continue
            values = _exported_values(exposition, metric, label)
            if value not in values:
                problems.append(f"alerts.test.yml: {metric}{{{label}={value!r}}} never exported")
    return problems


# --- the parsers, on literal samples ---------------------------------------------


def test_metric_names_are_read_out_of_promql() -> None:
    """Functions, keywords, labels, durations, numbers and Grafana variables are not metrics."""
    expr = (
        'histogram_quantile(0.99, sum by (le, handler) (rate(a_bucket{job="x", h!="/m"}'
        "[$__rate_interval]))) > 1e3 and on (job) max(delta(b[15m:1m] offset 5m)) / "
        "sum without (instance) (c_total) * 60 unless bool d"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b", "c_total", "d"}
    assert promql_matchers('x{a="1", b=~"p|q"} / y{c!="z"}') == [
        ("x", "a", "=", "1"), ("x", "b", "=~", "p|q"), ("y", "c", "!=", "z"),
    ]  # fmt: skip


def test_exposition_parser_knows_implied_sample_names() -> None:
    """Histograms imply _bucket/_sum/_count even before their first observation."""
    exposition = parse_exposition(CONTRACT_SAMPLE)
    assert {"payment_amount_bucket", "payment_amount_sum", "payment_amount_count"} <= (
        exposition.names
    )
    assert exposition.samples["trip_service_requests_total"][0] == {"outcome": "found"}
    assert "payment_amount_total" not in exposition.names


def test_queries_fit_the_documented_metrics_contract() -> None:
    """Against the contract sample, the dashboard and alerts query only exported metrics."""
    assert unexported(parse_exposition(CONTRACT_SAMPLE)) == []


def test_a_misspelt_metric_would_be_caught() -> None:
    """The check reports a metric the exposition lacks (guards the guard)."""
    sample = CONTRACT_SAMPLE.replace("outbox_pending", "outbox_backlog")
    assert any("outbox_pending" in p for p in unexported(parse_exposition(sample)))


def test_alert_tests_use_the_contract_series_and_buckets() -> None:
    """alerts.test.yml feeds only series, status codes and `le` buckets the service writes."""
    assert unscraped_test_series(parse_exposition(CONTRACT_SAMPLE)) == []


def test_a_bucket_the_service_does_not_have_would_be_caught() -> None:
    """`le="1"` (Prometheus' client writes `le="1.0"`) or `status="5xx"` would be reported."""
    sample = CONTRACT_SAMPLE.replace('le="1.0"', 'le="1"')
    assert any("le='1.0'" in p for p in unscraped_test_series(parse_exposition(sample)))
    grouped = CONTRACT_SAMPLE.replace('status="200"', 'status="2xx"')
    assert _missing_values(_exported_values(parse_exposition(grouped), "x", "status"), "=", "5xx")


# --- against the running service -------------------------------------------------


async def test_dashboard_and_alerts_query_what_the_service_exports(
    client: httpx.AsyncClient,
) -> None:
    """Scrape the real app: every metric, label value and `le` bucket queried by the alerts,
    their unit tests and the dashboard is on its /metrics page; status codes are exact."""
    from payment_service.observability import HTTP_LATENCY_BUCKETS

    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/v1/payments/987654321")).status_code == 404
    response = await client.get("/metrics")
    assert response.status_code == 200
    exposition = parse_exposition(response.text)
    statuses = {s.get("status") for s in exposition.samples.get("http_requests_total", [])}
    assert {"200", "404"} <= statuses, statuses
    buckets = _exported_values(exposition, "http_request_duration_seconds_bucket", "le")
    assert buckets == {str(float(b)) for b in HTTP_LATENCY_BUCKETS} | {"+Inf"}
    assert unexported(exposition) == []
    assert unscraped_test_series(exposition) == []


def test_trip_outcomes_queried_are_ones_the_client_records() -> None:
    """Alert and dashboard outcome values are among observability.TRIP_OUTCOMES."""
    from payment_service.observability import TRIP_OUTCOMES

    for where, expr in all_queries():
        for metric, label, _, value in promql_matchers(expr):
            if metric == "trip_service_requests_total" and label == "outcome":
                assert set(value.split("|")) <= set(TRIP_OUTCOMES), where


# --- Prometheus ------------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    """promtool check config: scrape config and its rule files load."""
    promtool("check", "config", "prometheus.yml")


def test_alert_rules_are_valid() -> None:
    """promtool check rules accepts alerts.yml."""
    promtool("check", "rules", "alerts.yml")


def test_alert_rules_fire_when_they_should() -> None:
    """promtool test rules: each alert fires on a bad series and not on a healthy one."""
    promtool("test", "rules", "alerts.test.yml")


def test_every_alert_is_unit_tested_and_documented() -> None:
    """Each alert has a severity and a summary, and alerts.test.yml exercises it."""
    tests = (PROMETHEUS / "alerts.test.yml").read_text()
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            assert f"alertname: {rule['alert']}" in tests, f"{rule['alert']} is not tested"


def test_alerts_cover_errors_latency_outbox_and_trip_service() -> None:
    """Instance down, 5xx rate, p99 latency, outbox backlog and Trip-service failures each
    have an alert."""
    metrics = {name: promql_metric_names(expr) for name, expr in rule_exprs(load_rules())}
    used = [m for names in metrics.values() for m in names]
    assert "up" in used
    assert "http_requests_total" in used
    assert "http_request_duration_seconds_bucket" in used
    assert "outbox_pending" in used
    assert "trip_service_requests_total" in used


def test_scrape_job_is_the_job_queries_select() -> None:
    """prometheus.yml's job and target match the queries' job and the compose API port."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    assert job["static_configs"][0]["targets"] == ["api:8082"]
    assert job["metrics_path"] == "/metrics"
    for where, expr in all_queries():
        jobs = {v for m, label, _, v in promql_matchers(expr) if label == "job"}
        assert jobs == {JOB}, f"{where} does not select job={JOB!r}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as recording rules, $__rate_interval = 1m)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(dashboard_exprs(load_dashboard()))
    ]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    promtool("check", "rules", "dashboard.yml", cwd=tmp_path)


# --- Grafana ---------------------------------------------------------------------


def test_dashboard_shows_what_operators_need() -> None:
    """Request rate, error rate, p50/p99 by route, payments by status and method, refunds,
    outbox backlog and Trip-service errors each have a panel."""
    exprs = [expr for _, expr in dashboard_exprs(load_dashboard())]
    joined = "\n".join(exprs)
    needs = {
        "request rate by route": r"sum by \(handler[^)]*\) \(rate\(http_requests_total",
        "error rate": r'http_requests_total\{[^}]*status=~"5\.\."',
        "p50 by route": r"histogram_quantile\(0\.5, sum by \(le, handler\)",
        "p99 by route": r"histogram_quantile\(0\.99, sum by \(le, handler\)",
        "payments by status": r"sum by \(status\) \(rate\(payments_total",
        "payments by method": r"sum by \(method\) \(rate\(payments_total",
        "refund volume": r"refund_amount_total",
        "outbox backlog": r"outbox_pending",
        "trip-service errors": r"trip_service_requests_total\{[^}]*outcome=~",
    }
    missing = [need for need, pattern in needs.items() if not re.search(pattern, joined)]
    assert missing == []


def test_dashboard_is_well_formed_for_provisioning() -> None:
    """Fixed uid, unique panel ids, the provisioned datasource, panels inside 24 columns."""
    dashboard = load_dashboard()
    assert dashboard["uid"] == "payment-service" and dashboard["title"]
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def test_grafana_provisioning_matches_compose_mounts() -> None:
    """The provider reads the folder compose mounts; the datasource is compose's Prometheus."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"])
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "payment-service.yml").read_text())
    (entry,) = provider["providers"]
    assert mounts["./monitoring/grafana/dashboards"] == entry["options"]["path"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    assert "127.0.0.1:9090:9090" in compose["services"]["prometheus"]["ports"]


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(ROOT)) for p in MONITORING.rglob("*") if p.is_file())
)
def test_monitoring_files_parse(path: str) -> None:
    """Every YAML and JSON file under monitoring/ parses."""
    file = ROOT / path
    if file.suffix in {".yml", ".yaml"}:
        assert yaml.safe_load(file.read_text()) is not None
    elif file.suffix == ".json":
        assert json.loads(file.read_text())
