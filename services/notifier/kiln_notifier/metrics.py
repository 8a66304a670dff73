"""The notifier's metric names (beside kiln_runtime.metrics)."""

from prometheus_client import Counter, Gauge, Histogram

WEBHOOK_ATTEMPTS = Counter(
    "kiln_webhook_attempts_total",
    "Webhook delivery attempts, by outcome (delivered, retry, give_up).",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "kiln_webhook_attempt_duration_seconds",
    "Time from sending a webhook to the receiver's response status.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOK_DELIVERIES = Counter(
    "kiln_webhook_deliveries_total",
    "Webhook deliveries that ended, by outcome (delivered, failed).",
    ["outcome"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "kiln_webhook_delivery_seconds",
    "Time from a delivery's creation (the job's end) to its successful attempt, retries included.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000, 86400),
)
WEBHOOK_PENDING_RETRIES = Gauge(
    "kiln_webhook_pending_retries",
    "Deliveries waiting for a retry (at least one attempt failed, not given up yet).",
)
WEBHOOK_DISABLED_ENDPOINTS = Gauge(
    "kiln_webhook_disabled_endpoints",
    "Account endpoints disabled because they answered 410 Gone.",
)
