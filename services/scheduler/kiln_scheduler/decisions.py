"""The scheduler's decisions, as pure functions: which waiting job runs next (weighted-fair
across accounts, capped by pool capacity and a per-account concurrency limit), where each
waiting job stands and when it should start, what follows a failed attempt, and which running
jobs are past their deadline or lost with their worker."""

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# Statuses that hold a slot of the pool's capacity: handed to a worker and not finished.
ACTIVE_STATUSES = ("dispatched", "running", "canceling")
FINISHED = "finished"


@dataclass(frozen=True)
class Waiting:
    job_id: str
    account_id: str
    seq: int
    # Not dispatchable before this instant (the backoff of a retry); None: at once.
    ready_at: datetime | None = None


@dataclass(frozen=True)
class FairnessPolicy:
    """Weights per account (default 1) and the per-account concurrency limit in one pool."""

    default_weight: float = 1.0
    weights: Mapping[str, float] = field(default_factory=dict)
    concurrency_limit: int = 4
    concurrency_limits: Mapping[str, int] = field(default_factory=dict)

    def weight(self, account_id: str) -> float:
        w = self.weights.get(account_id, self.default_weight)
        return w if w > 0 else self.default_weight

    def limit(self, account_id: str) -> int:
        return self.concurrency_limits.get(account_id, self.concurrency_limit)


def fair_order(
    waiting: Sequence[Waiting],
    in_flight_by_account: Mapping[str, int],
    policy: FairnessPolicy,
) -> list[Waiting]:
    """Waiting jobs in the order they would start: weighted fair queuing across accounts.

    Each account's jobs get virtual finish tags `(running_a + k + 1) / weight_a` for its k-th
    waiting job (oldest first), and jobs start in tag order (ties: arrival order). So an account
    with w times the weight gets w times the slots, and an account that already holds slots
    waits behind one that holds none: a newcomer's first job goes ahead of the 500th job of a
    busy account. The tags depend only on the current state, so the order is reproducible from
    the durable queue with no virtual clock to store.
    """
    by_account: dict[str, list[Waiting]] = {}
    for w in sorted(waiting, key=lambda w: w.seq):
        by_account.setdefault(w.account_id, []).append(w)
    tagged: list[tuple[float, int, Waiting]] = []
    for account_id, jobs in by_account.items():
        weight = policy.weight(account_id)
        base = in_flight_by_account.get(account_id, 0)
        for k, w in enumerate(jobs):
            tagged.append(((base + k + 1) / weight, w.seq, w))
    tagged.sort(key=lambda t: (t[0], t[1]))
    return [t[2] for t in tagged]


