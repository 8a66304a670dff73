"""Every metric the inference worker exports (one registry per service)."""

from prometheus_client import Counter, Gauge, Histogram

INFERENCE_LATENCY = Histogram(
    "kiln_inference_duration_seconds",
    "Time Triton took to answer one job, by model (successes and failures).",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
TRITON_ERRORS = Counter(
    "kiln_inference_errors_total", "Failed inference calls to Triton, by model and code.",
    ["model", "code"],
)  # fmt: skip
ATTEMPTS = Counter(
    "kiln_inference_attempts_total",
    "Job attempts this worker finished, by model and outcome "
    "(completed, failed, canceled, timeout).",
    ["model", "outcome"],
)
IN_FLIGHT = Gauge("kiln_inference_in_flight", "Job attempts running on this worker now.")
INPUT_FETCH_LATENCY = Histogram(
    "kiln_inference_input_fetch_seconds",
    "Time to fetch and check one input image.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
INPUT_FETCH_ERRORS = Counter(
    "kiln_inference_input_fetch_errors_total", "Refused or failed input images, by code.", ["code"]
)
PERSON_CHECK_LATENCY = Histogram(
    "kiln_inference_person_check_seconds",
    "Time to look for a person in one input image (OpenCV, in a thread).",
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PERSON_REFUSED = Counter(
    "kiln_inference_person_refused_total",
    "Input images refused because they show a person, by what was found.",
    ["kind"],
)
RESULTS_DELETED = Counter(
    "kiln_inference_results_deleted_total", "Result blobs deleted after their retention."
)
