"""Settings every service shares. Each service's `config.py` subclasses `ServiceSettings`."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    service_name: str = "kiln"
    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = "sqlite+aiosqlite:///.kiln/data/kiln.db"
    data_dir: Path = Path(".kiln/data")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    catalog_file: Path | None = None
    # The outbox relay wakes at once after a local commit; this is the fallback poll.
    outbox_poll_interval_s: float = Field(default=0.5, gt=0)
    outbox_batch_size: int = Field(default=500, gt=0)
    # Kafka group membership of faust workers: a worker that dies (SIGKILL, a lost node) holds
    # its partitions until the broker gives up on it (faust's own default is 60 s).
    kafka_session_timeout_s: float = Field(default=10.0, ge=6.0)
    kafka_heartbeat_interval_s: float = Field(default=2.0, gt=0)
    kafka_rebalance_timeout_s: float = Field(default=60.0, gt=0)
    topic_partitions: int | None = None
    topic_replication_factor: int | None = None
    # Loopback http(s) URLs for webhooks and input images: local development only.
    allow_loopback_urls: bool = False
    # Shared with the gateway and the notifier, which both render result URLs.
    files_signing_key: str = "change-me-files-signing-key"
    files_url_ttl_s: int = 24 * 3600
    public_url: str = "http://127.0.0.1:8000"
    blob_dir: Path = Path(".kiln/data/blobs")
    # Where results go, for inference (writes) and the gateway (serves): "local" (blob_dir) or
    # "s3" (an S3-compatible bucket; credentials from boto3's usual chain, e.g.
    # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    blob_backend: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
