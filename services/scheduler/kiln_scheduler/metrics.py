from prometheus_client import Counter, Gauge

QUEUE_DEPTH = Gauge("kiln_scheduler_queue_depth", "Jobs waiting, by pool.", ["pool"])
IN_FLIGHT = Gauge(
    "kiln_scheduler_in_flight", "Jobs dispatched and not finished, by pool.", ["pool"]
)
DISPATCHED = Counter("kiln_scheduler_dispatched_total", "Jobs dispatched, by pool.", ["pool"])
