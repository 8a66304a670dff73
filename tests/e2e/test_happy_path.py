"""The happy path of docs/architecture.md ("Job lifecycle") over HTTP, for a live key and a sandbox
key, on the real stack: on SQLite (conftest.local_stack) and on PostgreSQL (conftest.postgres_stack,
whose services are handed `postgresql://` URLs of a cluster of its own)."""

import base64
import io
import time
import wave
from typing import Any

import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook

from kiln_crypto import ResultEncryption, decrypt_bytes
from kiln_modelhost.reference_models.image import render_image
from tests.e2e.conftest import WebhookReceiver
from tests.stack_support import DATABASES, LocalStack, RunningStack, load_env_file

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=DATABASES)
def stack(request: pytest.FixtureRequest) -> dict[str, str]:
    """demo.env of the shared stack on SQLite, then of the one on PostgreSQL."""
    if request.param == "postgresql":
        running: RunningStack = request.getfixturevalue("postgres_stack")
        return running.env
    local: LocalStack = request.getfixturevalue("local_stack")
    env: dict[str, str] = load_env_file(local.root / "demo.env")
    return env


def client(env: dict[str, str], key: str) -> httpx.Client:
    return httpx.Client(
        base_url=env["KILN_API_URL"], headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def admin(env: dict[str, str]) -> httpx.Client:
    return client(env, env["KILN_ADMIN_TOKEN"])


def wait_for_final(api: httpx.Client, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()["data"]
        if job["status"] in ("completed", "failed", "canceled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def download_and_decrypt(api: httpx.Client, job: dict[str, Any], secret: str) -> bytes:
    result = job["result"]
    blob = httpx.get(result["url"], timeout=30)  # no API key: the URL is the credential
    assert blob.status_code == 200
    assert len(blob.content) == result["size_bytes"]
    encryption = ResultEncryption.from_json(result["encryption"])
    return decrypt_bytes(blob.content, secret=secret, job_id=job["id"], encryption=encryption)


def balance(api: httpx.Client) -> dict[str, str]:
    data = api.get("/usage").json()["data"]
    return {"balance": data["balance"], "reserved": data["reserved"]}


def wait_for_webhook(receiver: WebhookReceiver, job_id: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = receiver.for_job(job_id)
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"no webhook for {job_id}")


def check_signed_webhook(api: httpx.Client, receiver: WebhookReceiver, job_id: str) -> None:
    secret = api.get("/webhooks/default-secret").json()["data"]["secret"]
    deliveries = wait_for_webhook(receiver, job_id)
    assert len(deliveries) == 1
    delivery = deliveries[0]
    payload = Webhook(secret).verify(delivery.body, delivery.headers)
    assert payload["type"] == "job.completed"
    assert payload["data"]["status"] == "completed"
    assert delivery.headers["webhook-signature"].startswith("v1,")
    forged = Webhook(base64.b64encode(b"x" * 32).decode())
    with pytest.raises(Exception):  # noqa: B017 (the library raises its own base class)
        forged.verify(delivery.body, delivery.headers)


def test_live_image_job_is_charged_and_decrypts_to_the_real_render(
    stack: dict[str, str], webhook_receiver: WebhookReceiver
) -> None:
    secret = stack["KILN_DEMO_LIVE_KEY"]
    with client(stack, secret) as api:
        before = balance(api)
        request = {"prompt": "a lighthouse in a storm", "seed": 7, "width": 128, "height": 96}
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/prompt-to-image",
                "input": request,
                "webhook_url": webhook_receiver.url,
                "metadata": {"order": "42"},
            },
        )
        assert created.status_code == 202, created.text
        assert created.headers["x-request-id"]
        job = created.json()["data"]
        assert job["status"] in ("pending", "queued")
        done = wait_for_final(api, job["id"])
        assert done["status"] == "completed", done
        assert done["cost"] == "5"
        assert done["metadata"] == {"order": "42"}
        assert done["result"]["encryption"]["scheme"] == "kiln-hpke-v1"
        png = download_and_decrypt(api, done, secret)
        assert png == render_image("a lighthouse in a storm", 7, 128, 96)
        assert Image.open(io.BytesIO(png)).size == (128, 96)
        # The key's secret opens it; a different secret does not.
        with pytest.raises(ValueError):
            decrypt_bytes(
                httpx.get(done["result"]["url"]).content,
                secret=stack["KILN_DEMO_SANDBOX_KEY"],
                job_id=done["id"],
                encryption=ResultEncryption.from_json(done["result"]["encryption"]),
            )
        check_signed_webhook(api, webhook_receiver, done["id"])
        # Billing's charge reaches the gateway's read model after the job's end (two hops).
        deadline = time.monotonic() + 60
        while balance(api)["reserved"] != before["reserved"] and time.monotonic() < deadline:
            time.sleep(0.2)
        after = balance(api)
        assert float(before["balance"]) - float(after["balance"]) == 5
        assert after["reserved"] == before["reserved"]


def test_live_speech_job_returns_a_real_wav(stack: dict[str, str]) -> None:
    secret = stack["KILN_DEMO_LIVE_KEY"]
    with client(stack, secret) as api:
        created = api.post(
            "/jobs", json={"model": "kiln/text-to-speech", "input": {"text": "Hello from Kiln."}}
        )
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"])
        assert done["status"] == "completed", done
        audio = download_and_decrypt(api, done, secret)
        with wave.open(io.BytesIO(audio)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        assert 0.5 < seconds < 5


def test_sandbox_job_runs_the_whole_pipeline_for_free(
    stack: dict[str, str], webhook_receiver: WebhookReceiver
) -> None:
    secret = stack["KILN_DEMO_SANDBOX_KEY"]
    with client(stack, secret) as api:
        before = balance(api)
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/prompt-to-image",
                "input": {"prompt": "anything"},
                "webhook_url": webhook_receiver.url,
            },
        )
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"])
        assert done["status"] == "completed", done
        assert done["sandbox"] is True
        assert done["cost"] == "0"
        png = download_and_decrypt(api, done, secret)
        assert Image.open(io.BytesIO(png)).format == "PNG"
        check_signed_webhook(api, webhook_receiver, done["id"])
        assert balance(api) == before


