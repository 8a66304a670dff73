import pytest

from kiln_gateway.jobs.service import input_errors, next_status
from kiln_gateway.keys.service import secret_sha256
from kiln_runtime.catalog import load_catalog


def test_happy_path_moves_forward() -> None:
    status = "pending"
    for event, expected in [
        ("credits.reserved", "queued"),
        ("job.queued", None),
        ("job.dispatched", None),
        ("job.started", "running"),
        ("job.progress", None),
        ("job.completed", "completed"),
    ]:
        moved = next_status(status, event)
        assert moved == expected, event
        status = moved or status
    assert status == "completed"


@pytest.mark.parametrize("final", ["completed", "failed", "canceled"])
@pytest.mark.parametrize(
    "late", ["credits.reserved", "job.started", "job.completed", "job.failed", "job.canceled"]
)
def test_a_final_state_never_changes(final: str, late: str) -> None:
    assert next_status(final, late) is None


def test_late_events_never_move_a_job_backwards() -> None:
    assert next_status("running", "credits.reserved") is None
    assert next_status("running", "job.queued") is None
    assert next_status("queued", "credits.reserved") is None


def test_rejection_fails_a_pending_job() -> None:
    assert next_status("pending", "credits.rejected") == "failed"


def test_input_errors_name_each_field() -> None:
    schema = load_catalog().model("kiln/prompt-to-image").input_schema  # type: ignore[union-attr]
    assert input_errors(schema, {"prompt": "ok"}) == []
    fields = [d["field"] for d in input_errors(schema, {"seed": "x", "colour": 1, "width": 9})]
    assert sorted(set(fields)) == ["input.colour", "input.prompt", "input.seed", "input.width"]


def test_only_a_hash_of_the_secret_is_kept() -> None:
    assert secret_sha256("sk_live_x") != "sk_live_x"
    assert len(secret_sha256("sk_live_x")) == 64


def test_webhook_secrets_are_valid_standard_webhooks_secrets() -> None:
    from standardwebhooks import Webhook

    from kiln_gateway.webhooks.service import new_webhook_secret

    for _ in range(200):  # URL-safe base64 would fail here within a few draws
        secret = new_webhook_secret()
        assert secret.startswith("whsec_")
        Webhook(secret)
