"""Billing's metric names (one registry). Every job counter has a `mode` label, live or
sandbox, so that sandbox traffic is counted apart and never mixed into revenue."""

from prometheus_client import Counter, Gauge, Histogram

RESERVATIONS = Counter(
    "kiln_billing_reservations_total", "Jobs whose price billing held.", ["mode"]
)
REJECTIONS = Counter("kiln_billing_rejections_total", "Jobs refused for want of credits.", ["mode"])
CAPTURES = Counter(
    "kiln_billing_captures_total", "Completed jobs charged (their reservation captured).", ["mode"]
)
RELEASES = Counter(
    "kiln_billing_releases_total",
    "Failed or canceled jobs whose reservation went back to the account.",
    ["mode", "reason"],
)
UNCHANGED = Counter(
    "kiln_billing_events_without_effect_total",
    "Job events that changed nothing (redelivered, after a settlement, ...) or were remembered "
    "for later (an end before its submission), by reason.",
    ["event_type", "reason"],
)
MILLICREDITS = Counter(
    "kiln_billing_booked_millicredits_total",
    "Millicredits moved by bookings, by kind (grant, revoke, reserve, capture, release, charge).",
    ["kind"],
)
DECISION_LATENCY = Histogram(
    "kiln_billing_decision_seconds",
    "Time billing takes to decide on one event (reads, decision, booking; commit excluded).",
    ["event_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
DECISION_DELAY = Histogram(
    "kiln_billing_decision_delay_seconds",
    "From a job's submission (job.submitted's occurred_at) to billing's credit decision.",
    ["mode"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
LEDGER_TOTAL = Gauge(
    "kiln_billing_ledger_millicredits",
    "The ledger's totals over every account, by book: granted, available, reserved, spent.",
    ["book"],
)


def mode(sandbox: bool) -> str:
    return "sandbox" if sandbox else "live"
