"""Several instances of a service on the local stack (real Kafka, real Triton, the services as
processes), on a stack of its own: two inference workers and two billing processes, sandbox jobs
over HTTP that both workers run, `processes()` for the footprint bench, `scale` and `down`."""

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from kiln_contracts import TOPICS
from tests.stack_support import LocalStack, StackError, StackPorts

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

JOBS = 24
MAX_ACCOUNTS = 200  # 40 missed one of six partitions once in CI (p ≈ 0.4 %)
STARTED = time.monotonic()


def log(message: str) -> None:
    """Progress with the time since the module loaded (shown when the test fails, or with -s)."""
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def describe_group(bootstrap: str, group: str) -> tuple[str, int]:
    """(state, number of members) of a Kafka consumer group."""

    async def describe() -> tuple[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            response = (await admin.describe_consumer_groups([group]))[0]
        finally:
            await admin.close()
        # DescribeGroupsResponse: (error_code, group_id, state, protocol_type, protocol, members)
        found = response.groups[0]
        return str(found[2]), len(found[5])

    return asyncio.run(describe())


def wait_group(bootstrap: str, group: str, members: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    seen: tuple[str, int] = ("", 0)
    while time.monotonic() < deadline:
        seen = describe_group(bootstrap, group)
        if seen == ("Stable", members):
            return
        time.sleep(0.5)
    raise AssertionError(f"consumer group {group}: {seen}, not Stable with {members} members")


def partition_of(account_id: str, partitions: int) -> int:
    """The partition of the account's events: the relays key every event by account id."""
    every = list(range(partitions))
    partition: int = DefaultPartitioner()(account_id.encode(), every, every)
    return partition


def completed_attempts(url: str) -> float:
    """kiln_inference_attempts_total{outcome="completed"} of one inference instance."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kiln_inference_attempts_total{") and 'outcome="completed"' in line
    )


def wait_final(api: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}").json()["data"]
        if job["status"] in ("completed", "failed", "canceled"):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def submit(api: httpx.Client, prompt: str, delay_s: float) -> str:
    """A sandbox image job; its id."""
    created = api.post(
        "/jobs",
        json={
            "model": "kiln/prompt-to-image",
            "input": {"prompt": prompt},
            "sandbox": {"delay_s": delay_s},
        },
    )
    assert created.status_code == 202, created.text
    job_id: str = created.json()["data"]["id"]
    return job_id


def wait_status(api: httpx.Client, job_id: str, wanted: set[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = api.get(f"/jobs/{job_id}").json()["data"]["status"]
        if status in wanted:
            return
        time.sleep(0.2)
    raise AssertionError(f"{job_id} is {status}, not {wanted}, after {timeout_s} s")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def sandbox_keys(env: dict[str, str], partitions: int) -> list[str]:
    """Sandbox keys of fresh accounts whose events cover every partition of job.dispatched
    (one account per partition), so that each inference worker owns the partition of at
    least one of them whatever the assignment."""
    headers = {"Authorization": f"Bearer {env['KILN_ADMIN_TOKEN']}"}
    keys: dict[int, str] = {}
    with httpx.Client(base_url=env["KILN_API_URL"], headers=headers, timeout=30) as admin:
        for n in range(MAX_ACCOUNTS):
            created = admin.post(
                "/admin/accounts",
                json={"email": f"scale-{n}-{time.time_ns()}@example.com", "password": "x" * 16},
            )
            assert created.status_code == 201, created.text
            account_id = created.json()["data"]["id"]
            partition = partition_of(account_id, partitions)
            if partition in keys:
                continue
            key = admin.post(
                f"/admin/accounts/{account_id}/keys", json={"name": "scale", "sandbox": True}
            )
            assert key.status_code == 201, key.text
            keys[partition] = key.json()["data"]["secret"]
            if len(keys) == partitions:
                log(f"{n + 1} accounts made to cover the {partitions} partitions")
                return list(keys.values())
    raise AssertionError(f"{MAX_ACCOUNTS} accounts covered only partitions {sorted(keys)}")


def test_two_inference_workers_and_two_billing_processes_share_the_work() -> None:
    # Not pytest's tmp_path: a busy machine prunes old pytest folders under a running stack.
    root = Path(tempfile.mkdtemp(prefix="kiln-instances-stack-"))
    local = LocalStack(
        root=root,
        ports=StackPorts.free(),
        sandbox_delay_ms=0,
        instances={"inference": 2, "billing": 2},
    )
    pids: set[int] = set()
    try:
        log(f"up: {root}")
        env = dict(local.up())
        log("stack up")

        # Each instance runs, is ready, and has its own process, port and log.
        status = {item.name: item for item in local.status()}
        for name in ("inference", "inference-2", "billing", "billing-2"):
            assert status[name].running and status[name].ready, status[name]
            assert local.log_file(name).exists()
        assert status["inference"].pid != status["inference-2"].pid
        assert status["billing"].pid != status["billing-2"].pid
        assert len({item.address for item in status.values()}) == len(status)
        assert local.service_url("inference", 2) == status["inference-2"].address
        # Inference workers keep their own database and worker id; billing shares its own.
        assert (local.data_dir / "inference-2.db").exists()
        assert not (local.data_dir / "billing-2.db").exists()
        environ = Path(f"/proc/{status['inference-2'].pid}/environ").read_bytes().split(b"\0")
        assert b"KILN_WORKER_ID=inference-2" in environ

        processes = local.processes()
        expected = {"kafka", "triton", "gateway", "scheduler", "notifier"}
        expected |= {"inference", "inference-2", "billing", "billing-2"}
        assert set(processes) == expected
        assert all(processes[name] for name in processes)
        assert len(processes["triton"]) > 1  # PyTriton, tritonserver, its Python stubs
        every = [pid for group in processes.values() for pid in group]
        assert len(every) == len(set(every))  # no process in two groups
        assert processes["inference"][0] == status["inference"].pid  # the leader first
        pids = set(every)

        # Both billing processes and both inference workers are members of their groups.
        wait_group(local.kafka_bootstrap, "billing", 2)
        wait_group(local.kafka_bootstrap, "inference", 2)
        log("billing and inference groups stable with 2 members")

        partitions = TOPICS["job.dispatched"].partitions
        keys = sandbox_keys(env, partitions)
        before = {i: completed_attempts(local.service_url("inference", i)) for i in (1, 2)}
        clients = [
            httpx.Client(
                base_url=env["KILN_API_URL"], headers={"Authorization": f"Bearer {k}"}, timeout=30
            )
            for k in keys
        ]
        try:
            submitted: list[tuple[httpx.Client, str]] = []
            for n in range(JOBS):
                api = clients[n % len(clients)]
                submitted.append((api, submit(api, f"scaled {n}", delay_s=0)))
            finals = [wait_final(api, job_id) for api, job_id in submitted]
            assert [job["status"] for job in finals] == ["completed"] * JOBS, finals
            log(f"{JOBS} jobs completed")

            ran = {
                i: completed_attempts(local.service_url("inference", i)) - before[i] for i in (1, 2)
            }
            assert ran[1] > 0 and ran[2] > 0, ran
            assert ran[1] + ran[2] >= JOBS, ran
            log(f"attempts completed by inference-1, inference-2: {ran[1]:.0f}, {ran[2]:.0f}")

            # Back to one worker: the second stops, the first gets its partitions.
            started, stopped = local.scale("inference", 1)
            log("scaled inference to 1")
            assert (started, stopped) == ([], ["inference-2"])
            assert "inference-2" not in local.processes()
            assert [item.name for item in local.status() if item.name.startswith("inference")] == [
                "inference"
            ]
            assert local.service_port("inference", 2) is not None  # kept for a later scale-up
            wait_group(local.kafka_bootstrap, "inference", 1)
            api = clients[0]
            assert wait_final(api, submit(api, "after scaling down", 0))["status"] == "completed"
            log("a job completed on the one worker left")

            # Partitions move away from a worker while its attempts run (scaling up): each
            # job's cancel reaches whichever worker reads its partition now, and the worker
            # that runs the attempt still ends it.
            # one account per partition, all on the one worker
            long_jobs = [(api, submit(api, "canceled after a move", 300)) for api in clients]
            for api, job_id in long_jobs:
                wait_status(api, job_id, {"running"})
            started, stopped = local.scale("inference", 2)
            assert (started, stopped) == (["inference-2"], [])
            wait_group(local.kafka_bootstrap, "inference", 2)
            log("scaled inference to 2 with the long jobs running on inference-1")
            for api, job_id in long_jobs:
                canceled = api.post(f"/jobs/{job_id}/cancel")
                assert canceled.status_code in (200, 202), canceled.text
            finals = [wait_final(api, job_id, timeout_s=60) for api, job_id in long_jobs]
            assert [job["status"] for job in finals] == ["canceled"] * len(long_jobs), finals
            log(f"{len(long_jobs)} running jobs canceled, their partitions moved or not")
        finally:
            for api in clients:
                api.close()

        with pytest.raises(StackError, match="unknown service"):
            local.scale("nonsense", 2)
        with pytest.raises(StackError, match=">= 1"):
            local.scale("inference", 0)
    finally:
        stopped_names = local.down()
        log("down")
        shutil.rmtree(root, ignore_errors=True)
    assert {"kafka", "triton", "billing-2", "inference"} <= set(stopped_names)
    assert local.processes() == {}
    assert [pid for pid in pids if alive(pid)] == []
