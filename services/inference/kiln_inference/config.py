from kiln_runtime.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    service_name: str = "inference"
    http_port: int = 8004
    database_url: str = "sqlite+aiosqlite:///.kiln/data/inference.db"
    triton_grpc_url: str = "127.0.0.1:8001"
    # Jobs this worker runs at once (Triton batches what arrives together).
    worker_concurrency: int = 8
    # Simulated time of a sandbox job when the request names none (DESIGN.md: 10 s).
    sandbox_delay_ms: int = 10_000
    result_chunk_size: int = 1024 * 1024
    worker_id: str = "inference-1"
