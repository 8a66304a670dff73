"""Running schemathesis (its CLI, in a subprocess) against a gateway that serves HTTP: the
credentials of an account of its own, one per security scheme, the checks that must pass, and
the tally of what was sent and answered. Used by tests/e2e/test_schemathesis.py (the live
stack) and by tests/unit/gateway/test_gateway_hostile_schemathesis.py (the app alone, in
process; also the large run that KILN_FUZZ_EXAMPLES asks for)."""

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
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
# Cases per operation of a bounded run (a time budget ends it first on a slow machine).
BOUNDED_EXAMPLES = 25


def own_account(api_url: str, admin_token: str) -> dict[str, str]:
    """A fresh account with credits, a live and a sandbox key, and a session token (and the
    account's id)."""
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
    return {"admin": admin_token, "session": session, "account_id": account_id, **keys}


def write_config(
    path: Path,
    credentials: dict[str, str],
    api_key: str,
    known_values: dict[str, list[str]] | None = None,
) -> None:
    """The config file: a credential per security scheme and, for each path parameter named in
    `known_values`, ids that exist, used for half of the generated cases (so that the
    operations behind an id are reached, not only their 404)."""
    auth = {"apiKey": credentials[api_key], "adminToken": credentials["admin"]}
    if credentials["session"]:
        auth["sessionToken"] = credentials["session"]
    sections = "\n".join(
        f'[auth.openapi.{scheme}]\nbearer = "{token}"\n' for scheme, token in auth.items()
    )
    for name, values in (known_values or {}).items():
        sections += f"\n[dictionaries.{name}]\nvalues = {json.dumps(values)}\n"
    if known_values:
        sections += "\n[parameters]\n" + "".join(
            f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}\n'
            for name in known_values
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
    max_time_s: int | None,
    exclude_operations: list[str] | None = None,
    max_examples: int = BOUNDED_EXAMPLES,
    timeout_s: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """`st run` over every operation of the served document: `max_examples` cases per
    operation and phase; with `max_time_s`, fuzzing repeats until that time is spent. Reports
    (JUnit, and NDJSON with every request and answer for `tally`) go to `workdir/report`."""
    seed = os.environ.get("KILN_SCHEMATHESIS_SEED", DEFAULT_SEED)
    if seed == "random":
        seed = str(secrets.randbelow(2**32))
    budget = ["--max-time", str(max_time_s)] if max_time_s is not None else []
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
        *budget,
        "--max-examples",
        str(max_examples),
        "--request-timeout",
        "15",
        "--workers",
        "1",
        "--seed",
        seed,
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(workdir / "report"),
        *[arg for op in exclude_operations or [] for arg in ("--exclude-name", op)],
    ]
    if timeout_s is None:
        assert max_time_s is not None, "a run without a time budget needs a timeout"
        timeout_s = max_time_s + 120  # the budget, plus loading and the last requests
    return subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@dataclass
class FuzzTally:
    """What a run sent and what came back, from schemathesis' NDJSON report."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    no_answer: int = 0  # timeouts and connection errors
    server_errors: list[str] = field(default_factory=list)  # "METHOD url -> status"

    def summary(self) -> str:
        server = sum(count for status, count in self.statuses.items() if status >= 500)
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        return (
            f"{self.requests} requests, {server} with a 5xx, {self.no_answer} without an "
            f"answer ({statuses})"
        )


def tally(report_dir: Path) -> FuzzTally:
    """Every request of the run's scenarios and the status it got."""
    counted = FuzzTally()
    for report in sorted(report_dir.glob("ndjson-*.ndjson")):
        with report.open(encoding="utf-8") as lines:
            for line in lines:
                finished = json.loads(line).get("ScenarioFinished")
                if not finished:
                    continue
                for interaction in finished["recorder"].get("interactions", {}).values():
                    counted.requests += 1
                    response = interaction.get("response")
                    if response is None:
                        counted.no_answer += 1
                        continue
                    status = int(response["status_code"])
                    counted.statuses[status] += 1
                    if status >= 500:
                        request = interaction["request"]
                        counted.server_errors.append(
                            f"{request['method']} {request['uri']} -> {status}"
                        )
    return counted
