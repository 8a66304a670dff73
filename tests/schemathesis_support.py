"""Running schemathesis (its CLI, in a subprocess) against a gateway that serves HTTP: the
credentials of an account of its own, one per security scheme, and the checks that must pass.
Used by tests/e2e/test_schemathesis.py (the live stack) and by
tests/unit/gateway/test_gateway_hostile_schemathesis.py (the app alone, in process)."""

import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "ignored_auth",
]
# Not fuzzed on a shared stack: failed logins are throttled per client address, and every test
# there comes from 127.0.0.1, so fuzzing the login would lock the other tests out of it. The
# in-process run (a gateway of its own) covers it.
SHARED_STACK_EXCLUSIONS = ["POST /api/v1/auth/token"]
# Fixed by default so that a run is repeatable (what is reached within the budget still varies
# with speed); KILN_SCHEMATHESIS_SEED=random explores anew each time.
DEFAULT_SEED = "20261121"


def own_account(api_url: str, admin_token: str) -> dict[str, str]:
    """A fresh account with credits, a live and a sandbox key, and a session token."""
    email = f"schemathesis-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(18)
    admin = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=api_url, timeout=30) as http:
        account = http.post(
            "/admin/accounts", json={"email": email, "password": password}, headers=admin
        )
        assert account.status_code == 201, account.text
        account_id = account.json()["data"]["id"]
        # Enough for a few real jobs; past it, POST /jobs answers the documented 402.
        granted = http.post(
            f"/admin/accounts/{account_id}/credits",
            json={"amount": "30", "reason": "schemathesis"},
            headers=admin,
        )
        assert granted.status_code == 200, granted.text
        keys = {}
        for kind, sandbox in (("live", False), ("sandbox", True)):
            key = http.post(
                f"/admin/accounts/{account_id}/keys",
                json={"name": f"schemathesis-{kind}", "sandbox": sandbox},
                headers=admin,
            )
            assert key.status_code == 201, key.text
            keys[kind] = key.json()["data"]["secret"]
        session = ""
        login = http.post("/auth/token", json={"email": email, "password": password})
        if login.status_code == 200:  # the session route may not exist yet
            data = login.json()["data"]
            session = data.get("token") or data.get("access_token") or ""
    return {"admin": admin_token, "session": session, **keys}


def write_config(path: Path, credentials: dict[str, str], api_key: str) -> None:
    auth = {"apiKey": credentials[api_key], "adminToken": credentials["admin"]}
    if credentials["session"]:
        auth["sessionToken"] = credentials["session"]
    sections = "\n".join(
        f'[auth.openapi.{scheme}]\nbearer = "{token}"\n' for scheme, token in auth.items()
    )
    path.write_text(
        textwrap.dedent(
            """\
            [generation]
            database = "none"

            """
        )
        + sections,
        encoding="utf-8",
    )


def run_schemathesis(
    schema_url: str,
    config: Path,
    workdir: Path,
    max_time_s: int,
    exclude_operations: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`st run` over every operation of the served document, within `max_time_s`."""
    seed = os.environ.get("KILN_SCHEMATHESIS_SEED", DEFAULT_SEED)
    if seed == "random":
        seed = str(secrets.randbelow(2**32))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        schema_url,
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-time",
        str(max_time_s),
        "--max-examples",
        "25",
        "--request-timeout",
        "15",
        "--workers",
        "1",
        "--seed",
        seed,
        "--report",
        "junit",
        "--report-dir",
        str(workdir / "report"),
        *[arg for op in exclude_operations or [] for arg in ("--exclude-name", op)],
    ]
    return subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=max_time_s + 120,  # the budget, plus loading and the last requests
        check=False,
    )
