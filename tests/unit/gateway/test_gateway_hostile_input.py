"""Hostile input never gets a 500: each kind of bad request, through the real app (every
middleware, dependency and handler), gets the documented 4xx in the error envelope."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln_gateway.errors import ErrorEnvelope
from kiln_gateway.jobs.metadata import (
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    METADATA_MAX_ENTRIES,
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_STRING_LENGTH,
)
from tests.unit.gateway.hostile_support import ADMIN_TOKEN, GatewayUnderTest, gateway_under_test

GOOD = {"model": "kiln/prompt-to-image", "input": {"prompt": "a lighthouse in a storm"}}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayUnderTest]:
    # A rate limit high enough that this module's requests never meet it.
    async with gateway_under_test(
        tmp_path_factory.mktemp("hostile"),
        rate_limit_live_create=100_000,
        rate_limit_live_read=100_000,
    ) as under_test:
        yield under_test


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"].startswith("req_")
    body = ErrorEnvelope.model_validate(response.json())
    assert body.error.code == code, response.text
    assert body.error.request_id == response.headers["x-request-id"]
    return response.json()["error"]  # type: ignore[no-any-return]


async def post_raw(
    gateway: GatewayUnderTest, path: str, content: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await gateway.client.post(
        path, content=content, headers={**gateway.auth(), **JSON, **(headers or {})}
    )


async def test_the_good_request_is_accepted(gateway: GatewayUnderTest) -> None:
    response = await gateway.client.post("/jobs", json=GOOD, headers=gateway.auth())
    assert response.status_code == 202, response.text


# --- malformed JSON, bad UTF-8, numbers, nesting ---------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"model":',
        b"{'model': 'x'}",
        b'{"model": "x",}',
        b"[1, 2",
        b"\x7b\x22",
        b"undefined",
        b'{"model": "x"} trailing',
        b"\xef\xbb\xbf{}",  # a BOM is not JSON
    ],
)
async def test_malformed_json_is_400(gateway: GatewayUnderTest, content: bytes) -> None:
    error = assert_error(await post_raw(gateway, "/jobs", content), 400, "BAD_REQUEST")
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "\xff\xfe"}',
        b'{"model": "caf\xe9"}',  # latin-1
        b'{"model": "\xed\xa0\x80"}',  # an encoded surrogate
        '{"model": "x"}'.encode("utf-16"),
        b'{"model": "\xc0\xaf"}',  # overlong
    ],
)
async def test_bad_utf8_is_400(gateway: GatewayUnderTest, content: bytes) -> None:
    error = assert_error(await post_raw(gateway, "/jobs", content), 400, "BAD_REQUEST")
    assert "UTF-8" in error["message"]


async def test_lone_surrogate_escapes_are_400(gateway: GatewayUnderTest) -> None:
    body = b'{"model": "kiln/prompt-to-image", "input": {"prompt": "\\ud800"}}'
    error = assert_error(await post_raw(gateway, "/jobs", body), 400, "BAD_REQUEST")
    assert error["details"][0]["field"] == "input.prompt"
    paired = b'{"model": "kiln/prompt-to-image", "input": {"prompt": "a \\ud83d\\ude00 smile"}}'
    assert (await post_raw(gateway, "/jobs", paired)).status_code == 202


@pytest.mark.parametrize(
    "number",
    [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"9" * 5000],
)
async def test_numbers_json_cannot_carry_are_400(gateway: GatewayUnderTest, number: bytes) -> None:
    body = b'{"model": "kiln/prompt-to-image", "input": {"prompt": "x", "seed": ' + number + b"}}"
    assert_error(await post_raw(gateway, "/jobs", body), 400, "BAD_REQUEST")
    in_metadata = b'{"model": "kiln/prompt-to-image", "input": {"prompt": "x"}, "metadata": {"a": '
    assert_error(await post_raw(gateway, "/jobs", in_metadata + number + b"}}"), 400, "BAD_REQUEST")


@pytest.mark.parametrize("depth", [33, 1000, 200_000])
async def test_deeply_nested_json_is_400(gateway: GatewayUnderTest, depth: int) -> None:
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
        body = opener * depth + b"1" + closer * depth
        if len(body) > gateway.settings.max_body_bytes:
            body = opener * depth  # unterminated, still must not recurse to death
        error = assert_error(await post_raw(gateway, "/jobs", body), 400, "BAD_REQUEST")
        assert "nested" in error["message"] or "JSON" in error["message"]


async def test_nesting_within_the_limit_reaches_validation(gateway: GatewayUnderTest) -> None:
    nested: Any = "x"
    for _ in range(20):
        nested = {"a": nested}
    response = await gateway.client.post(
        "/jobs", json={**GOOD, "input": {"prompt": nested}}, headers=gateway.auth()
    )
    assert_error(response, 422, "VALIDATION_ERROR")


# --- size -------------------------------------------------------------------------------------


async def test_a_declared_huge_body_is_413(gateway: GatewayUnderTest) -> None:
    body = json.dumps({**GOOD, "metadata": {"pad": "x" * 2_000_000}}).encode()
    error = assert_error(await post_raw(gateway, "/jobs", body), 413, "PAYLOAD_TOO_LARGE")
    assert error["message"]


async def test_a_chunked_huge_body_without_content_length_is_413(
    gateway: GatewayUnderTest,
) -> None:
    """Past the limit the body is no longer kept, but it is read to its end (within the drain
    bound) so that a client that sends it all before reading gets the 413."""
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"model": "kiln/prompt-to-image", "input": {"prompt": "'
        for _ in range(100):  # 6.25 MiB
            sent += 65536
            yield b"a" * 65536
        yield b'"}}'

    response = await post_raw(gateway, "/jobs", chunks())
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert sent == 100 * 65536  # read to its end: the client could finish sending
    assert "connection" not in response.headers  # all read: the connection may stay open


async def test_a_refused_body_is_read_only_up_to_the_drain_bound(tmp_path: Path) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # 62.5 MiB if nobody stopped reading
            sent += 65536
            yield b"a" * 65536

    drain = 4 * 1024 * 1024
    async with gateway_under_test(tmp_path, refused_body_drain_bytes=drain) as gateway:
        response = await post_raw(gateway, "/jobs", chunks())
        assert_error(response, 413, "PAYLOAD_TOO_LARGE")
        assert response.headers["connection"] == "close"  # the rest was not read
        assert sent <= drain + 2 * 65536


async def test_a_declared_body_beyond_the_drain_bound_is_not_read(tmp_path: Path) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 65536
            yield b"a" * 65536

    async with gateway_under_test(tmp_path, refused_body_drain_bytes=1024 * 1024) as gateway:
        headers = {"content-length": str(100 * 65536)}
        response = await post_raw(gateway, "/jobs", chunks(), headers)
        assert_error(response, 413, "PAYLOAD_TOO_LARGE")
        assert response.headers["connection"] == "close"
        assert sent <= 65536  # answered before reading: it could never all be read


async def test_a_chunked_body_within_the_limit_is_read_whole(gateway: GatewayUnderTest) -> None:
    body = json.dumps(GOOD).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    assert (await post_raw(gateway, "/jobs", chunks())).status_code == 202


async def test_a_bad_content_length_is_a_4xx(gateway: GatewayUnderTest) -> None:
    # Behind uvicorn, h11 answers 400 itself; an ASGI server that passes it on gets a 4xx here.
    request = gateway.client.build_request(
        "POST", "/jobs", content=json.dumps(GOOD), headers={**gateway.auth(), **JSON}
    )
    request.headers["content-length"] = "12abc"
    response = await gateway.client.send(request)
    assert response.status_code in (400, 413)
    ErrorEnvelope.model_validate(response.json())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "model": "m" * 101}, "model"),
        ({**GOOD, "input": {"prompt": "a" * 1001}}, "input.prompt"),
        ({**GOOD, "input": {"prompt": "a" * 200_000}}, "input.prompt"),
        ({**GOOD, "webhook_url": "https://example.com/" + "a" * 2048}, "webhook_url"),
        ({"model": "kiln/text-to-speech", "input": {"text": "b" * 2001}}, "input.text"),
    ],
)
async def test_huge_strings_are_422_naming_the_field(
    gateway: GatewayUnderTest, body: dict[str, Any], field: str
) -> None:
    response = await gateway.client.post("/jobs", json=body, headers=gateway.auth())
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [d["field"] for d in error["details"]] == [field]
    assert len(response.content) < 4096  # the huge value is not echoed back


def nested_metadata(depth: int) -> dict[str, Any]:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({"note": "x" * (METADATA_MAX_STRING_LENGTH + 1)}, "longer than"),
        ({"list": ["x" * (METADATA_MAX_STRING_LENGTH + 1)]}, "longer than"),
        ({"k" * (METADATA_MAX_KEY_LENGTH + 1): 1}, "key"),
        ({f"k{i}": i for i in range(METADATA_MAX_ENTRIES + 1)}, "entries"),
        ({"list": list(range(METADATA_MAX_ENTRIES + 1))}, "entries"),
        (nested_metadata(METADATA_MAX_DEPTH + 1), "deeper"),
        ({"a": [[["deep"]]]}, "deeper"),
        ({f"k{i}": "x" * 900 for i in range(20)}, "bytes"),
        ({"a": "b\x00c"}, "NUL"),
        ({"a\x00": "b"}, "NUL"),
    ],
)
async def test_metadata_is_bounded(
    gateway: GatewayUnderTest, metadata: dict[str, Any], words: str
) -> None:
    response = await gateway.client.post(
        "/jobs", json={**GOOD, "metadata": metadata}, headers=gateway.auth()
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"].startswith("metadata")
    assert words in json.dumps(error["details"])


async def test_metadata_at_its_bounds_is_accepted(gateway: GatewayUnderTest) -> None:
    metadata: dict[str, Any] = {
        "order": "42",
        "deep": nested_metadata(METADATA_MAX_DEPTH - 1),
        "list": [1, 2.5, True, None, {"a": "b"}],
        "k" * METADATA_MAX_KEY_LENGTH: "x" * 100,
    }
    metadata.update({f"n{i}": i for i in range(METADATA_MAX_ENTRIES - len(metadata))})
    assert len(json.dumps(metadata)) < METADATA_MAX_BYTES
    response = await gateway.client.post(
        "/jobs", json={**GOOD, "metadata": metadata}, headers=gateway.auth()
    )
    assert response.status_code == 202, response.text
    assert response.json()["data"]["metadata"] == metadata


# --- types and unknown fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"model": 5, "input": {"prompt": "x"}}, {"model"}),
        ({"model": "kiln/prompt-to-image", "input": []}, {"input"}),
        ({"model": "kiln/prompt-to-image", "input": "prompt"}, {"input"}),
        ({**GOOD, "input": {"prompt": 7}}, {"input.prompt"}),
        ({**GOOD, "input": {"prompt": "x", "seed": "7"}}, {"input.seed"}),
        ({**GOOD, "input": {"prompt": "x", "width": 513}}, {"input.width"}),
        ({**GOOD, "webhook_url": 1}, {"webhook_url"}),
        ({**GOOD, "metadata": []}, {"metadata"}),
        ({**GOOD, "metadata": "x"}, {"metadata"}),
        ({**GOOD, "sandbox": {"outcome": "exploded"}}, {"sandbox.outcome"}),
        ({**GOOD, "sandbox": {"delay_s": "soon"}}, {"sandbox.delay_s"}),
        ({}, {"model", "input"}),
    ],
)
async def test_wrong_types_are_422_naming_each_field(
    gateway: GatewayUnderTest, body: Any, fields: set[str]
) -> None:
    response = await gateway.client.post("/jobs", json=body, headers=gateway.auth())
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert {d["field"] for d in error["details"]} == fields


@pytest.mark.parametrize("body", [[], "job", 42, None, True])
async def test_a_body_that_is_not_an_object_is_422(gateway: GatewayUnderTest, body: Any) -> None:
    response = await post_raw(gateway, "/jobs", json.dumps(body))
    assert_error(response, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "priority": "high"}, "priority"),
        ({**GOOD, "input": {"prompt": "x", "steps": 50}}, "input.steps"),
        ({**GOOD, "sandbox": {"outcome": "completed", "extra": 1}}, "sandbox.extra"),
        ({**GOOD, "Model": "x"}, "Model"),
    ],
)
async def test_unknown_fields_are_422(
    gateway: GatewayUnderTest, body: dict[str, Any], field: str
) -> None:
    response = await gateway.client.post(
        "/jobs", json=body, headers=gateway.auth(gateway.sandbox_key)
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert field in {d["field"] for d in error["details"]}


async def test_admin_bodies_are_bounded_too(gateway: GatewayUnderTest) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for body, field in [
        ({"email": "a@" + "b" * 400, "password": "a long passphrase"}, "email"),
        ({"email": "a@b.c", "password": "p" * 10_000}, "password"),
        ({"email": "a@b.c", "password": "a long passphrase", "name": "n" * 201}, "name"),
        ({"email": "a@b.c", "password": "a long passphrase", "role": "root"}, "role"),
    ]:
        response = await gateway.client.post("/admin/accounts", json=body, headers=admin)
        error = assert_error(response, 422, "VALIDATION_ERROR")
        assert field in {d["field"] for d in error["details"]}


# --- content type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonp",
        "json",
        "",
    ],
)
async def test_a_body_that_is_not_sent_as_json_is_400(
    gateway: GatewayUnderTest, content_type: str
) -> None:
    response = await post_raw(gateway, "/jobs", json.dumps(GOOD), {"content-type": content_type})
    error = assert_error(response, 400, "BAD_REQUEST")
    assert "application/json" in error["message"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"],
)
async def test_json_media_types_are_accepted(gateway: GatewayUnderTest, content_type: str) -> None:
    response = await post_raw(gateway, "/jobs", json.dumps(GOOD), {"content-type": content_type})
    assert response.status_code == 202, response.text


async def test_a_body_without_content_type_is_400(gateway: GatewayUnderTest) -> None:
    request = gateway.client.build_request(
        "POST", "/jobs", content=json.dumps(GOOD), headers=gateway.auth()
    )
    request.headers.pop("content-type", None)
    error = assert_error(await gateway.client.send(request), 400, "BAD_REQUEST")
    assert "application/json" in error["message"]


async def test_an_empty_body_needs_no_content_type(gateway: GatewayUnderTest) -> None:
    # POST /jobs/{id}/cancel has no body: no Content-Type is needed, whatever one is sent.
    job = await gateway.client.post("/jobs", json=GOOD, headers=gateway.auth())
    job_id = job.json()["data"]["id"]
    for headers in ({}, {"content-type": "text/plain"}):
        response = await gateway.client.post(
            f"/jobs/{job_id}/cancel", headers={**gateway.auth(), **headers}
        )
        assert response.status_code < 500, response.text
        assert response.status_code != 400, response.text


# --- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic dXNlcjpwYXNz",
        "Token sk_live_abc",
        "sk_live_abc",
        "Bearer sk_live_" + "a" * 43,
        "Bearer sk_test_nope",
        "Bearer sk_live_" + "a" * 600,
        "Bearer not-a-key",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        f"Bearer {ADMIN_TOKEN}",
    ],
)
async def test_missing_or_malformed_auth_is_401(
    gateway: GatewayUnderTest, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("GET", "/models"), ("GET", "/jobs"), ("POST", "/jobs")]:
        response = await gateway.client.request(
            method, path, headers=headers, json=GOOD if method == "POST" else None
        )
        assert_error(response, 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "raw", [b"Bearer sk_live_\xff\xfe", "Bearer sk_live_\u00e9\u00e9".encode(), b"Bearer \x01"]
)
async def test_raw_non_ascii_auth_header_bytes_are_401(
    gateway: GatewayUnderTest, raw: bytes
) -> None:
    response = await gateway.client.get("/models", headers=[(b"Authorization", raw)])
    assert_error(response, 401, "UNAUTHORIZED")


async def test_admin_routes_refuse_api_keys_and_bad_tokens(gateway: GatewayUnderTest) -> None:
    for token in [gateway.live_key, "x", ADMIN_TOKEN + "x"]:
        response = await gateway.client.get(
            "/admin/accounts", headers={"Authorization": f"Bearer {token}"}
        )
        assert_error(response, 401, "UNAUTHORIZED")


# --- path ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    [
        "nope",
        "job_",
        "job_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        "job_" + "0" * 31,
        "job_" + "0" * 33,
        "JOB_" + "0" * 32,
        "job_" + "0" * 32 + "%0a",
        "%00",
        "job_%00",
        "..%2f..%2fadmin",
        "%ff%fe",
        "%C3%A9",
        "x" * 5000,
        "1 OR 1=1",
        "job_00000000000000000000000000000000",  # well formed, not there
    ],
)
async def test_path_ids_that_are_not_ids_are_404(gateway: GatewayUnderTest, job_id: str) -> None:
    for method, suffix in [("GET", ""), ("POST", "/cancel"), ("GET", "/events")]:
        response = await gateway.client.request(
            method, f"/jobs/{job_id}{suffix}", headers=gateway.auth()
        )
        assert_error(response, 404, "NOT_FOUND")


@pytest.mark.parametrize("path", ["/admin/accounts/%00/suspend", "/admin/accounts/nope/suspend"])
async def test_admin_path_ids_are_404(gateway: GatewayUnderTest, path: str) -> None:
    response = await gateway.client.post(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert_error(response, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "token", ["x", "a.b", "a.b.c", "%00", "%ff.%fe", "é.é", "x" * 5000, "..%2F..%2Fetc%2Fpasswd"]
)
async def test_file_tokens_that_are_not_tokens_are_404(
    gateway: GatewayUnderTest, token: str
) -> None:
    assert_error(await gateway.client.get(f"/files/{token}"), 404, "NOT_FOUND")


async def test_unknown_routes_and_methods(gateway: GatewayUnderTest) -> None:
    assert_error(await gateway.client.get("/nope", headers=gateway.auth()), 404, "NOT_FOUND")
    response = await gateway.client.put("/jobs", headers=gateway.auth())
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]
    ErrorEnvelope.model_validate(response.json())


# --- NUL characters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "input": {"prompt": "a\x00b"}}, "input.prompt"),
        ({**GOOD, "model": "kiln/prompt-to-image\x00"}, "model"),
        ({**GOOD, "webhook_url": "https://example.com/\x00"}, "webhook_url"),
        ({**GOOD, "input": {"prompt\x00": "x"}}, "input.prompt\x00"),
    ],
)
async def test_nul_in_strings_is_422_naming_the_field(
    gateway: GatewayUnderTest, body: dict[str, Any], field: str
) -> None:
    error = assert_error(
        await gateway.client.post("/jobs", json=body, headers=gateway.auth()),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"] == field


async def test_nul_in_the_query_is_422_naming_the_parameter(gateway: GatewayUnderTest) -> None:
    response = await gateway.client.get("/jobs?page=1&model=a%00b", headers=gateway.auth())
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [d["field"] for d in error["details"]] == ["model"]


# --- the URL guard through POST /jobs ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://2130706433/hook",
        "https://0x7f000001/hook",
        "https://0177.0.0.1/hook",
        "https://127.1/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://10.0.0.1/hook",
        "https://192.168.0.1/hook",
        "https://172.16.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "https://100.64.0.1/hook",
        "https://user:pw@example.com/hook",
        "ftp://example.com/hook",
        "not a url",
    ],
)
async def test_unsafe_webhook_urls_are_422(gateway: GatewayUnderTest, url: str) -> None:
    response = await gateway.client.post(
        "/jobs", json={**GOOD, "webhook_url": url}, headers=gateway.auth()
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [d["field"] for d in error["details"]] == ["webhook_url"]


async def test_loopback_webhooks_only_when_the_operator_allows(tmp_path: Path) -> None:
    async with gateway_under_test(tmp_path, allow_loopback_urls=True) as gateway:
        ok = await gateway.client.post(
            "/jobs",
            json={**GOOD, "webhook_url": "http://127.0.0.1:9999/hook"},
            headers=gateway.auth(),
        )
        assert ok.status_code == 202, ok.text
        for url in ["http://10.0.0.1/hook", "https://169.254.169.254/", "https://100.64.0.1/"]:
            refused = await gateway.client.post(
                "/jobs", json={**GOOD, "webhook_url": url}, headers=gateway.auth()
            )
            assert_error(refused, 422, "VALIDATION_ERROR")
