from prometheus_client import Counter, Histogram

INFERENCE_LATENCY = Histogram(
    "kiln_inference_duration_seconds",
    "Time Triton took to answer one job, by model.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TRITON_ERRORS = Counter("kiln_inference_errors_total", "Failed inference calls, by code.", ["code"])
