"""Schemathesis against the live gateway: every operation of the OpenAPI document it serves
(so routes added later are covered without touching this file), fuzzed with schema-valid and
schema-invalid input, with real credentials for each security scheme, in a bounded time.

It must find no 5xx and no response that contradicts the document: an undocumented status, a
body that does not match the documented schema, a wrong content type or header, input that
breaks the schema accepted, missing auth accepted.

The run uses an account of its own (its own keys, session, credits and rate-limit windows) so
that it cannot starve or throttle the other end-to-end tests on the same stack. Two runs share
the time budget (KILN_SCHEMATHESIS_MAX_TIME_S, default 80 s): one with the live key, one with
the sandbox key. A failing run prints schemathesis' report, which includes a curl command
reproducing each failure.
"""

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.schemathesis_support import (
    SHARED_STACK_EXCLUSIONS,
    own_account,
    run_schemathesis,
    tally,
    write_config,
)

pytestmark = pytest.mark.e2e

MAX_TIME_S = int(os.environ.get("KILN_SCHEMATHESIS_MAX_TIME_S", "80"))


@pytest.mark.parametrize("api_key", ["live", "sandbox"])
def test_the_live_gateway_keeps_to_its_openapi_document(
    stack: dict[str, str], tmp_path: Path, api_key: str
) -> None:
    api_url = stack["KILN_API_URL"]
    schema_url = api_url.removesuffix("/api/v1") + "/openapi.json"
    document = httpx.get(schema_url, timeout=30)
    assert document.status_code == 200
    assert document.json()["paths"], "the gateway serves an empty OpenAPI document"

    credentials = own_account(api_url, stack["KILN_ADMIN_TOKEN"])
    config = tmp_path / "schemathesis.toml"
    write_config(config, credentials, api_key)
    started = time.monotonic()
    result = run_schemathesis(
        schema_url, config, tmp_path, MAX_TIME_S // 2, SHARED_STACK_EXCLUSIONS
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    print(output[-20_000:])  # shown by pytest on failure (and with -s)
    print(f"schemathesis ({api_key} key):", tally(tmp_path / "report").summary())
    assert result.returncode == 0, f"schemathesis ({api_key} key) found problems:\n{output[-8000:]}"
    assert elapsed < MAX_TIME_S // 2 + 120
