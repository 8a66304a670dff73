"""Sessions, keys and limits on the whole running stack: a key made with a session token runs
a job whose result only its secret decrypts; rotation and revocation; kiln-admin over HTTP."""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln_crypto import ResultEncryption, decrypt_bytes

pytestmark = pytest.mark.e2e


def api(env: dict[str, str], token: str) -> httpx.Client:
    return httpx.Client(
        base_url=env["KILN_API_URL"], headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def finished_job(client: httpx.Client, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()["data"]
        if job["status"] in ("completed", "failed", "canceled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def decrypted(job: dict[str, Any], secret: str) -> bytes:
    result = job["result"]
    blob = httpx.get(result["url"], timeout=30).content
    encryption = ResultEncryption.from_json(result["encryption"])
    return decrypt_bytes(blob, secret=secret, job_id=job["id"], encryption=encryption)


def test_a_session_key_runs_decrypts_rotates_and_revokes(stack: dict[str, str]) -> None:
    anonymous = httpx.Client(base_url=stack["KILN_API_URL"], timeout=30)
    login = anonymous.post(
        "/auth/token",
        json={"email": stack["KILN_DEMO_EMAIL"], "password": stack["KILN_DEMO_PASSWORD"]},
    )
    assert login.status_code == 200, login.text
    session = api(stack, login.json()["data"]["token"])

    made = session.post("/keys", json={"name": "e2e", "sandbox": True})
    assert made.status_code == 201, made.text
    old = made.json()["data"]
    keyed = api(stack, old["secret"])
    models = keyed.get("/models")
    assert models.status_code == 200
    assert models.headers["X-RateLimit-Limit"] == "1000"  # sandbox reads, per docs/architecture.md
    assert int(models.headers["X-RateLimit-Remaining"]) <= 999

    submitted = keyed.post(
        "/jobs",
        json={"model": "kiln/text-to-speech", "input": {"text": "hello"}},
    )
    assert submitted.status_code == 202, submitted.text
    assert submitted.headers["X-RateLimit-Limit"] == "300"  # sandbox creates
    job = finished_job(keyed, submitted.json()["data"]["id"])
    assert job["status"] == "completed", job
    assert job["result"]["encryption"]["key_id"] == old["id"]
    before_rotation = decrypted(job, old["secret"])
    assert before_rotation

    rotated = session.post(f"/keys/{old['id']}/rotate")
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["data"]
    assert new["id"] != old["id"] and new["rotated_from"] == old["id"]
    assert keyed.get("/models").status_code == 401
    fresh = api(stack, new["secret"])
    assert fresh.get("/models").status_code == 200
    # A result made before the rotation stays readable with the secret it was sealed to.
    assert decrypted(job, old["secret"]) == before_rotation

    assert session.delete(f"/keys/{new['id']}").status_code == 200
    assert fresh.get("/models").status_code == 401
    listed = session.get("/keys").json()["data"]
    assert new["id"] not in {k["id"] for k in listed}
    assert all("secret" not in k for k in listed)


def test_kiln_admin_drives_the_running_gateway(stack: dict[str, str], tmp_path: Path) -> None:
    env_file = tmp_path / "demo.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in stack.items()))
    script = Path(sys.executable).with_name("kiln-admin")

    def admin(*argv: str) -> Any:
        done = subprocess.run(
            [str(script), "--env-file", str(env_file), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    email = f"cli-{time.time_ns()}@example.com"
    account = admin("accounts", "create", "--email", email, "--password", "a long passphrase")
    grant = admin("credits", "grant", email, "3", "--reason", "e2e")
    assert grant["amount"] == "3"
    key = admin("keys", "create", account["id"], "--name", "cli")
    assert api(stack, key["secret"]).get("/models").status_code == 200
    assert admin("accounts", "suspend", email)["suspended"] is True
    assert api(stack, key["secret"]).get("/models").status_code == 403
    admin("accounts", "resume", email)

    refused = subprocess.run(
        [str(script), "--env-file", str(env_file), "credits", "grant", "acct_none", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert json.loads(refused.stderr)["error"]["code"] == "NOT_FOUND"
