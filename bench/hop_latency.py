"""A working tool, not a bench of the table: where one job's time goes between the services
when nothing else runs, step by step, for finding what a change did to the pipeline's latency.

    PYTHONPATH=. uv run python -m bench.hop_latency --jobs 30 --gap 0.3

It starts the bench stack (bench/kiln_stack.py), submits zero-delay sandbox jobs one at a time
(`--gap` seconds apart, after a few not measured), then reads every event of those jobs back from
Kafka. Each event gives two times: when its service decided it (the envelope's `occurred_at`,
taken in the handler, inside the batch's transaction) and when it was handed to the producer
after the commit (the record's timestamp, set by the producer at `send`). Printed: the p50 and
the lowest of each, in ms after the job's POST left the client, with the POST's answer and the
webhook's arrival among them. The gap between one event's `send` and the next event's
`decided` is a Kafka hop plus the consuming batch up to its handler; `decided` to `send` is the
rest of that batch, its commit and the hand-over.

All on one machine's clock (the services', Kafka's and this process's), so no skew to correct.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict

import httpx
from aiokafka import AIOKafkaConsumer

from bench.kiln_stack import KilnBenchStack, sandbox_job, tool_stack
from kiln_contracts import decode, topic_of

# A job's events on the happy path, in the order they are made.
EVENT_TYPES = (
    "job.submitted",
    "credits.reserved",
    "job.dispatched",
    "job.started",
    "job.progress",
    "job.completed",
    "credits.captured",
    "webhook.delivered",
)
WARMUP_JOBS = 5


class Steps:
    """For each step, the ms after its job's POST left, one value per job."""

    def __init__(self, sent: dict[str, float]) -> None:
        self.sent = sent  # job id → when its POST left (time.time())
        self.ms: dict[str, list[float]] = defaultdict(list)

    def add(self, step: str, job_id: str, at: float) -> None:
        if job_id in self.sent:
            self.ms[step].append((at - self.sent[job_id]) * 1000)

    def table(self) -> list[str]:
        ordered = sorted(self.ms.items(), key=lambda item: statistics.median(item[1]))
        return [
            f"  {step:28s} p50 {statistics.median(values):7.1f}   lowest {min(values):7.1f}"
            for step, values in ordered
        ]


def submit(
    stack: KilnBenchStack, body: dict[str, object], jobs: int, gap_s: float
) -> tuple[dict[str, float], dict[str, float]]:
    """POST the jobs one at a time: (job id → when its POST left, job id → when it was
    answered), for the measured ones."""
    key = stack.accounts[0].sandbox_key
    left_at: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    with httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {key}"}) as client:
        for index in range(WARMUP_JOBS + jobs):
            left = time.time()
            answer = client.post(stack.jobs_url, json=body)
            answered = time.time()
            answer.raise_for_status()
            if index >= WARMUP_JOBS:
                job_id = str(answer.json()["data"]["id"])
                left_at[job_id], answered_at[job_id] = left, answered
            time.sleep(gap_s)
    return left_at, answered_at


async def read_events(bootstrap: str, steps: Steps, wait_s: float) -> None:
    """Every event of the measured jobs, from the start of each topic: when it was decided
    and when it was sent."""
    consumer = AIOKafkaConsumer(
        *sorted({topic_of(t) for t in EVENT_TYPES}),
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            fetched = await consumer.getmany(timeout_ms=500)
            for records in fetched.values():
                for record in records:
                    event = decode(record.value)
                    if event.type not in EVENT_TYPES:
                        continue
                    decided = event.envelope.occurred_at
                    at = decided.seconds + decided.nanos / 1e9
                    steps.add(f"{event.type} decided", event.job_id, at)
                    steps.add(f"{event.type} sent", event.job_id, record.timestamp / 1000)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="where one job's time goes, step by step")
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between two POSTs")
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    with tool_stack(args.workdir, "kiln-hops-") as (stack, receiver):
        left_at, answered_at = submit(stack, sandbox_job(0.0, receiver.url), args.jobs, args.gap)
        steps = Steps(left_at)
        for job_id, at in answered_at.items():
            steps.add("POST answered", job_id, at)
        offset = time.time() - time.monotonic()
        for job_id, arrival in receiver.wait_for(left_at, timeout_s=60.0).items():
            steps.add("webhook arrived", job_id, arrival.at + offset)
        asyncio.run(read_events(f"127.0.0.1:{stack.local.ports.kafka}", steps, wait_s=8.0))
        print(f"{len(left_at)} zero-delay sandbox jobs, one every {args.gap} s; ms after the POST:")
        print("\n".join(steps.table()))


if __name__ == "__main__":
    main()
