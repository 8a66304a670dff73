"""`kiln-admin`: the operator's command line, a client of the gateway's admin HTTP API.

    kiln-admin accounts create --email ada@example.com [--password …] [--name "Ada"]
    kiln-admin accounts list [--email …]
    kiln-admin accounts suspend|resume ACCOUNT
    kiln-admin credits grant ACCOUNT AMOUNT [--reason …]
    kiln-admin credits revoke ACCOUNT AMOUNT [--reason …]
    kiln-admin keys create ACCOUNT --name NAME [--sandbox]
    kiln-admin billing verify [ARGS…]       (billing's ledger check, when installed)
    kiln-admin dlq list [--group G] [--topic T] [--json]
    kiln-admin dlq replay REF… | --group G [--topic T]

ACCOUNT is an account id (`acct_…`) or an email. The API address and the admin token come from
`--api-url`/`--admin-token`, else `KILN_API_URL`/`KILN_ADMIN_TOKEN`, else the local stack's
demo.env (`--env-file`, default `$KILN_STACK_DIR/demo.env` or `.kiln/demo.env`). Output is the
response's `data` as JSON; an API error prints the error object on stderr and exits 1.

`dlq` reads and replays the dead-letter topic (docs/architecture.md, "Dead letters") on the
Kafka cluster of `--bootstrap`, else `KILN_KAFKA_BOOTSTRAP`, else the local stack's demo.env,
else 127.0.0.1:9092. A REF is `<partition>:<offset>` of the dead-letter topic, as `list` shows.
"""

import argparse
import getpass
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

EXIT_OK, EXIT_API_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_API_ERROR, payload: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.payload = payload


def default_env_file() -> Path:
    return Path(os.environ.get("KILN_STACK_DIR") or ".kiln") / "demo.env"


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines (comments and blanks skipped, optional quotes removed)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def resolve_connection(args: argparse.Namespace) -> tuple[str, str]:
    file_values = read_env_file(Path(args.env_file) if args.env_file else default_env_file())

    def pick(flag: str | None, name: str) -> str:
        return flag or os.environ.get(name) or file_values.get(name, "")

    api_url = pick(args.api_url, "KILN_API_URL")
    token = pick(args.admin_token, "KILN_ADMIN_TOKEN")
    if not api_url:
        raise CliError("No API address: pass --api-url or set KILN_API_URL.", EXIT_USAGE)
    if not token:
        raise CliError("No admin token: pass --admin-token or set KILN_ADMIN_TOKEN.", EXIT_USAGE)
    return api_url.rstrip("/"), token


class AdminApi:
    """The admin routes, on an httpx client whose base URL is the API's (`…/api/v1`)."""

    def __init__(self, client: httpx.Client, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, headers=self.headers, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"Cannot reach the API at {self.client.base_url}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error or not isinstance(body, dict) or "data" not in body:
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict):
                error = {"status": response.status_code, "body": response.text[:500]}
            raise CliError(str(error.get("message", "API error")), payload={"error": error})
        return body["data"]

    def account_id(self, account: str) -> str:
        """An account id as given, or the id of the account with this email."""
        if "@" not in account:
            return account
        found = self.call("GET", "/admin/accounts", params={"email": account})
        if not found:
            raise CliError(
                f"No account with email {account}.",
                payload={"error": {"code": "NOT_FOUND", "message": f"no account {account}"}},
            )
        return str(found[0]["id"])


# ------------------------------------------------------------------------- commands


def accounts_create(api: AdminApi, args: argparse.Namespace) -> Any:
    password = args.password
    if password is None:
        password = getpass.getpass("Password for the new account: ")
    body = {"email": args.email, "password": password, "name": args.name}
    return api.call("POST", "/admin/accounts", json=body)


def accounts_list(api: AdminApi, args: argparse.Namespace) -> Any:
    params = {"email": args.email} if args.email else None
    return api.call("GET", "/admin/accounts", params=params)


