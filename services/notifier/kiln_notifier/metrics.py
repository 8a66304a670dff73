"""The notifier's metric names (beside kiln_runtime.metrics)."""

from prometheus_client import Counter, Histogram

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
