"""`kiln-billing-verify` (and `verify_ledger`, which `kiln-admin billing verify` calls): exit 0
on a sound ledger, 1 with the problems listed, 2 when the database cannot be read."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from kiln_billing.migrate import upgrade_database
from kiln_billing.tables import AccountBalance
from kiln_billing.verify import main, verify_ledger
from kiln_runtime.db import SessionFactory, make_engine, transaction
from tests.integration.billing.billing_events import (
    ended,
    grant,
    new_account,
    new_job,
    processor,
    submitted,
)

pytestmark = pytest.mark.integration


async def some_traffic(sessions: SessionFactory) -> str:
    billing = processor(sessions)
    account = new_account()
    await billing.process(grant(account, 12_500))
    for outcome in ("job.completed", "job.failed", None):
        job = new_job()
        await billing.process(submitted(account, job))
        if outcome:
            await billing.process(ended(outcome, account, job))
    sandbox_job = new_job()
    await billing.process(submitted(account, sandbox_job, sandbox=True))
    await billing.process(ended("job.completed", account, sandbox_job, sandbox=True))
    return account


async def test_a_sound_ledger_verifies(
    sessions: SessionFactory, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await some_traffic(sessions)
    report = verify_ledger(database_url)  # from inside a running event loop, too
    assert report.ok
    assert report.totals == {
        "granted": 12_500,
        "available": 2_500,
        "reserved": 5_000,
        "spent": 5_000,
    }
    assert report.jobs == {
        "live": {"captured": 1, "released": 1, "reserved": 1},
        "sandbox": {"captured": 1},
    }
    assert main([database_url]) == 0
    text = capsys.readouterr().out
    assert "ledger: OK" in text
    assert "totals (credits): granted 12.5, available 2.5, reserved 5, spent 5" in text
    assert "sandbox jobs: captured 1" in text
    assert main([database_url, "--json", "--accounts"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["accounts"] == 1
    assert data["account_reports"][0]["spent"] == 5_000


async def test_a_broken_ledger_fails_with_its_problems(
    sessions: SessionFactory, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    account = await some_traffic(sessions)
    async with transaction(sessions) as session:
        await session.execute(
            update(AccountBalance)
            .where(AccountBalance.account_id == account)
            .values(reserved_millicredits=0, spent_millicredits=10_000)
        )
    assert main([database_url]) == 1
    text = capsys.readouterr().out
    assert "PROBLEMS FOUND" in text
    assert f"{account}: cached balance" in text


def test_an_unreadable_database_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sqlite+aiosqlite:////proc/kiln-no-such-folder/billing.db"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "kiln-billing-verify"
    assert script.exists(), "uv sync installs kiln-billing's console scripts"
    empty = f"sqlite+aiosqlite:///{tmp_path}/empty.db"

    async def make() -> None:
        engine = make_engine(empty)
        await upgrade_database(engine)
        await engine.dispose()

    asyncio.run(make())
    result = subprocess.run(
        [str(script), empty], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ledger: OK — 0 accounts" in result.stdout
