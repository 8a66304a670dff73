"""Consumer libraries (issue item 1): faust-streaming's `take_events` against aiokafka's
`getmany`, reading the same topic of real Kiln envelopes in one run (docs/architecture.md,
"Choosing the consumer library").

Method, per repeat: N `job.completed` envelopes (as inference emits them) are produced to a topic
of six partitions made for the run on the bench stack's broker. Each library then reads all N in
a process of its own, a fresh consumer group each, decoding every envelope (what the runtime's
decode step does) and nothing else; the process reports its CPU time and wall time from the
first message to the Nth. faust reads with `stream.take_events(batch, within)` in an agent, as
the issue names it (faust's batching); aiokafka with `getmany` in a loop, as the runtime does.
Both commit offsets as they would in a service (faust: its own commit interval; aiokafka: one
commit per batch).

    uv run python -m bench.consumer_libraries aiokafka BOOTSTRAP TOPIC N    # one side alone
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.context import BenchContext
from bench.results import Measurement

BENCH = "consumers"
COMPARISON = "faust take_events"
BATCH = 500
WITHIN_S = 0.05


def _envelope(i: int) -> bytes:
    from kiln_contracts import encode, new_event
    from kiln_contracts.v1 import common_pb2, jobs_pb2

    spec = common_pb2.JobSpec(model="kiln/prompt-to-image", input_json='{"prompt":"x"}')
    message = jobs_pb2.JobCompleted(spec=spec, price_millicredits=5000, attempt=1)
    return encode(
        new_event(
            "job.completed", message, account_id=f"acct_{i % 12}", job_id=f"job_{i:032x}"
        )
    )


async def produce(bootstrap: str, topic: str, count: int) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=_envelope(i), key=f"acct_{i % 12}".encode())
            for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# --- the two sides, each run in a process of its own --------------------------------------


async def read_with_aiokafka(bootstrap: str, topic: str, count: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer

    from kiln_contracts import decode

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-aiokafka-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=BATCH,
    )
    await consumer.start()
    try:
        seen = 0
        started_wall = started_cpu = 0.0
        while seen < count:
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            if batches and not seen:
                started_wall, started_cpu = time.perf_counter(), time.process_time()
            for messages in batches.values():
                for message in messages:
                    decode(message.value or b"")
                    seen += 1
            if batches:
                await consumer.commit()
        return {
            "seconds": time.perf_counter() - started_wall,
            "cpu_s": time.process_time() - started_cpu,
            "messages": seen,
        }
    finally:
        await consumer.stop()


def read_with_faust(bootstrap: str, topic: str, count: int) -> None:
    import faust

    from kiln_contracts import decode

    app = faust.App(
        f"bench-faust-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        datadir=f"/tmp/bench-faust-{uuid.uuid4().hex[:8]}",
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes)
    state: dict[str, Any] = {"seen": 0}

    @app.agent(source)
    async def consume(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            if not state["seen"]:
                state["wall"], state["cpu"] = time.perf_counter(), time.process_time()
            for event in events:
                decode(event.value)
                state["seen"] += 1
            if state["seen"] >= count:
                # faust's worker redirects stdout into its logger: write the numbers to the
                # original descriptor.
                os.write(
                    1,
                    json.dumps(
                        {
                            "seconds": time.perf_counter() - state["wall"],
                            "cpu_s": time.process_time() - state["cpu"],
                            "messages": state["seen"],
                        }
                    ).encode()
                    + b"\n",
                )
                os._exit(0)  # faust's worker has no "stop after N"; the numbers are out

    _ = consume
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.execute_from_commandline()


def side(library: str, bootstrap: str, topic: str, count: int, timeout_s: float) -> dict[str, Any]:
    """Run one library's reader in a process of its own; what it reported."""
    argv = [sys.executable, "-m", "bench.consumer_libraries", library, bootstrap, topic, str(count)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"{library} reader reported nothing: {done.stderr[-2000:]}")


def run(ctx: BenchContext) -> None:
    stack = ctx.kiln()
    count: int = ctx.size(2_000, 50_000)
    timeout_s: float = ctx.size(120.0, 600.0)
    bootstrap = stack.local.kafka_bootstrap
    rates: dict[str, list[float]] = {"aiokafka": [], "faust": []}
    cpu_us: dict[str, list[float]] = {"aiokafka": [], "faust": []}
    for repeat in range(ctx.repeats):
        topic = f"bench.consumers.{uuid.uuid4().hex[:8]}"
        asyncio.run(produce(bootstrap, topic, count))
        order = ("aiokafka", "faust") if repeat % 2 == 0 else ("faust", "aiokafka")
        for library in order:
            got = side(library, bootstrap, topic, count, timeout_s)
            rates[library].append(got["messages"] / max(got["seconds"], 1e-9))
            cpu_us[library].append(1e6 * got["cpu_s"] / max(got["messages"], 1))
            ctx.echo(
                f"consumers: {library}: {got['messages']} in {got['seconds']:.2f} s, "
                f"{cpu_us[library][-1]:.1f} µs CPU each"
            )
    ctx.report.add(
        [
            Measurement(
                BENCH, "messages/s read and decoded (one process)", "msg/s", rates["aiokafka"],
                COMPARISON, rates["faust"], better="higher",
                note=f"{count} job.completed envelopes, 6 partitions, getmany({BATCH})",
            ),
            Measurement(
                BENCH, "CPU per message read and decoded", "µs", cpu_us["aiokafka"],
                COMPARISON, cpu_us["faust"], better="lower",
            ),
        ]
    )


if __name__ == "__main__":
    library, bootstrap_arg, topic_arg, count_arg = sys.argv[1:5]
    if library == "aiokafka":
        print(json.dumps(asyncio.run(read_with_aiokafka(bootstrap_arg, topic_arg, int(count_arg)))))
    else:
        read_with_faust(bootstrap_arg, topic_arg, int(count_arg))
