"""The command line's pure parts: `-i` inputs, and `kiln listen`'s forwarding (mocked API and
handler) with signatures a Standard Webhooks library accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from standardwebhooks import Webhook

from kiln_client import Kiln
from kiln_client.cli.inputs import InputError, parse_pairs
from kiln_client.cli.listen import Forwarded, Forwarder, matches, new_secret
from tests.unit.client.conftest import job_json

HANDLER = "http://127.0.0.1:4242/hooks"


def test_inputs_text_json_and_files(tmp_path: Path) -> None:
    whole = tmp_path / "input.json"
    whole.write_text(json.dumps({"prompt": "from file", "width": 256}))
    assert parse_pairs(
        ["prompt=a lighthouse = bright", "seed:=7", "loop:=true", f"@{whole}", "width:=512"]
    ) == {"prompt": "from file", "seed": 7, "loop": True, "width": 512}
    assert parse_pairs(["url=https://x.test/a?b=c:=d"]) == {"url": "https://x.test/a?b=c:=d"}
    for bad in (["novalue"], ["=x"], ["seed:=seven"], [f"@{tmp_path / 'missing.json'}"]):
        with pytest.raises(InputError):
            parse_pairs(bad)


def test_event_filters() -> None:
    assert matches("job.completed", ["job.*"])
    assert not matches("credits.reserved", ["job.*"])
    assert matches("credits.reserved", ["job.completed", "credits.*"])


def test_secrets_are_fresh_and_usable() -> None:
    first, second = new_secret(), new_secret()
    assert first != second and first.startswith("whsec_")
    Webhook(first)


def feed_event(n: int, kind: str, job_id: str) -> dict[str, Any]:
    return {
        "id": str(n),
        "type": kind,
        "sandbox": True,
        "occurred_at": "2026-11-21T09:14:19+00:00",
        "data": {"job_id": job_id, "status": kind.split(".")[1]},
    }


def test_listen_forwards_signed_events(kiln: Kiln, api: respx.MockRouter) -> None:
    job_id = job_json()["id"]
    api.get("/events").mock(
        side_effect=[
            httpx.Response(
                200,
                json={
                    "data": [
                        feed_event(8, "job.created", job_id),
                        feed_event(9, "credits.reserved", job_id),
                        feed_event(10, "job.completed", job_id),
                    ],
                    "next": "10",
                },
            )
        ]
    )
    api.get(f"/jobs/{job_id}").mock(
        return_value=httpx.Response(200, json={"data": job_json("completed")})
    )
    handler = api.post(HANDLER).mock(
        side_effect=[httpx.Response(500), httpx.Response(204), httpx.Response(204)]
    )
    secret = new_secret()
    forwarder = Forwarder(kiln, HANDLER, secret=secret, patterns=["job.*"], retries=1)
    reports: list[Forwarded] = []
    forwarder.run(after="7", report=reports.append, stop=lambda: len(reports) >= 2)
    assert [(r.type, r.status_code) for r in reports] == [
        ("job.created", 204),  # the first try got 500 and was retried
        ("job.completed", 204),
    ]
    bodies = [call.request for call in handler.calls]
    assert bodies[0].headers["webhook-id"] == bodies[1].headers["webhook-id"] == "evt_8"
    created = Webhook(secret).verify(bodies[1].content, dict(bodies[1].headers))
    assert created["type"] == "job.created" and created["data"]["id"] == job_id
    completed = Webhook(secret).verify(bodies[2].content, dict(bodies[2].headers))
    assert completed["type"] == "job.completed"
    assert completed["data"] == job_json("completed")  # the full job, as a real delivery