def choose_dispatches(
    waiting: Sequence[Waiting],
    in_flight_by_account: Mapping[str, int],
    capacity: int,
    policy: FairnessPolicy | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Which waiting jobs of one pool to dispatch now, in fair order, up to the free capacity
    and without taking any account past its concurrency limit. Jobs in backoff wait."""
    policy = policy or FairnessPolicy()
    busy = Counter(in_flight_by_account)
    free = capacity - sum(busy.values())
    chosen: list[str] = []
    if free <= 0:
        return chosen
    for w in fair_order(waiting, in_flight_by_account, policy):
        if len(chosen) >= free:
            break
        if w.ready_at is not None and now is not None and w.ready_at > now:
            continue
        if busy[w.account_id] >= policy.limit(w.account_id):
            continue
        busy[w.account_id] += 1
        chosen.append(w.job_id)
    return chosen


@dataclass(frozen=True)
class QueueStanding:
    job_id: str
    account_id: str
    position: int  # 1-based, in the fair order
    reason: str  # "capacity" | "concurrency_limit" | "no_workers"
    estimated_start_at: datetime


def queue_standings(
    waiting: Sequence[Waiting],
    in_flight_by_account: Mapping[str, int],
    capacity: int,
    policy: FairnessPolicy,
    now: datetime,
    mean_duration_s: float,
    workers_absent: bool = False,
) -> list[QueueStanding]:
    """Where every waiting job stands: its position in the fair order, why it waits, and an
    estimate of when it starts: `ceil(position / capacity)` rounds of the pool's moving-average
    job duration from now (no earlier than the end of its backoff). The reason is `no_workers`
    when the pool has no capacity or no worker takes its jobs (see `workers_absent`)."""
    standings = []
    for index, w in enumerate(fair_order(waiting, in_flight_by_account, policy), start=1):
        if capacity <= 0 or workers_absent:
            reason = "no_workers"
        elif in_flight_by_account.get(w.account_id, 0) >= policy.limit(w.account_id):
            reason = "concurrency_limit"
        else:
            reason = "capacity"
        rounds = math.ceil(index / capacity) if capacity > 0 else index
        eta = now + timedelta(seconds=rounds * max(mean_duration_s, 0.0))
        if w.ready_at is not None and w.ready_at > eta:
            eta = w.ready_at
        standings.append(QueueStanding(w.job_id, w.account_id, index, reason, eta))
    return standings


def workers_absent(
    oldest_unstarted_dispatch: datetime | None,
    started_in_flight: int,
    now: datetime,
    after_s: float,
) -> bool:
    """No worker is taking the pool's jobs: nothing it holds has started, and a job handed to it
    has waited longer than `after_s` for a worker to start it."""
    if started_in_flight > 0 or oldest_unstarted_dispatch is None:
        return False
    return (now - oldest_unstarted_dispatch).total_seconds() >= after_s


def queue_position(
    waiting: Sequence[Waiting],
    job_id: str,
    in_flight_by_account: Mapping[str, int] | None = None,
    policy: FairnessPolicy | None = None,
) -> int:
    ordered = fair_order(waiting, in_flight_by_account or {}, policy or FairnessPolicy())
    for index, w in enumerate(ordered, start=1):
        if w.job_id == job_id:
            return index
    raise KeyError(job_id)


def updated_mean(mean: float | None, sample: float, alpha: float) -> float:
    """Exponential moving average of job durations; the first sample sets it."""
    if mean is None:
        return sample
    return (1 - alpha) * mean + alpha * sample


# --- after an attempt -----------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0

    def backoff(self, attempt: int) -> timedelta:
        """The wait after failed attempt number `attempt` (1-based): base * 2^(attempt-1),
        capped."""
        return timedelta(
            seconds=min(self.backoff_base_s * 2 ** max(attempt - 1, 0), self.backoff_cap_s)
        )


@dataclass(frozen=True)
class Retry:
    at: datetime


@dataclass(frozen=True)
class GiveUp:
    error_code: str
    error_message: str


@dataclass(frozen=True)
class Cancel:
    pass


AttemptOutcome = Retry | GiveUp | Cancel


def after_failed_attempt(
    *,
    attempt: int,
    error_code: str,
    error_message: str,
    retryable: bool,
    cancel_requested: bool,
    deadline: datetime | None,
    now: datetime,
    policy: RetryPolicy,
) -> AttemptOutcome:
    """What follows a failed attempt: the worker stopped for a cancel (or a cancel is pending)
    → canceled; retryable with attempts left and time before the deadline → another attempt
    after backoff; otherwise the job fails with the attempt's code."""
    if error_code == "CANCELED" or cancel_requested:
        return Cancel()
    if retryable and attempt < policy.max_attempts:
        at = now + policy.backoff(attempt)
        if deadline is None or at < deadline:
            return Retry(at)
    message = error_message or "The job failed."
    if retryable and attempt >= policy.max_attempts:
        message = f"{message} (gave up after {attempt} attempts)"
    return GiveUp(error_code or "INFERENCE_ERROR", message)


# --- the timer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tracked:
    """A job the scheduler holds, as the timer sees it."""

    job_id: str
    status: str  # queued | dispatched | running | canceling
    deadline: datetime | None
    dispatched_at: datetime | None
    started_at: datetime | None
    last_seen_at: datetime | None  # last job.started / job.progress
    # Since when this instance watches the job (it got the job's partition then): a worker's
    # silence before that is the scheduler's own absence, not the worker's.
    watched_since: datetime | None = None


@dataclass(frozen=True)
class LivenessPolicy:
    # A dispatched job with no job.started within this is lost with its worker.
    start_timeout_s: float = 120.0
    # A running job with no job.started/job.progress within this is lost with its worker.
    heartbeat_timeout_s: float = 300.0


def past_deadline(job: Tracked, now: datetime, grace_s: float = 0.0) -> bool:
    """Past the deadline, and for a job a worker holds (dispatched, running, canceling) also
    past `grace_s` after it (and after this instance began to watch the job): the worker
    answers TIMEOUT at the deadline itself, and a job completed by its worker must not also be
    failed by the scheduler (billing, the gateway and the notifier would each keep whichever
    end they saw first)."""
    if job.deadline is None:
        return False
    if job.status in ACTIVE_STATUSES:
        # the worker's answer may wait in the topic behind a scheduler back from an outage
        since = max(job.deadline, job.watched_since or job.deadline)
        return (now - since).total_seconds() >= grace_s
    return now >= job.deadline


def lost_worker(job: Tracked, now: datetime, policy: LivenessPolicy) -> bool:
    """Dispatched and never started within `start_timeout_s`, or started (running or
    canceling) and silent for `heartbeat_timeout_s`, both counted from no earlier than when
    this instance began to watch it: a scheduler back from an outage (or given the partition
    by a rebalance) reads the workers' backlog of job.started and job.progress after its first
    tick, and must not take its own absence for theirs."""
    if job.status not in ACTIVE_STATUSES:
        return False
    if job.started_at is None:
        since = job.dispatched_at
        limit = policy.start_timeout_s
    else:
        since = job.last_seen_at or job.started_at
        limit = policy.heartbeat_timeout_s
    if since is not None and job.watched_since is not None:
        since = max(since, job.watched_since)
    return since is not None and (now - since).total_seconds() >= limit
