"""Billing's counters, by live/sandbox: reservations, rejections, captures, releases (with
their reason), and the decision latency histogram, as the handlers move them."""

import pytest
from prometheus_client import REGISTRY

from kiln_runtime.db import SessionFactory
from tests.integration.billing.billing_events import (
    ended,
    grant,
    new_account,
    new_job,
    processor,
    submitted,
)

pytestmark = pytest.mark.integration


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    return {
        "reserved live": sample("kiln_billing_reservations_total", mode="live"),
        "reserved sandbox": sample("kiln_billing_reservations_total", mode="sandbox"),
        "rejected live": sample("kiln_billing_rejections_total", mode="live"),
        "captured live": sample("kiln_billing_captures_total", mode="live"),
        "captured sandbox": sample("kiln_billing_captures_total", mode="sandbox"),
        "released live canceled": sample(
            "kiln_billing_releases_total", mode="live", reason="canceled"
        ),
        "released sandbox failed": sample(
            "kiln_billing_releases_total", mode="sandbox", reason="failed"
        ),
        "decisions": sample("kiln_billing_decision_seconds_count", event_type="job.submitted"),
        "delays live": sample("kiln_billing_decision_delay_seconds_count", mode="live"),
        "captured millicredits": sample("kiln_billing_booked_millicredits_total", kind="capture"),
    }


async def test_counters_move_by_mode(sessions: SessionFactory) -> None:
    billing = processor(sessions)
    account = new_account()
    await billing.process(grant(account, 10_000))
    before = snapshot()
    live_1, live_2, live_3, sandbox_1, sandbox_2 = (new_job() for _ in range(5))
    for job in (live_1, live_2, live_3):
        await billing.process(submitted(account, job))  # two held, the third rejected
    await billing.process(ended("job.completed", account, live_1))
    await billing.process(ended("job.canceled", account, live_2))
    await billing.process(submitted(account, sandbox_1, sandbox=True))
    await billing.process(ended("job.completed", account, sandbox_1, sandbox=True))
    await billing.process(submitted(account, sandbox_2, sandbox=True))
    await billing.process(ended("job.failed", account, sandbox_2, sandbox=True))
    after = snapshot()
    moved = {name: after[name] - before[name] for name in after}
    assert moved == {
        "reserved live": 2,
        "reserved sandbox": 2,
        "rejected live": 1,
        "captured live": 1,
        "captured sandbox": 1,
        "released live canceled": 1,
        "released sandbox failed": 1,
        "decisions": 5,
        "delays live": 3,
        "captured millicredits": 5_000,
    }