def accounts_suspend(api: AdminApi, args: argparse.Namespace) -> Any:
    return api.call("POST", f"/admin/accounts/{api.account_id(args.account)}/suspend")


def accounts_resume(api: AdminApi, args: argparse.Namespace) -> Any:
    return api.call("POST", f"/admin/accounts/{api.account_id(args.account)}/resume")


def _amount(text: str) -> str:
    amount = text.strip()
    if not amount or amount.startswith(("-", "+")):
        raise CliError(f"AMOUNT must be a positive number of credits, not {text!r}.", EXIT_USAGE)
    return amount


def credits_grant(api: AdminApi, args: argparse.Namespace) -> Any:
    body = {"amount": _amount(args.amount), "reason": args.reason}
    return api.call("POST", f"/admin/accounts/{api.account_id(args.account)}/credits", json=body)


def credits_revoke(api: AdminApi, args: argparse.Namespace) -> Any:
    body = {"amount": "-" + _amount(args.amount), "reason": args.reason}
    return api.call("POST", f"/admin/accounts/{api.account_id(args.account)}/credits", json=body)


def keys_create(api: AdminApi, args: argparse.Namespace) -> Any:
    body = {"name": args.name, "sandbox": args.sandbox}
    return api.call("POST", f"/admin/accounts/{api.account_id(args.account)}/keys", json=body)


