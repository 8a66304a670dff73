"""The metric names every service exports through the event runtime (one registry; services
add their own beside it). docs/architecture.md says what each one watches."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "kiln_events_consumed_total",
    "Events taken from Kafka, by type and outcome (processed, duplicate, ignored, "
    "dead_lettered, replay_for_other_group).",
    ["service", "event_type", "outcome"],
)
EVENTS_PRODUCED = Counter(
    "kiln_events_produced_total",
    "Events sent to Kafka and acknowledged by it (publish on commit and recovery).",
    ["service", "event_type"],
)
EVENTS_MISSED = Counter(
    "kiln_events_missed_total",
    "Offsets a consumer found missing between its stored position and the next batch (deleted "
    "by retention before it read them): never handled. Should stay 0; alert on any increase.",
    ["service", "topic"],
)
EVENTS_RECOVERED = Counter(
    "kiln_outbox_recovered_total",
    "Outbox rows sent by the recovery loop (their first sender died or could not send).",
    ["service"],
)
HANDLER_LATENCY = Histogram(
    "kiln_handler_duration_seconds",
    "Time to handle one event inside its batch's transaction.",
    ["service", "event_type"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
BATCH_SIZE = Histogram(
    "kiln_batch_events",
    "Events per handled batch (what one poll returned).",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_LATENCY = Histogram(
    "kiln_batch_duration_seconds",
    "Time from a poll's return to its batch's commit.",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_RETRIES = Counter(
    "kiln_batch_retries_total",
    "Batches rolled back and retried, by reason (transient: database or broker away; "
    "poison: an event failed, the batch is split to find it; fenced: another member moved "
    "the partition's position first).",
    ["service", "reason"],
)
OUTBOX_BACKLOG = Gauge(
    "kiln_outbox_backlog",
    "Outbox rows written but not yet acknowledged by Kafka.",
    ["service"],
)
EVENTS_DEAD_LETTERED = Counter(
    "kiln_events_dead_lettered_total",
    "Events sent to the dead-letter topic (undecodable, or failing deterministically).",
    ["service", "topic"],
)
CONSUMER_LAG = Gauge(
    "kiln_consumer_lag",
    "Events on a partition not handled yet (high watermark minus position).",
    ["service", "topic", "partition"],
)
DB_STATEMENTS = Counter(
    "kiln_db_statements_total",
    "SQL statements sent to the database by the runtime's engine.",
    ["service"],
)
DB_TRANSACTIONS = Counter(
    "kiln_db_transactions_total",
    "Transactions committed by the runtime's engine, by kind (write: it changed something).",
    ["service", "kind"],
)
INBOX_PRUNED = Counter(
    "kiln_inbox_pruned_total",
    "Inbox rows deleted after the retention window.",
    ["service"],
)
