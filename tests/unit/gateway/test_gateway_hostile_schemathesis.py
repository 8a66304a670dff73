"""Schemathesis against the gateway app alone (no Kafka: the hostile_support harness), served by
uvicorn on a free local port. Two runs:

- the bounded one, in every test run (10 s): the fast twin of the live run in
  tests/e2e/test_schemathesis.py, same checks, every operation of the served document, and the
  login route too, since this gateway is nobody else's;
- the large one, only when KILN_FUZZ_EXAMPLES asks for it (cases per operation and phase, e.g.
  500): with rate limits lifted so that the cases reach the routes instead of a 429, ids that
  exist for half of the path parameters, and both the sandbox and the live key. Each run prints
  how many requests were sent and how many got a 5xx (counted by schemathesis and, in the
  server, by `StatusCounter`); any 5xx fails it. KILN_FUZZ_MAX_TIME_S bounds each run (default:
  no bound but the examples; the test gives up after KILN_FUZZ_TIMEOUT_S, default 4 h).

    KILN_FUZZ_EXAMPLES=500 uv run pytest -s -m fuzz \
        tests/unit/gateway/test_gateway_hostile_schemathesis.py
"""

import contextlib
import os
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.schemathesis_support import own_account, run_schemathesis, tally, write_config
from tests.unit.gateway.hostile_support import ADMIN_TOKEN, ServedGateway

MAX_TIME_S = int(os.environ.get("KILN_SCHEMATHESIS_UNIT_MAX_TIME_S", "10"))
FUZZ_EXAMPLES = int(os.environ.get("KILN_FUZZ_EXAMPLES", "0"))
FUZZ_MAX_TIME_S = int(os.environ.get("KILN_FUZZ_MAX_TIME_S", "0")) or None
FUZZ_TIMEOUT_S = int(os.environ.get("KILN_FUZZ_TIMEOUT_S", str(4 * 3600)))
LIFTED_LIMITS = {
    f"rate_limit_{kind}_{route}": 10**9
    for kind in ("live", "sandbox")
    for route in ("create", "read")
}


def test_the_app_keeps_to_its_openapi_document(tmp_path: Path) -> None:
    served = ServedGateway(tmp_path, rate_limit_live_create=20, rate_limit_live_read=200)
    served.start()
    try:
        assert served.wait_started(30), f"the gateway did not start: {served.error!r}"
        credentials = own_account(f"{served.origin}/api/v1", ADMIN_TOKEN)
        config = tmp_path / "schemathesis.toml"
        # The sandbox key: it may also send `sandbox` options (the live run tries both keys).
        write_config(config, credentials, "sandbox")
        result = run_schemathesis(f"{served.origin}/openapi.json", config, tmp_path, MAX_TIME_S)
        output = result.stdout + result.stderr
        print(output[-20_000:])
        print("schemathesis:", tally(tmp_path / "report").summary())
        assert result.returncode == 0, f"schemathesis found problems:\n{output[-8000:]}"
    finally:
        served.stop()


def end_jobs(database_url: str, job_ids: list[str]) -> None:
    """Give the jobs an end, as the pipeline would (there is none here): a job's event stream
    then answers and closes instead of waiting for an end until the request times out."""
    path = database_url.split(":///", 1)[1]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for job_id, status in zip(job_ids, ("failed", "canceled"), strict=False):
            db.execute(
                "UPDATE jobs SET status = ?, error_code = ?, error_message = ?, "
                "completed_at = created_at, cost_millicredits = 0 WHERE id = ?",
                (
                    status,
                    "INFERENCE_ERROR" if status == "failed" else None,
                    "The model failed." if status == "failed" else None,
                    job_id,
                ),
            )


def known_ids(api_url: str, credentials: dict[str, str]) -> dict[str, list[str]]:
    """Ids that exist, made through the API: jobs and a webhook endpoint of the fuzzing
    account, a spare key of it, and another account for the operator routes (so that
    suspending it does not lock the run out)."""
    admin = {"Authorization": f"Bearer {credentials['admin']}"}
    session = {"Authorization": f"Bearer {credentials['session']}"}
    with httpx.Client(base_url=api_url, timeout=30) as http:
        jobs = []
        for kind in ("sandbox", "live"):
            job = http.post(
                "/jobs",
                json={"model": "kiln/prompt-to-image", "input": {"prompt": "a lighthouse"}},
                headers={"Authorization": f"Bearer {credentials[kind]}"},
            )
            assert job.status_code == 202, job.text
            jobs.append(job.json()["data"]["id"])
        endpoint = http.post(
            "/webhooks",
            json={"url": "https://127.0.0.1:9/kiln-hook"},
            headers={"Authorization": f"Bearer {credentials['sandbox']}"},
        )
        assert endpoint.status_code == 201, endpoint.text
        spare = http.post("/keys", json={"name": "spare"}, headers=session)
        assert spare.status_code == 201, spare.text
        bystander = http.post(
            "/admin/accounts",
            json={"email": "bystander@example.com", "password": "a long passphrase"},
            headers=admin,
        )
        assert bystander.status_code == 201, bystander.text
        models = [
            m["id"]
            for m in http.get(
                "/models", headers={"Authorization": f"Bearer {credentials['sandbox']}"}
            ).json()["data"]
        ]
    return {
        "job_id": jobs,
        "endpoint_id": [endpoint.json()["data"]["id"]],
        "key_id": [spare.json()["data"]["id"]],
        "account_id": [bystander.json()["data"]["id"]],
        "owner": sorted({m.split("/", 1)[0] for m in models}),
        "name": sorted({m.split("/", 1)[1] for m in models}),
    }


@pytest.mark.fuzz
@pytest.mark.skipif(not FUZZ_EXAMPLES, reason="KILN_FUZZ_EXAMPLES=N runs the large fuzzing")
@pytest.mark.timeout(FUZZ_TIMEOUT_S + 300)
@pytest.mark.parametrize("api_key", ["sandbox", "live"])
def test_a_large_fuzzing_run_finds_no_5xx(tmp_path: Path, api_key: str) -> None:
    served = ServedGateway(tmp_path, allow_loopback_urls=True, **LIFTED_LIMITS)
    served.start()
    try:
        assert served.wait_started(30), f"the gateway did not start: {served.error!r}"
        api_url = f"{served.origin}/api/v1"
        credentials = own_account(api_url, ADMIN_TOKEN)
        config = tmp_path / "schemathesis.toml"
        known = known_ids(api_url, credentials)
        assert served.gateway is not None
        end_jobs(served.gateway.settings.database_url, known["job_id"])
        write_config(config, credentials, api_key, known)
        result = run_schemathesis(
            f"{served.origin}/openapi.json",
            config,
            tmp_path,
            FUZZ_MAX_TIME_S,
            max_examples=FUZZ_EXAMPLES,
            timeout_s=FUZZ_TIMEOUT_S,
        )
        output = result.stdout + result.stderr
        print(output[-20_000:])
        sent = tally(tmp_path / "report")
        assert served.counter is not None
        server_5xx = sum(n for status, n in served.counter.statuses.items() if status >= 500)
        print(f"schemathesis ({api_key} key, {FUZZ_EXAMPLES} examples): {sent.summary()}")
        print(f"the server answered {sum(served.counter.statuses.values())}, {server_5xx} 5xx")
        for line in served.counter.server_errors[:50]:
            print("  5xx:", line)
        assert server_5xx == 0 and not sent.server_errors, served.counter.server_errors[:20]
        assert result.returncode == 0, f"schemathesis found problems:\n{output[-8000:]}"
    finally:
        served.stop()
