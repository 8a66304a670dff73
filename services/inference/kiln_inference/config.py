from pydantic import Field

from kiln_runtime.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    service_name: str = "inference"
    http_port: int = 8004
    database_url: str = "sqlite:///.kiln/data/inference.db"
    database_shared: bool = False  # each worker keeps its attempts in its own database
    triton_grpc_url: str = "127.0.0.1:8001"
    # Attempts this worker runs at once: enough in flight for Triton's dynamic batcher to form
    # real batches (the scheduler's pool capacities bound what is dispatched anyway).
    worker_concurrency: int = Field(default=64, gt=0)
    # Simulated time of a sandbox job when the request names none (10 s: docs/architecture.md,
    # "Sandbox keys").
    sandbox_delay_ms: int = 10_000
    result_chunk_size: int = 1024 * 1024
    worker_id: str = "inference-1"
    # An attempt still running after this long announces itself (job.started); one that ends
    # sooner goes from dispatched to its end without it (its end says when it started).
    announce_start_after_s: float = Field(default=0.25, gt=0)
    # Then its heartbeat: a job.progress this often while it runs.
    progress_interval_s: float = Field(default=2.0, gt=0)
    # Input images (models with needs_input_image): fetched through the URL guard.
    input_image_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    input_image_max_pixels: int = Field(default=4096 * 4096, gt=0)
    input_image_timeout_s: float = Field(default=15.0, gt=0)
    # Input videos (auto-clip): fetched the same way, with their own caps.
    input_video_max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    input_video_max_duration_s: float = Field(default=300.0, gt=0)
    input_video_timeout_s: float = Field(default=60.0, gt=0)
    # Results are deleted this long after they were stored (a sweep runs every interval).
    result_retention_s: int = Field(default=7 * 24 * 3600, gt=0)
    retention_sweep_interval_s: float = Field(default=300.0, gt=0)
    # A work item whose run crashes (not a model error: e.g. the blob store is down) is tried
    # again locally this many times before its attempt fails as retryable WORKER_ERROR.
    max_local_crashes: int = Field(default=3, ge=1)
