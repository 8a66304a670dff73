"""The demo account of `make up`: made through the gateway's admin API, kept in demo.env."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from kiln_stack.envfiles import read_env_file, write_env_file
from kiln_stack.errors import StackError
from kiln_stack.services import ServicesMixin

DEMO_EMAIL = "demo@kiln.local"
DEMO_NAME = "Demo"
DEMO_CREDITS = "1000"


class DemoMixin(ServicesMixin):
    """The demo account that `up` leaves in demo.env."""

    def bootstrap_demo(self) -> dict[str, str]:
        """Make sure the demo account and its two keys exist; returns what demo.env holds."""
        token = self.secrets()["KILN_ADMIN_TOKEN"]
        saved = read_env_file(self.demo_env_file)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30.0) as client:
            found = _find_account(client, DEMO_EMAIL)
            if found is not None and saved and found["id"] == saved.get("KILN_DEMO_ACCOUNT_ID"):
                account_id = str(found["id"])
                password = saved.get("KILN_DEMO_PASSWORD", "")
                live = saved.get("KILN_DEMO_LIVE_KEY", "")
                sandbox = saved.get("KILN_DEMO_SANDBOX_KEY", "")
                self._echo(f"demo: account {DEMO_EMAIL} ({account_id}) kept")
            else:
                live = sandbox = ""
                if found is None:
                    password = secrets.token_urlsafe(18)
                    response = client.post(
                        "/admin/accounts",
                        json={"email": DEMO_EMAIL, "password": password, "name": DEMO_NAME},
                    )
                    if response.status_code == 409:  # created meanwhile: look it up again
                        found = _find_account(client, DEMO_EMAIL)
                        if found is None:
                            raise StackError(f"demo: {DEMO_EMAIL} exists (409) but is not found")
                if found is None:
                    account_id = str(_data(response, "create the demo account")["id"])
                    _data(
                        client.post(
                            f"/admin/accounts/{account_id}/credits",
                            json={"amount": DEMO_CREDITS, "reason": "demo credits"},
                        ),
                        "grant the demo credits",
                    )
                    self._echo(
                        f"demo: account {DEMO_EMAIL} ({account_id}) created "
                        f"with {DEMO_CREDITS} credits"
                    )
                else:
                    # It exists but demo.env is gone (or names another account): its password
                    # cannot be recovered, so demo.env gets an empty one and fresh keys.
                    account_id = str(found["id"])
                    password = ""
                    self._echo(
                        f"demo: account {DEMO_EMAIL} ({account_id}) exists but "
                        f"{self.demo_env_file} did not describe it: new keys, password unknown"
                    )
            if not live:
                live = _create_key(client, account_id, "demo live", sandbox=False)
            if not sandbox:
                sandbox = _create_key(client, account_id, "demo sandbox", sandbox=True)
        values = {
            "KILN_API_URL": self.api_url,
            "KILN_ADMIN_TOKEN": token,
            "KILN_DEMO_ACCOUNT_ID": account_id,
            "KILN_DEMO_EMAIL": DEMO_EMAIL,
            "KILN_DEMO_PASSWORD": password,
            "KILN_DEMO_LIVE_KEY": live,
            "KILN_DEMO_SANDBOX_KEY": sandbox,
        }
        write_env_file(
            self.demo_env_file,
            values,
            header=[
                "Kiln local stack: the demo account (written by deploy/local/stack.py up).",
                f"Load it into a shell with: set -a; . {self.demo_env_file}; set +a",
            ],
        )
        return values


def _data(response: httpx.Response, what: str) -> Any:
    if response.status_code // 100 != 2:
        raise StackError(
            f"demo: could not {what}: {response.request.method} {response.request.url} "
            f"answered {response.status_code}: {response.text[:500]}"
        )
    try:
        return response.json()["data"]
    except (ValueError, KeyError, TypeError) as exc:
        answer = response.text[:500]
        raise StackError(f"demo: could not {what}: unexpected answer {answer}") from exc


def _find_account(client: httpx.Client, email: str) -> dict[str, Any] | None:
    response = client.get("/admin/accounts", params={"email": email})
    for account in _data(response, f"look up {email}") or []:
        if isinstance(account, dict) and str(account.get("email", "")).lower() == email:
            return account
    return None


def _create_key(client: httpx.Client, account_id: str, name: str, *, sandbox: bool) -> str:
    response = client.post(
        f"/admin/accounts/{account_id}/keys", json={"name": name, "sandbox": sandbox}
    )
    secret = _data(response, f"create the key {name!r}").get("secret")
    if not secret:
        raise StackError(f"demo: the key {name!r} came back without a secret")
    return str(secret)
