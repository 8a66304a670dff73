"""API keys with session auth: create, list, revoke, rotate, on the real app and database."""

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from kiln_crypto.keys import derive_result_public_key
from kiln_gateway.keys.service import secret_sha256
from kiln_gateway.tables import ApiKey
from tests.integration.gateway.conftest import Gateway, bearer

pytestmark = pytest.mark.integration


def session_for(gw: Gateway, email: str) -> dict[str, str]:
    gw.create_account(email)
    return bearer(gw.login(email))


def stored_key(gw: Gateway, key_id: str) -> ApiKey:
    async def load() -> ApiKey:
        async with gw.state.runtime.sessions() as session:
            key = await session.get(ApiKey, key_id)
        assert key is not None
        return key

    return gw.client.portal.call(load)  # type: ignore[union-attr]


def create(gw: Gateway, session: dict[str, str], **body: Any) -> dict[str, Any]:
    response = gw.client.post("/keys", json={"name": "laptop", **body}, headers=session)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


@pytest.mark.parametrize(
    ("sandbox", "prefix", "kind"), [(False, "sk_live_", "live"), (True, "sk_test_", "sandbox")]
)
def test_a_new_key_shows_its_secret_once_and_stores_only_its_hash(
    gateway: Gateway, sandbox: bool, prefix: str, kind: str
) -> None:
    session = session_for(gateway, "ada@example.com")
    key = create(gateway, session, sandbox=sandbox)
    assert key["secret"].startswith(prefix)
    assert key["prefix"] == key["secret"][:12]
    assert (key["kind"], key["sandbox"], key["name"]) == (kind, sandbox, "laptop")
    assert key["created_at"].endswith("Z") and key["last_used_at"] is None
    row = stored_key(gateway, key["id"])
    assert row.secret_sha256 == secret_sha256(key["secret"])
    # kiln-hpke-v1: the stored public key is the one the secret and the stored salt derive.
    assert len(row.result_salt) == 16
    assert derive_result_public_key(key["secret"], row.result_salt) == row.result_public_key
    # The key works at once.
    assert gateway.client.get("/models", headers=bearer(key["secret"])).status_code == 200


def test_the_list_never_shows_a_secret_or_its_hash(gateway: Gateway) -> None:
    session = session_for(gateway, "ada@example.com")
    first = create(gateway, session, name="one")
    second = create(gateway, session, name="two", sandbox=True)
    gateway.client.get("/models", headers=bearer(first["secret"]))
    # Last-used times are written every `last_used_flush_s` (keys/callers.py), not per request.
    gateway.client.portal.call(gateway.state.last_used.flush)  # type: ignore[union-attr]
    response = gateway.client.get("/keys", headers=session)
    assert response.status_code == 200
    body = response.json()
    assert [k["id"] for k in body["data"]] == [second["id"], first["id"]]  # newest first
    assert body["pagination"] == {"page": 1, "per_page": 25, "total_pages": 1, "total_results": 2}
    listed = body["data"][1]
    assert set(listed) == {
        "id",
        "name",
        "prefix",
        "kind",
        "sandbox",
        "created_at",
        "last_used_at",
        "revoked_at",
    }
    assert listed["last_used_at"] is not None
    text = response.text
    for key in (first, second):
        assert key["secret"] not in text
        assert secret_sha256(key["secret"]) not in text
    page = gateway.client.get("/keys?per_page=1&page=2", headers=session).json()
    assert [k["id"] for k in page["data"]] == [first["id"]]
    assert page["pagination"]["total_pages"] == 2


def test_a_revoked_key_fails_on_its_very_next_request(gateway: Gateway) -> None:
    session = session_for(gateway, "ada@example.com")
    key = create(gateway, session)
    api = bearer(key["secret"])
    assert gateway.client.get("/models", headers=api).status_code == 200
    revoked = gateway.client.delete(f"/keys/{key['id']}", headers=session)
    assert revoked.status_code == 200
    assert revoked.json()["data"]["revoked_at"] is not None
    refused = gateway.client.get("/models", headers=api)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "UNAUTHORIZED"
    # Revoking again is harmless; the list hides revoked keys unless asked.
    assert gateway.client.delete(f"/keys/{key['id']}", headers=session).status_code == 200
    assert gateway.client.get("/keys", headers=session).json()["data"] == []
    listed = gateway.client.get("/keys?include_revoked=true", headers=session).json()["data"]
    assert [k["id"] for k in listed] == [key["id"]]


