from pydantic import Field, model_validator

from kiln_runtime.settings import ServiceSettings


class SchedulerSettings(ServiceSettings):
    service_name: str = "scheduler"
    http_port: int = 8003
    database_url: str = "sqlite:///.kiln/data/scheduler.db"
    # Overrides of the catalog's pool capacities, e.g. KILN_POOL_CAPACITY='{"cpu-image": 4}'.
    pool_capacity: dict[str, int] = Field(default_factory=dict)
    # Fairness: weight per account (default 1; KILN_ACCOUNT_WEIGHTS='{"acct_…": 3}') and how
    # many jobs one account may have in flight in one pool (KILN_ACCOUNT_CONCURRENCY_LIMIT,
    # per account: KILN_ACCOUNT_CONCURRENCY_LIMITS='{"acct_…": 16}').
    account_weights: dict[str, float] = Field(default_factory=dict)
    account_concurrency_limit: int = Field(default=4, gt=0)
    account_concurrency_limits: dict[str, int] = Field(default_factory=dict)
    # Retries of retryable attempt failures: attempts in all, backoff base * 2^(n-1), capped.
    max_attempts: int = Field(default=3, gt=0)
    retry_backoff_base_s: float = Field(default=1.0, ge=0)
    retry_backoff_cap_s: float = Field(default=60.0, ge=0)
    # Lost workers: a dispatched job with no job.started within this, or a started one with no
    # job.progress (heartbeat) within that, is retried as WORKER_LOST.
    worker_start_timeout_s: float = Field(default=120.0, gt=0)
    worker_heartbeat_timeout_s: float = Field(default=300.0, gt=0)
    # A worker ends the attempt it holds at the job's deadline itself (TIMEOUT); the scheduler
    # fails such a job only this long after the deadline, when no answer came (a dead worker),
    # so that the job's end has one producer.
    deadline_grace_s: float = Field(default=30.0, ge=0)
    # While the broker has not answered this instance's fetches of a partition for this long
    # (an outage), the workers' reports cannot reach it: the partition's lost-worker clocks
    # start again once it has. More than twice the idle fetch's wait (`consumer_poll_timeout_ms`).
    broker_silence_s: float = Field(default=2.0, gt=0)
    # Waiting jobs say queue_reason "no_workers" when none of the pool's jobs in flight has
    # started and one has waited this long for a worker to start it.
    no_workers_after_s: float = Field(default=15.0, gt=0)
    # The timer: deadlines, lost workers, retries due, queue metrics, every this many seconds.
    tick_interval_s: float = Field(default=0.5, gt=0)
    # ETA before any job of the pool finished, and the weight of each new duration sample.
    default_job_duration_s: float = Field(default=10.0, ge=0)
    duration_ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    # At most this many job.queued updates per pool each time the queue moves (front first;
    # the rest follow on later moves or ticks).
    queue_update_batch: int = Field(default=50, gt=0)

    @model_validator(mode="after")
    def _silence_outlasts_an_idle_fetch(self) -> "SchedulerSettings":
        # An idle partition is answered once per fetch wait (and not while a batch is handled:
        # nothing is fetched then): a silence limit within two waits would find every idle
        # partition silent and never judge a worker.
        if self.broker_silence_s <= 2 * self.consumer_poll_timeout_ms / 1000:
            raise ValueError(
                "KILN_BROKER_SILENCE_S must be more than twice KILN_CONSUMER_POLL_TIMEOUT_MS "
                f"({self.consumer_poll_timeout_ms} ms)"
            )
        return self
