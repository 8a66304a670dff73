"""POST /jobs with an Idempotency-Key reused with another body, on a real database: a 409 that
writes nothing and does not make the group commit it shared run again (a write that raises
does; docs/architecture.md, "Group commit")."""

from typing import Any

from sqlalchemy import event

from tests.integration.gateway.conftest import Gateway, bearer

BODY = {"model": "kiln/prompt-to-image", "input": {"prompt": "a lighthouse", "seed": 1}}


def test_a_key_reused_with_another_body_is_409_and_runs_its_write_once(gateway: Gateway) -> None:
    account = gateway.create_account("ida@example.com")
    headers = {
        **bearer(gateway.create_key(account["id"], sandbox=True)["secret"]),
        "Idempotency-Key": "order-1042",
        "Prefer": "respond-async",
    }
    first = gateway.client.post("/jobs", json=BODY, headers=headers)
    assert first.status_code == 202, first.text
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()).upper())

    engine = gateway.state.runtime.db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        other = gateway.client.post(
            "/jobs", json={**BODY, "input": {"prompt": "another"}}, headers=headers
        )
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "CONFLICT"
    writes = [s for s in seen if s.startswith(("INSERT", "UPDATE", "DELETE", "SAVEPOINT"))]
    assert writes == [], writes
    looked_up = [s for s in seen if "FROM IDEMPOTENCY" in s]
    assert len(looked_up) == 1, "the key was looked up once: the write did not run again"
    replay = gateway.client.post("/jobs", json=BODY, headers=headers)
    assert replay.json()["data"]["id"] == first.json()["data"]["id"]
