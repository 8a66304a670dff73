"""kiln-admin against the real gateway app (TestClient) and database."""

import json
from typing import Any

import pytest

from kiln_gateway import cli
from tests.integration.gateway.conftest import ADMIN_TOKEN, Gateway, bearer

pytestmark = pytest.mark.integration


def run(gw: Gateway, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = cli.main(["--admin-token", ADMIN_TOKEN, *argv], client=gw.client)
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_an_operator_session(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    code, account, _ = run(
        gateway, capsys, "accounts", "create", "--email", "ada@example.com",
        "--password", "a long passphrase", "--name", "Ada",
    )  # fmt: skip
    assert code == 0 and account["email"] == "ada@example.com" and account["name"] == "Ada"

    code, listed, _ = run(gateway, capsys, "accounts", "list")
    assert code == 0 and [a["id"] for a in listed] == [account["id"]]

    code, grant, _ = run(
        gateway, capsys, "credits", "grant", account["id"], "12.5", "--reason", "hi"
    )
    assert code == 0 and grant["amount"] == "12.5" and grant["account_id"] == account["id"]
    code, revoke, _ = run(gateway, capsys, "credits", "revoke", "ada@example.com", "2")
    assert code == 0 and revoke["amount"] == "-2"

    code, key, _ = run(gateway, capsys, "keys", "create", "ada@example.com", "--name", "ci")
    assert code == 0 and key["secret"].startswith("sk_live_") and key["name"] == "ci"
    code, sandbox, _ = run(
        gateway, capsys, "keys", "create", account["id"], "--name", "t", "--sandbox"
    )
    assert code == 0 and sandbox["secret"].startswith("sk_test_")
    assert gateway.client.get("/models", headers=bearer(key["secret"])).status_code == 200

    code, suspended, _ = run(gateway, capsys, "accounts", "suspend", account["id"])
    assert code == 0 and suspended["suspended"] is True
    assert gateway.client.get("/models", headers=bearer(key["secret"])).status_code == 403
    code, resumed, _ = run(gateway, capsys, "accounts", "resume", "ada@example.com")
    assert code == 0 and resumed["suspended"] is False
    assert gateway.client.get("/models", headers=bearer(key["secret"])).status_code == 200

    # The account can log in with the password the operator set.
    assert gateway.login("ada@example.com", "a long passphrase")


def test_api_errors_print_the_error_and_exit_non_zero(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("accounts", "create", "--email", "ada@example.com", "--password", "long enough")
    assert run(gateway, capsys, *args)[0] == 0
    code, out, err = run(gateway, capsys, *args)
    assert code == cli.EXIT_API_ERROR and out is None
    assert json.loads(err)["error"]["code"] == "CONFLICT"

    code, _, err = run(gateway, capsys, "credits", "grant", "acct_nope", "5")
    assert code == 1 and json.loads(err)["error"]["code"] == "NOT_FOUND"
    code, _, err = run(gateway, capsys, "credits", "grant", "ada@example.com", "1.0001")
    assert code == 1 and json.loads(err)["error"]["code"] == "BAD_REQUEST"
    code, _, err = run(gateway, capsys, "keys", "create", "nobody@example.com", "--name", "x")
    assert code == 1 and json.loads(err)["error"]["code"] == "NOT_FOUND"
    code, _, err = run(gateway, capsys, "accounts", "create", "--email", "x", "--password", "p")
    assert code == 1 and json.loads(err)["error"]["code"] == "VALIDATION_ERROR"


def test_a_wrong_admin_token_is_refused(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["--admin-token", "wrong", "accounts", "list"], client=gateway.client)
    assert code == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "UNAUTHORIZED"
