"""kiln-admin without a server: arguments, configuration, `billing verify` when absent."""

import argparse
import sys
import types
from pathlib import Path

import pytest

from kiln_gateway import cli


def test_every_command_parses() -> None:
    for argv in (
        ["accounts", "create", "--email", "a@b.c", "--password", "p" * 8, "--name", "A"],
        ["accounts", "list"],
        ["accounts", "suspend", "acct_1"],
        ["accounts", "resume", "a@b.c"],
        ["credits", "grant", "acct_1", "12.5", "--reason", "welcome"],
        ["credits", "revoke", "acct_1", "2"],
        ["keys", "create", "acct_1", "--name", "laptop", "--sandbox"],
        ["billing", "verify", "--since", "x"],
    ):
        assert cli.parse(argv).group == argv[0]
    assert cli.parse(["billing", "verify", "--since", "x"]).verify_args == ["--since", "x"]


@pytest.mark.parametrize("argv", [["accounts"], ["accounts", "list", "--bogus"], []])
def test_a_bad_command_line_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2


def test_the_env_file_is_read_when_nothing_else_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "demo.env"
    env.write_text(
        "# demo\nKILN_API_URL=http://127.0.0.1:9/api/v1/\nexport KILN_ADMIN_TOKEN='tok'\n"
    )
    monkeypatch.delenv("KILN_API_URL", raising=False)
    monkeypatch.delenv("KILN_ADMIN_TOKEN", raising=False)
    args = argparse.Namespace(api_url=None, admin_token=None, env_file=str(env))
    assert cli.resolve_connection(args) == ("http://127.0.0.1:9/api/v1", "tok")
    monkeypatch.setenv("KILN_ADMIN_TOKEN", "from-env")
    assert cli.resolve_connection(args)[1] == "from-env"
    args.admin_token = "from-flag"
    assert cli.resolve_connection(args)[1] == "from-flag"


def test_no_address_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KILN_API_URL", raising=False)
    monkeypatch.setenv("KILN_STACK_DIR", str(tmp_path))
    assert cli.main(["accounts", "list"]) == cli.EXIT_USAGE
    assert "KILN_API_URL" in capsys.readouterr().err


def test_an_unreachable_api_is_an_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["--api-url", "http://127.0.0.1:9/api/v1", "--admin-token", "t", "accounts", "list"]
    )
    assert code == cli.EXIT_API_ERROR
    assert "Cannot reach the API" in capsys.readouterr().err


@pytest.mark.parametrize("amount", ["-5", "+5", " "])
def test_amounts_are_positive(amount: str) -> None:
    with pytest.raises(cli.CliError):
        cli._amount(amount)


def test_billing_verify_says_clearly_when_it_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "kiln_billing.verify", None)  # import fails
    assert cli.main(["billing", "verify"]) == cli.EXIT_UNAVAILABLE
    assert "kiln_billing.verify is not installed" in capsys.readouterr().err


@pytest.mark.parametrize("takes_argv", [True, False])
def test_billing_verify_runs_billing_s_main(
    monkeypatch: pytest.MonkeyPatch, takes_argv: bool
) -> None:
    seen: list[list[str]] = []
    module = types.ModuleType("kiln_billing.verify")
    if takes_argv:

        def main_with_argv(argv: list[str]) -> int:
            seen.append(argv)
            return 4

        module.main = main_with_argv  # type: ignore[attr-defined]
    else:

        def main_without_argv() -> None:
            seen.append(sys.argv[1:])
            raise SystemExit(4)

        module.main = main_without_argv  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kiln_billing.verify", module)
    assert cli.main(["billing", "verify", "--all"]) == 4
    assert seen == [["--all"]]
