"""Settings every service shares. Each service's `config.py` subclasses `ServiceSettings`."""

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    service_name: str = "kiln"
    # Names this process among the instances of its service; its outbox rows carry it, and a
    # process that restarts under the same name sends what its earlier life left at once
    # (others wait for the rows' lease). No two live processes may share it: the local stack
    # sets `<service>-<n>`; empty means `<service>@<host>:<pid>` (new at every start).
    instance_id: str = ""
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Plain URLs work (`sqlite:///path`, `postgresql://user:pw@host/db`); Kiln picks the drivers.
    database_url: str = "sqlite:///.kiln/data/kiln.db"
    database_busy_timeout_s: float = Field(default=30.0, gt=0)
    # Whether every instance of the service keeps its state in this one database (false for
    # inference, whose workers each keep their own): then a partition that comes back to an
    # instance starts after what the others handled meanwhile (docs/architecture.md, "The
    # event runtime").
    database_shared: bool = True
    data_dir: Path = Path(".kiln/data")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # How long an idle keep-alive connection stays open. Longer than clients keep theirs (httpx
    # and requests: 5 s, uvicorn's own default too) and than load balancers (60 s): the side
    # that closes an idle connection first must be the one that would send on it next, or a
    # request sent just as the server closes is lost (a client sees "server disconnected").
    http_keep_alive_s: int = Field(default=65, gt=0)
    log_level: str = "INFO"
    catalog_file: Path | None = None
    # The event runtime (docs/architecture.md, "The event runtime").
    consumer_max_batch: int = Field(default=500, gt=0)
    consumer_poll_timeout_ms: int = Field(default=200, gt=0)
    consumer_commit_interval_s: float = Field(default=1.0, gt=0)
    consumer_poison_attempts: int = Field(default=3, ge=1)
    # How long an outbox row stays with the process that wrote it before any instance may
    # send it; and how often each instance looks for such rows.
    outbox_lease_s: float = Field(default=10.0, gt=0)
    outbox_recover_interval_s: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=500, gt=0)
    # Inbox rows older than this are deleted. It must outlast the longest time an outbox row
    # of a dead sender can wait to be sent again (docs/architecture.md, "Exactly once").
    inbox_retention_s: float = Field(default=24 * 3600.0, gt=0)
    inbox_prune_interval_s: float = Field(default=60.0, gt=0)
    # Kafka group membership: a member that dies (SIGKILL, a lost node) holds its partitions
    # until the broker gives up on it.
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

    @property
    def instance(self) -> str:
        return self.instance_id or f"{self.service_name}@{socket.gethostname()}:{os.getpid()}"
