from prometheus_client import Counter, Histogram

CREDIT_DECISIONS = Counter(
    "kiln_billing_decisions_total",
    "Credit decisions and settlements, by kind (reserved, rejected, captured, released).",
    ["kind", "mode"],
)
DECISION_LATENCY = Histogram(
    "kiln_billing_decision_seconds",
    "Time to decide on a job's credits, transaction excluded.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)


def mode(sandbox: bool) -> str:
    return "sandbox" if sandbox else "live"
