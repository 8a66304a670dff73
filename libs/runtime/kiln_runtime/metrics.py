"""The metric names every service exports (one registry; services add their own beside it)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "kiln_events_consumed_total",
    "Events taken from Kafka, by type and outcome (processed, duplicate, ignored, failed).",
    ["service", "event_type", "outcome"],
)
EVENTS_PRODUCED = Counter(
    "kiln_events_produced_total",
    "Events the outbox relay published to Kafka.",
    ["service", "event_type"],
)
HANDLER_LATENCY = Histogram(
    "kiln_handler_duration_seconds",
    "Time to handle one event, transaction included.",
    ["service", "event_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_BACKLOG = Gauge(
    "kiln_outbox_backlog",
    "Outbox rows written but not yet published.",
    ["service"],
)
EVENTS_DEAD_LETTERED = Counter(
    "kiln_events_dead_lettered_total",
    "Events skipped because they could not be decoded or handled after every retry.",
    ["service", "topic"],
)
