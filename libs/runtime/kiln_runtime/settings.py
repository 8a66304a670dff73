"""Settings every service shares. Each service's `config.py` subclasses `ServiceSettings`."""

from pathlib import Path

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
    topic_partitions: int | None = None
    topic_replication_factor: int | None = None
    # Loopback http(s) URLs for webhooks and input images: local development only.
    allow_loopback_urls: bool = False
    # Shared with the gateway and the notifier, which both render result URLs.
    files_signing_key: str = "change-me-files-signing-key"
    files_url_ttl_s: int = 24 * 3600
    public_url: str = "http://127.0.0.1:8000"
    blob_dir: Path = Path(".kiln/data/blobs")
