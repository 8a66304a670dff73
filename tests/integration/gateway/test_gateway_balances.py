"""The balance the gateway shows is the latest billing announced, on a real database (no
broker): announcements carry billing's version, and the events of one billing batch share their
time while the gateway reads their topics in no particular order."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kiln_contracts import Event, decode, encode, new_event
from kiln_contracts.v1 import common_pb2, credits_pb2
from kiln_gateway.handlers import Announced, ReadModel, supersedes
from kiln_gateway.tables import MESSAGING
from kiln_runtime.testing import EventDriver
from tests.integration.gateway.conftest import Gateway, bearer, gateway_without_kafka, make_settings

T = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with gateway_without_kafka(make_settings(tmp_path)) as running:
        yield running


def announcement(
    event_type: str, account: str, available: int, reserved: int, version: int, at: datetime
) -> Event:
    balance = common_pb2.Balance(
        available_millicredits=available, reserved_millicredits=reserved, version=version
    )
    job_id = f"job_{uuid.uuid4().hex}"
    message = (
        credits_pb2.CreditsCaptured(amount_millicredits=1000, balance=balance)
        if event_type == "credits.captured"
        else credits_pb2.CreditsReleased(amount_millicredits=1000, balance=balance, reason="failed")
    )
    return decode(
        encode(new_event(event_type, message, account_id=account, job_id=job_id, occurred_at=at))
    )


def project(gw: Gateway, batches: list[list[Event]]) -> None:
    async def handle() -> None:
        driver = EventDriver(
            gw.state.runtime.db, MESSAGING, ReadModel().handlers(), group="gateway"
        )
        for batch in batches:
            await driver.process_batch(batch)

    gw.client.portal.call(handle)  # type: ignore[union-attr]


def shown(gw: Gateway, headers: dict[str, str]) -> tuple[str, str]:
    usage = gw.client.get("/usage", headers=headers).json()["data"]
    return usage["balance"], usage["reserved"]


def test_the_highest_version_wins_and_time_decides_only_without_versions() -> None:
    old, new = Announced(1, 1, T, 4), Announced(2, 2, T, 5)
    assert supersedes(new, old) and not supersedes(old, new)
    assert not supersedes(old, old)
    # Versions decide against time too (a billing instance whose clock is behind).
    assert supersedes(Announced(2, 2, T - timedelta(seconds=5), 6), old)
    # Without versions (announced before them): the later time, ties to the newcomer.
    assert supersedes(Announced(2, 2, T, 0), Announced(1, 1, T, 0))
    assert not supersedes(Announced(2, 2, T, 0), Announced(1, 1, T + timedelta(seconds=1), 0))
    # A versioned announcement replaces one from before versions, and never yields to one.
    assert supersedes(Announced(2, 2, T - timedelta(seconds=5), 5), Announced(1, 1, T, 0))
    assert not supersedes(Announced(1, 1, T + timedelta(seconds=5), 0), Announced(2, 2, T, 5))


@pytest.mark.parametrize("one_batch", [False, True])
def test_a_lower_version_read_later_does_not_replace_the_balance(
    gw: Gateway, one_batch: bool
) -> None:
    account = gw.create_account(f"balances-{uuid.uuid4().hex[:8]}@example.com")
    headers = bearer(gw.create_key(account["id"])["secret"])
    # One billing batch released job A (version 7) then captured job B (version 8), both at T;
    # the gateway reads credits.captured first.
    captured = announcement("credits.captured", account["id"], 9000, 0, 8, T)
    released = announcement("credits.released", account["id"], 9000, 1000, 7, T)
    project(gw, [[captured, released]] if one_batch else [[captured], [released]])
    assert shown(gw, headers) == ("9", "0")
    # A later version replaces it, in a later batch too.
    project(gw, [[announcement("credits.captured", account["id"], 8000, 0, 9, T)]])
    assert shown(gw, headers) == ("8", "0")
