"""A submit whose commit went through but whose answer was lost (the connection dropped after
COMMIT): the retried transaction finds the job already there. The client gets that job, not a
500 for a job that exists and runs."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from kiln_gateway.jobs import repository
from tests.unit.gateway.hostile_support import GatewayUnderTest, gateway_under_test

GOOD = {"model": "kiln/prompt-to-image", "input": {"prompt": "a lighthouse in a storm"}}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayUnderTest]:
    async with gateway_under_test(tmp_path) as under_test:
        yield under_test


async def test_a_submit_committed_before_its_answer_was_lost_answers_with_its_job(
    gateway: GatewayUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = gateway.app.state.gateway.runtime
    write = runtime.write

    async def committed_then_retried(work: Any) -> Any:
        await write(work)  # committed; the retry of the same work then collides with it
        raise IntegrityError("INSERT INTO jobs", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(runtime, "write", committed_then_retried)
    response = await gateway.client.post("/jobs", json=GOOD, headers=gateway.auth())
    assert response.status_code == 202, response.text
    job_id = response.json()["data"]["id"]
    stored = await runtime.read(lambda c: repository.read_job(c, job_id))
    assert stored is not None and stored.account_id == gateway.account_id


async def test_a_collision_that_made_no_job_is_still_an_error(
    gateway: GatewayUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = gateway.app.state.gateway.runtime

    async def collides(_work: Any) -> Any:
        raise IntegrityError("INSERT INTO jobs", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(runtime, "write", collides)
    with pytest.raises(IntegrityError):  # the test transport hands the app's error through
        await gateway.client.post("/jobs", json=GOOD, headers=gateway.auth())