def test_not_enough_credits_is_402_and_nothing_is_queued(stack: dict[str, str]) -> None:
    with admin(stack) as operator:
        account = operator.post(
            "/admin/accounts",
            json={"email": f"poor-{time.time_ns()}@example.com", "password": "correct horse"},
        ).json()["data"]
        operator.post(f"/admin/accounts/{account['id']}/credits", json={"amount": "1"})
        key = operator.post(
            f"/admin/accounts/{account['id']}/keys", json={"name": "poor", "sandbox": False}
        ).json()["data"]["secret"]
    with client(stack, key) as api:
        refused = api.post(
            "/jobs", json={"model": "kiln/prompt-to-image", "input": {"prompt": "too dear"}}
        )
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["code"] == "INSUFFICIENT_CREDITS"
        jobs = api.get("/jobs").json()["data"]
        assert [j["status"] for j in jobs] == ["failed"]
        assert balance(api) == {"balance": "1", "reserved": "0"}


def test_unknown_model_and_bad_input_name_the_field(stack: dict[str, str]) -> None:
    with client(stack, stack["KILN_DEMO_LIVE_KEY"]) as api:
        unknown = api.post("/jobs", json={"model": "kiln/nope", "input": {}})
        assert unknown.status_code == 422
        assert unknown.json()["error"]["code"] == "VALIDATION_ERROR"
        assert unknown.json()["error"]["details"][0]["field"] == "model"
        bad = api.post(
            "/jobs", json={"model": "kiln/prompt-to-image", "input": {"prompt": "x", "seed": -1}}
        )
        assert bad.status_code == 422
        assert [d["field"] for d in bad.json()["error"]["details"]] == ["input.seed"]
