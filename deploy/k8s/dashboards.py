"""Write Kiln's Grafana dashboards (deploy/k8s/base/monitoring/dashboards/*.json) from the panel
lists below.

    uv run python deploy/k8s/dashboards.py           # (re)write them
    uv run python deploy/k8s/dashboards.py --check   # exit 1 when a file differs

Kustomize's configMapGenerator (base/monitoring/kustomization.yaml) puts each file in a ConfigMap
labelled `grafana_dashboard`, which kube-prometheus-stack's Grafana sidecar provisions. Every
query is checked by tests/deploy/test_live_metrics.py against a Prometheus that scraped a local
stack running jobs. Queries use fixed `[5m]` windows (no Grafana-only variables besides the data
source) so that the same text runs in Prometheus as is.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUTPUT_DIR = Path(__file__).resolve().parent / "base" / "monitoring" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...] = field(default_factory=tuple)


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


def rate(metric: str, by: str, matchers: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{matchers}}}[5m]))"


def quantile(phi: float, metric: str, by: str, matchers: str = "") -> str:
    grouping = f"le, {by}" if by else "le"
    return (
        f"histogram_quantile({phi}, sum by ({grouping}) (rate({metric}_bucket{{{matchers}}}[5m])))"
    )


def per_request(metric: str, scale: str = "") -> str:
    """A Triton counter (summed microseconds, executions) per successful request, by model."""
    requests = "clamp_min(sum by (model) (rate(nv_inference_request_success[5m])), 1e-9)"
    return f"sum by (model) (rate({metric}[5m])) / {requests}{scale}"


def ratio_of_5xx(by: str) -> str:
    # `or ... * 0`: a route that had no 5xx shows 0, not a gap (and still needs real traffic).
    total = f"sum by ({by}) (rate(kiln_http_requests_total[5m]))"
    errors = f'sum by ({by}) (rate(kiln_http_requests_total{{status=~"5.."}}[5m]))'
    return f"({errors} or {total} * 0) / {total}"


FUNNEL = Panel(
    "Job funnel (per second)",
    (
        q(
            rate("kiln_events_produced_total", "event_type", 'event_type="job.submitted"'),
            "submitted",
        ),
        q(rate("kiln_billing_reservations_total", "mode"), "reserved ({{mode}})"),
        q(rate("kiln_billing_rejections_total", "mode"), "rejected ({{mode}})"),
        q(rate("kiln_scheduler_dispatched_total", "pool"), "dispatched ({{pool}})"),
        q(rate("kiln_inference_attempts_total", "outcome"), "attempts {{outcome}}"),
        q(rate("kiln_scheduler_finished_total", "outcome"), "finished {{outcome}}"),
    ),
    unit="ops",
    description="Each stage of a job: submitted at the gateway, credits reserved or rejected by "
    "billing, dispatched by the scheduler, run by inference, finished.",
)

PIPELINE = Dashboard(
    uid="kiln-pipeline",
    title="Kiln / Pipeline overview",
    description="The job funnel, event throughput, latency and errors of every service.",
    rows=(
        ("Funnel", (FUNNEL,)),
        (
            "Throughput",
            (
                Panel(
                    "Events handled by service",
                    (
                        q(
                            rate("kiln_events_consumed_total", "service, outcome"),
                            "{{service}} {{outcome}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Events published by service",
                    (q(rate("kiln_events_produced_total", "service"), "{{service}}"),),
                    unit="ops",
                ),
            ),
        ),
        (
            "Latency",
            (
                Panel(
                    "Handler time p95 by service",
                    (q(quantile(0.95, "kiln_handler_duration_seconds", "service"), "{{service}}"),),
                    unit="s",
                ),
                Panel(
                    "Submit latency (POST /api/v1/jobs) p50 / p99",
                    (
                        q(
                            quantile(
                                0.5,
                                "kiln_http_request_duration_seconds",
                                "",
                                'route="/api/v1/jobs", method="POST"',
                            ),
                            "p50",
                        ),
                        q(
                            quantile(
                                0.99,
                                "kiln_http_request_duration_seconds",
                                "",
                                'route="/api/v1/jobs", method="POST"',
                            ),
                            "p99",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Job end to webhook delivered p95",
                    (q(quantile(0.95, "kiln_webhook_delivery_seconds", ""), "p95"),),
                    unit="s",
                ),
            ),
        ),
        (
            "Errors",
            (
                Panel(
                    "API 5xx ratio",
                    (q(ratio_of_5xx("method"), "{{method}}"),),
                    unit="percentunit",
                ),
                Panel(
                    "Dead-lettered events",
                    (
                        q(
                            "sum by (service, topic) "
                            "(increase(kiln_events_dead_lettered_total[1h]))",
                            "{{service}} {{topic}}",
                        ),
                    ),
                    description="Events a consumer gave up on (undecodable, or failing after "
                    "every retry), in the last hour.",
                ),
                Panel(
                    "Outbox backlog",
                    (q("max by (service) (kiln_outbox_backlog)", "{{service}}"),),
                    description="Events committed but not yet published to Kafka.",
                ),
                Panel(
                    "Consumer lag",
                    (
                        q("max by (service, topic) (kiln_consumer_lag)", "{{service}} {{topic}}"),
                        q(
                            "sum by (consumergroup, topic) (kafka_consumergroup_lag)",
                            "broker: {{consumergroup}} {{topic}}",
                        ),
                    ),
                    description="Messages each service's consumer group has not handled yet, "
                    "per topic: as the service sees it, and as the broker does (Strimzi's Kafka "
                    "Exporter). KEDA scales on the broker's numbers.",
                ),
            ),
        ),
    ),
)

API = Dashboard(
    uid="kiln-api",
    title="Kiln / API",
    description="The gateway's HTTP API per route template: rate, errors, duration.",
    rows=(
        (
            "Requests",
            (
                Panel(
                    "Requests by route",
                    (q(rate("kiln_http_requests_total", "route, method"), "{{method}} {{route}}"),),
                    unit="reqps",
                ),
                Panel(
                    "Responses by status",
                    (q(rate("kiln_http_requests_total", "status"), "{{status}}"),),
                    unit="reqps",
                ),
            ),
        ),
        (
            "Errors",
            (
                Panel(
                    "5xx ratio by route",
                    (q(ratio_of_5xx("route"), "{{route}}"),),
                    unit="percentunit",
                ),
                Panel(
                    "4xx by route",
                    (
                        q(
                            rate("kiln_http_requests_total", "route, status", 'status=~"4.."'),
                            "{{status}} {{route}}",
                        ),
                    ),
                    unit="reqps",
                    description="Client errors: auth, validation, rate limits, 402.",
                ),
            ),
        ),
        (
            "Duration",
            (
                Panel(
                    "p95 by route",
                    (
                        q(
                            quantile(0.95, "kiln_http_request_duration_seconds", "route"),
                            "{{route}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "p50 by route",
                    (q(quantile(0.5, "kiln_http_request_duration_seconds", "route"), "{{route}}"),),
                    unit="s",
                ),
            ),
        ),
    ),
)

QUEUES = Dashboard(
    uid="kiln-queues-inference",
    title="Kiln / Queues and inference",
    description="The scheduler's queues per pool, the inference workers and Triton.",
    rows=(
        (
            "Queues",
            (
                Panel(
                    "Waiting jobs by pool",
                    (q("sum by (pool) (kiln_scheduler_queue_depth)", "{{pool}}"),),
                ),
                Panel(
                    "Oldest waiting job by pool",
                    (q("max by (pool) (kiln_scheduler_queue_oldest_age_seconds)", "{{pool}}"),),
                    unit="s",
                ),
                Panel(
                    "Queue wait p95 by pool",
                    (q(quantile(0.95, "kiln_scheduler_queue_wait_seconds", "pool"), "{{pool}}"),),
                    unit="s",
                ),
                Panel(
                    "In flight by pool",
                    (q("sum by (pool) (kiln_scheduler_in_flight)", "{{pool}}"),),
                ),
                Panel(
                    "Deadlines missed (TIMEOUT) by pool",
                    (q("sum by (pool) (increase(kiln_scheduler_timeouts_total[1h]))", "{{pool}}"),),
                ),
            ),
        ),
        (
            "Inference",
            (
                Panel(
                    "Attempts by model and outcome",
                    (
                        q(
                            rate("kiln_inference_attempts_total", "model, outcome"),
                            "{{model}} {{outcome}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Triton call p95 by model",
                    (q(quantile(0.95, "kiln_inference_duration_seconds", "model"), "{{model}}"),),
                    unit="s",
                ),
                Panel("Running attempts", (q("sum(kiln_inference_in_flight)", "running"),)),
                Panel(
                    "Failed Triton calls by model and code",
                    (
                        q(
                            "sum by (model, code) (increase(kiln_inference_errors_total[1h]))",
                            "{{model}} {{code}}",
                        ),
                    ),
                ),
            ),
        ),
        (
            "Triton",
            (
                Panel(
                    "Triton requests by model",
                    (
                        q(rate("nv_inference_request_success", "model"), "{{model}} ok"),
                        q(rate("nv_inference_request_failure", "model"), "{{model}} failed"),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "Triton queue and compute time per request by model",
                    (
                        q(
                            per_request("nv_inference_queue_duration_us", " / 1e6"),
                            "{{model}} queue",
                        ),
                        q(
                            per_request("nv_inference_compute_infer_duration_us", " / 1e6"),
                            "{{model}} compute",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Triton batches per request by model",
                    (
                        q(
                            per_request("nv_inference_exec_count"),
                            "{{model}}",
                        ),
                    ),
                    description="Below 1: requests batched together.",
                ),
            ),
        ),
    ),
)

BILLING_WEBHOOKS = Dashboard(
    uid="kiln-billing-webhooks",
    title="Kiln / Billing and webhooks",
    description="Credit decisions and the ledger; webhook deliveries and endpoints.",
    rows=(
        (
            "Billing",
            (
                Panel(
                    "Credit decisions by mode",
                    (
                        q(rate("kiln_billing_reservations_total", "mode"), "reserved {{mode}}"),
                        q(rate("kiln_billing_rejections_total", "mode"), "rejected {{mode}}"),
                        q(rate("kiln_billing_captures_total", "mode"), "captured {{mode}}"),
                        q(
                            rate("kiln_billing_releases_total", "mode, reason"),
                            "released {{mode}} {{reason}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Submission to credit decision p95",
                    (q(quantile(0.95, "kiln_billing_decision_delay_seconds", "mode"), "{{mode}}"),),
                    unit="s",
                ),
                Panel(
                    "Decision time p95 by event",
                    (
                        q(
                            quantile(0.95, "kiln_billing_decision_seconds", "event_type"),
                            "{{event_type}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Ledger (credits) by book",
                    (q("max by (book) (kiln_billing_ledger_millicredits) / 1000", "{{book}}"),),
                ),
                Panel(
                    "Credits booked by kind (per hour)",
                    (
                        q(
                            "sum by (kind) (increase(kiln_billing_booked_millicredits_total[1h])) "
                            "/ 1000",
                            "{{kind}}",
                        ),
                    ),
                ),
            ),
        ),
        (
            "Webhooks",
            (
                Panel(
                    "Attempts by outcome",
                    (q(rate("kiln_webhook_attempts_total", "outcome"), "{{outcome}}"),),
                    unit="ops",
                ),
                Panel(
                    "Deliveries ended by outcome (per hour)",
                    (
                        q(
                            "sum by (outcome) (increase(kiln_webhook_deliveries_total[1h]))",
                            "{{outcome}}",
                        ),
                    ),
                ),
                Panel(
                    "Receiver response time p95",
                    (q(quantile(0.95, "kiln_webhook_attempt_duration_seconds", ""), "p95"),),
                    unit="s",
                ),
                Panel(
                    "Deliveries waiting for a retry",
                    (q("sum(kiln_webhook_pending_retries)", "pending"),),
                ),
                Panel(
                    "Endpoints disabled (410 Gone)",
                    (q("sum(kiln_webhook_disabled_endpoints)", "disabled"),),
                ),
            ),
        ),
    ),
)

DASHBOARDS = (PIPELINE, API, QUEUES, BILLING_WEBHOOKS)


def panel_json(panel: Panel, panel_id: int, x: int, y: int, width: int) -> dict[str, object]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
            }
            for i, query in enumerate(panel.queries)
        ],
    }


def dashboard_json(dashboard: Dashboard) -> dict[str, object]:
    panels: list[dict[str, object]] = []
    panel_id, y = 1, 0
    for title, row in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y = panel_id + 1, y + 1
        width = max(24 // min(len(row), 3), 8)
        for index, panel in enumerate(row):
            x = (index * width) % 24
            if index and x == 0:
                y += 8
            panels.append(panel_json(panel, panel_id, x, y, width))
            panel_id += 1
        y += 8
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["kiln"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Data source",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "panels": panels,
    }


def rendered() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        f"{dashboard.uid}.json": json.dumps(dashboard_json(dashboard), indent=2) + "\n"
        for dashboard in DASHBOARDS
    }


def queries(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of a dashboard's JSON."""
    found: list[tuple[str, str]] = []
    panels = dashboard.get("panels", [])
    assert isinstance(panels, list)
    for panel in panels:
        for target in panel.get("targets", []):
            found.append((str(panel["title"]), str(target["expr"])))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    files = rendered()
    if args.check:
        stale = [
            n
            for n, t in files.items()
            if not (OUTPUT_DIR / n).exists() or (OUTPUT_DIR / n).read_text() != t
        ]
        extra = sorted(p.name for p in OUTPUT_DIR.glob("*.json") if p.name not in files)
        if stale or extra:
            print(f"stale dashboards: {stale + extra}; run uv run python deploy/k8s/dashboards.py")
            return 1
        return 0
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUTPUT_DIR / name).write_text(text)
    print(f"wrote {len(files)} dashboards into {OUTPUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
