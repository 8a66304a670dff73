"""The scheduler's metric names, in one place."""

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge("kiln_scheduler_queue_depth", "Jobs waiting, by pool.", ["pool"])
QUEUE_OLDEST_AGE = Gauge(
    "kiln_scheduler_queue_oldest_age_seconds",
    "Age of the oldest waiting job (since it was reserved), by pool.",
    ["pool"],
)
QUEUE_WAIT = Histogram(
    "kiln_scheduler_queue_wait_seconds",
    "Time from reservation to dispatch (each attempt), by pool.",
    ["pool"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
IN_FLIGHT = Gauge(
    "kiln_scheduler_in_flight", "Jobs dispatched and not finished, by pool.", ["pool"]
)
DISPATCHED = Counter("kiln_scheduler_dispatched_total", "Jobs dispatched, by pool.", ["pool"])
RETRIES = Counter(
    "kiln_scheduler_retries_total",
    "Failed attempts given another attempt, by pool and error code.",
    ["pool", "error_code"],
)
TIMEOUTS = Counter(
    "kiln_scheduler_timeouts_total",
    "Jobs failed with TIMEOUT (past their deadline: waiting, ended by their worker, or no "
    "answer within the grace), by pool and the status they were in.",
    ["pool", "status"],
)
WORKERS_LOST = Counter(
    "kiln_scheduler_workers_lost_total",
    "Attempts declared lost (no job.started or no heartbeat in time), by pool.",
    ["pool"],
)
FINISHED_JOBS = Counter(
    "kiln_scheduler_finished_total",
    "Jobs the scheduler stopped holding, by pool and outcome.",
    ["pool", "outcome"],
)