def billing_verify(argv: Sequence[str]) -> int:
    """Run billing's ledger check (`kiln_billing.verify:main`), imported only when asked."""
    try:
        module = importlib.import_module("kiln_billing.verify")
    except ModuleNotFoundError as exc:
        if exc.name not in ("kiln_billing", "kiln_billing.verify"):
            raise
        print(
            "kiln-admin: `billing verify` is not available here: the module "
            "kiln_billing.verify is not installed (install the kiln-billing package).",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    verify_main: Callable[..., Any] = module.main
    takes_argv = bool(inspect.signature(verify_main).parameters)
    saved_argv = sys.argv
    try:
        if takes_argv:
            result = verify_main(list(argv))
        else:
            sys.argv = ["kiln-admin billing verify", *argv]
            result = verify_main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
    return int(result or 0)


def _bootstrap(args: argparse.Namespace) -> str:
    env_file = Path(args.env_file) if args.env_file else default_env_file()
    return (
        args.bootstrap
        or os.environ.get("KILN_KAFKA_BOOTSTRAP")
        or read_env_file(env_file).get("KILN_KAFKA_BOOTSTRAP")
        or "127.0.0.1:9092"
    )


def dlq(args: argparse.Namespace) -> int:
    """`dlq list` / `dlq replay`: the dead-letter topic, read or replayed (no admin API)."""
    import asyncio

    from kiln_runtime.dead_letters import format_entries, list_dead_letters, replay_dead_letters

    bootstrap = _bootstrap(args)
    try:
        if args.command == "list":
            entries = asyncio.run(
                list_dead_letters(bootstrap, group=args.dlq_group, topic=args.topic)
            )
            print(format_entries(entries, as_json=args.json))
            return EXIT_OK
        if not args.refs and not args.dlq_group:
            print("kiln-admin: name dead letters (REF…) or a --group to replay", file=sys.stderr)
            return EXIT_USAGE
        replayed = asyncio.run(
            replay_dead_letters(bootstrap, refs=args.refs, group=args.dlq_group, topic=args.topic)
        )
    except KeyError as exc:
        print(f"kiln-admin: {exc.args[0]}", file=sys.stderr)
        return EXIT_API_ERROR
    except Exception as exc:  # the broker away, mostly
        print(f"kiln-admin: dead-letter topic on {bootstrap}: {exc!r}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps({"replayed": [e.as_json() for e in replayed]}, indent=2))
    return EXIT_OK


# ------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln-admin", description="Kiln operator commands (the gateway's admin API)."
    )
    parser.add_argument("--api-url", help="the API base, e.g. http://127.0.0.1:8000/api/v1")
    parser.add_argument("--admin-token", help="the operator token (KILN_ADMIN_TOKEN)")
    parser.add_argument("--env-file", help="a demo.env to read KILN_API_URL/KILN_ADMIN_TOKEN from")
    groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")

    accounts = groups.add_parser("accounts", help="create, list, suspend, resume accounts")
    acc = accounts.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = acc.add_parser("create", help="create an account")
    create.add_argument("--email", required=True)
    create.add_argument("--password", help="asked for when left out")
    create.add_argument("--name", default="")
    create.set_defaults(run=accounts_create)
    listing = acc.add_parser("list", help="list accounts (the first 100)")
    listing.add_argument("--email")
    listing.set_defaults(run=accounts_list)
    for name, run in (("suspend", accounts_suspend), ("resume", accounts_resume)):
        command = acc.add_parser(name, help=f"{name} an account (its keys get 403 meanwhile)")
        command.add_argument("account", metavar="ACCOUNT", help="account id or email")
        command.set_defaults(run=run)

    credit = groups.add_parser("credits", help="grant or revoke credits")
    cred = credit.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, run in (("grant", credits_grant), ("revoke", credits_revoke)):
        command = cred.add_parser(name, help=f"{name} credits (a decimal number, e.g. 12.5)")
        command.add_argument("account", metavar="ACCOUNT", help="account id or email")
        command.add_argument("amount", metavar="AMOUNT")
        command.add_argument("--reason", default="")
        command.set_defaults(run=run)

    keys = groups.add_parser("keys", help="make API keys")
    key = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")
    key_create = key.add_parser("create", help="make a key; its secret is shown once")
    key_create.add_argument("account", metavar="ACCOUNT", help="account id or email")
    key_create.add_argument("--name", required=True)
    key_create.add_argument("--sandbox", action="store_true", help="an sk_test_ key")
    key_create.set_defaults(run=keys_create)

    billing = groups.add_parser("billing", help="billing's checks")
    bill = billing.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Whatever follows `billing verify` is billing's own arguments (see `parse`).
    bill.add_parser(  # no -h of its own: `billing verify --help` is billing's help
        "verify", help="check the credit ledger (kiln_billing.verify) [ARGS…]", add_help=False
    )

    dead = groups.add_parser("dlq", help="the dead-letter topic: list, replay")
    dead.add_argument("--bootstrap", help="Kafka, host:port (KILN_KAFKA_BOOTSTRAP)")
    dl = dead.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dlq_list = dl.add_parser("list", help="every dead letter: group, topic, offset, error")
    dlq_list.add_argument("--group", dest="dlq_group", help="only this consumer group's")
    dlq_list.add_argument("--topic", help="only dead letters of this topic")
    dlq_list.add_argument("--json", action="store_true", help="JSON instead of a table")
    dlq_replay = dl.add_parser(
        "replay", help="send dead letters back to their topic, for the group they failed in"
    )
    dlq_replay.add_argument("refs", nargs="*", metavar="REF", help="<partition>:<offset>")
    dlq_replay.add_argument("--group", dest="dlq_group", help="every dead letter of this group")
    dlq_replay.add_argument("--topic", help="with --group: only this topic's")
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.group == "billing":
        args.verify_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None, client: httpx.Client | None = None) -> int:
    """Run one command. Tests pass `client` (e.g. a TestClient whose base URL is `…/api/v1`)."""
    args = parse(argv)
    if args.group == "billing":
        return billing_verify(args.verify_args)
    if args.group == "dlq":
        return dlq(args)
    try:
        if client is not None:
            token = args.admin_token or os.environ.get("KILN_ADMIN_TOKEN", "")
            data = args.run(AdminApi(client, token), args)
        else:
            api_url, token = resolve_connection(args)
            with httpx.Client(base_url=api_url, timeout=60.0) as http:
                data = args.run(AdminApi(http, token), args)
    except CliError as exc:
        if exc.payload is not None:
            print(json.dumps(exc.payload, indent=2), file=sys.stderr)
        else:
            print(f"kiln-admin: {exc}", file=sys.stderr)
        return exc.code
    print(json.dumps(data, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
