"""The scheduler's settings refuse a broker silence limit that an idle fetch would reach."""

import pytest
from pydantic import ValidationError

from kiln_scheduler.config import SchedulerSettings


def test_the_silence_limit_must_outlast_two_idle_fetches() -> None:
    assert SchedulerSettings().broker_silence_s == 2.0
    SchedulerSettings(broker_silence_s=1.0, consumer_poll_timeout_ms=400)
    with pytest.raises(ValidationError, match="KILN_BROKER_SILENCE_S"):
        SchedulerSettings(broker_silence_s=0.4, consumer_poll_timeout_ms=200)
