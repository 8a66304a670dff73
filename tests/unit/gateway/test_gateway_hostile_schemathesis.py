"""Schemathesis against the gateway app alone (no Kafka: the hostile_support harness), served by
uvicorn on a free local port, for a short time. It is the fast twin of the live run in
tests/e2e/test_schemathesis.py: same checks, every operation of the served document, and the
login route too, since this gateway is nobody else's."""

import os
from pathlib import Path

from tests.schemathesis_support import own_account, run_schemathesis, write_config
from tests.unit.gateway.hostile_support import ADMIN_TOKEN, ServedGateway

MAX_TIME_S = int(os.environ.get("KILN_SCHEMATHESIS_UNIT_MAX_TIME_S", "10"))


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
        assert result.returncode == 0, f"schemathesis found problems:\n{output[-8000:]}"
    finally:
        served.stop()