def test_rotation_makes_a_new_key_and_revokes_the_old_one(gateway: Gateway) -> None:
    session = session_for(gateway, "ada@example.com")
    old = create(gateway, session, name="ci", sandbox=True)
    response = gateway.client.post(f"/keys/{old['id']}/rotate", headers=session)
    assert response.status_code == 201, response.text
    new = response.json()["data"]
    assert new["rotated_from"] == old["id"]
    assert new["id"] != old["id"] and new["secret"] != old["secret"]
    assert (new["name"], new["kind"]) == ("ci", "sandbox")
    old_row, new_row = stored_key(gateway, old["id"]), stored_key(gateway, new["id"])
    assert old_row.revoked_at is not None and new_row.revoked_at is None
    assert new_row.result_salt != old_row.result_salt
    assert new_row.result_public_key != old_row.result_public_key
    assert derive_result_public_key(new["secret"], new_row.result_salt) == new_row.result_public_key
    assert gateway.client.get("/models", headers=bearer(old["secret"])).status_code == 401
    assert gateway.client.get("/models", headers=bearer(new["secret"])).status_code == 200
    # A revoked key cannot be rotated (again).
    again = gateway.client.post(f"/keys/{old['id']}/rotate", headers=session)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "CONFLICT"


def test_racing_rotations_make_exactly_one_new_key(gateway: Gateway) -> None:
    session = session_for(gateway, "ada@example.com")
    old = create(gateway, session)

    async def rotate_twice() -> list[int]:
        import httpx

        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver/api/v1"
        ) as client:
            responses = await asyncio.gather(
                *(client.post(f"/keys/{old['id']}/rotate", headers=session) for _ in range(4))
            )
        return sorted(r.status_code for r in responses)

    codes = gateway.client.portal.call(rotate_twice)  # type: ignore[union-attr]
    assert codes == [201, 409, 409, 409]
    assert len(gateway.client.get("/keys", headers=session).json()["data"]) == 1


def test_another_account_s_key_is_not_found(gateway: Gateway) -> None:
    ada = session_for(gateway, "ada@example.com")
    eve = session_for(gateway, "eve@example.com")
    key = create(gateway, ada)
    for method, path in (("DELETE", f"/keys/{key['id']}"), ("POST", f"/keys/{key['id']}/rotate")):
        response = gateway.client.request(method, path, headers=eve)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"]["code"] == "NOT_FOUND"
    missing = gateway.client.delete("/keys/key_" + "0" * 32, headers=ada)
    assert missing.status_code == 404
    assert gateway.client.get("/keys", headers=eve).json()["data"] == []
    assert gateway.client.get("/models", headers=bearer(key["secret"])).status_code == 200


@pytest.mark.parametrize("key_id", ["nope", "key_XYZ", "key_" + "0" * 33, "%00"])
def test_malformed_key_ids_are_4xx(gateway: Gateway, key_id: str) -> None:
    session = session_for(gateway, "ada@example.com")
    response = gateway.client.delete(f"/keys/{key_id}", headers=session)
    assert response.status_code in (404, 422), response.text


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 201},
        {"name": "a", "x": 1},
        {"name": "a", "sandbox": "maybe"},
    ],
)
def test_bad_key_bodies_are_422(gateway: Gateway, body: dict[str, Any]) -> None:
    session = session_for(gateway, "ada@example.com")
    response = gateway.client.post("/keys", json=body, headers=session)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_the_admin_route_makes_keys_the_same_way(gateway: Gateway) -> None:
    account = gateway.create_account("ada@example.com")
    key = gateway.create_key(account["id"], sandbox=True)
    assert key["secret"].startswith("sk_test_") and key["kind"] == "sandbox"
    row = stored_key(gateway, key["id"])
    assert derive_result_public_key(key["secret"], row.result_salt) == row.result_public_key
    session = bearer(gateway.login("ada@example.com"))
    assert [k["id"] for k in gateway.client.get("/keys", headers=session).json()["data"]] == [
        key["id"]
    ]


def test_a_suspended_account_s_keys_and_sessions_get_403(gateway: Gateway) -> None:
    account = gateway.create_account("ada@example.com")
    session = bearer(gateway.login("ada@example.com"))
    key = create(gateway, session)
    gateway.admin("POST", f"/admin/accounts/{account['id']}/suspend")
    assert gateway.client.get("/models", headers=bearer(key["secret"])).status_code == 403
    assert gateway.client.post("/keys", json={"name": "x"}, headers=session).status_code == 403


def test_keys_are_found_by_hash_only(gateway: Gateway) -> None:
    session = session_for(gateway, "ada@example.com")
    create(gateway, session)

    async def secrets_in_db() -> list[str]:
        async with gateway.state.runtime.sessions() as db:
            return list((await db.scalars(select(ApiKey.secret_sha256))).all())

    hashes = gateway.client.portal.call(secrets_in_db)  # type: ignore[union-attr]
    assert all(len(h) == 64 and not h.startswith("sk_") for h in hashes)
