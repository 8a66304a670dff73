"""A battery of hostile values sent to every operation the served OpenAPI document lists (so a
route added later is covered the day it appears): each query parameter, path parameter and
body gets values no client should send, and the answer must be a documented 4xx, never a 5xx
or a 2xx that took nonsense for data."""

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from kiln_gateway.errors import ErrorEnvelope
from tests.unit.gateway.hostile_support import ADMIN_TOKEN, GatewayUnderTest, gateway_under_test

METHODS = ("get", "put", "post", "delete", "patch")

HOSTILE_VALUES = [
    "",
    "¹",  # a digit to str.isdigit(), not to int()
    "٣",  # an Arabic-Indic digit
    "1e999",
    "NaN",
    "-1",
    "99999999999999999999999999",
    "x" * 5000,
    "' OR 1=1 --",
    "../../etc/passwd",
    "\u202e\ufeff",
    "%ff%fe",
    "a\nb",
    "😀",
]
HOSTILE_BODIES: list[tuple[bytes, str]] = [
    (b"", "application/json"),
    (b"null", "application/json"),
    (b"[]", "application/json"),
    (b'"x"', "application/json"),
    (b"{", "application/json"),
    (b'{"a": NaN}', "application/json"),
    (b"\xff\xfe", "application/json"),
    (b"[" * 100 + b"]" * 100, "application/json"),
    (json.dumps({"x" * 300: "y" * 100_000}).encode(), "application/json"),
    (b"a=b", "application/x-www-form-urlencoded"),
    (b"<a/>", "application/xml"),
]


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayUnderTest]:
    async with gateway_under_test(
        tmp_path_factory.mktemp("battery"),
        rate_limit_live_create=100_000,
        rate_limit_live_read=100_000,
    ) as under_test:
        yield under_test


@pytest.fixture(scope="module")
async def document(gateway: GatewayUnderTest) -> dict[str, Any]:
    return (await gateway.client.get("http://gateway.test/openapi.json")).json()  # type: ignore[no-any-return]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, item[method])
        for path, item in document["paths"].items()
        for method in METHODS
        if method in item
    ]


def credentials(gateway: GatewayUnderTest, operation: dict[str, Any]) -> dict[str, str]:
    schemes = {name for requirement in operation.get("security", []) for name in requirement}
    if "adminToken" in schemes:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return gateway.auth()  # an API key; a session route answers it 401, which is fine here


def fill_path(path: str, value: str = "x") -> str:
    encoded = quote(value, safe="%")  # "%00" stays an escape; "\n" becomes one
    return re.sub(r"\{[^}]+\}", lambda _: encoded, path)


def assert_documented_refusal(
    response: httpx.Response, operation: dict[str, Any], what: str
) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert str(response.status_code) in operation["responses"] or response.status_code in (
            404,
            405,
        ), f"{what}: undocumented {response.status_code} {response.text[:300]}"
        ErrorEnvelope.model_validate(response.json())


async def test_hostile_query_values_never_get_a_5xx(
    gateway: GatewayUnderTest, document: dict[str, Any]
) -> None:
    for path, method, operation in operations(document):
        queries = [p for p in operation.get("parameters", []) if p["in"] == "query"]
        for parameter in queries:
            for value in HOSTILE_VALUES:
                response = await gateway.client.request(
                    method.upper(),
                    fill_path(path.removeprefix("/api/v1")),
                    params={parameter["name"]: value},
                    headers=credentials(gateway, operation),
                )
                what = f"{method.upper()} {path}?{parameter['name']}={value[:20]!r}"
                assert_documented_refusal(response, operation, what)


async def test_dates_in_queries_are_iso_text_not_numbers(
    gateway: GatewayUnderTest, document: dict[str, Any]
) -> None:
    for path, method, operation in operations(document):
        for parameter in operation.get("parameters", []):
            schema = json.dumps(parameter.get("schema", {}))
            if parameter["in"] != "query" or '"format": "date' not in schema:
                continue
            for value in ["0", "0.5", "1700000000", "-3"]:
                response = await gateway.client.request(
                    method.upper(),
                    fill_path(path.removeprefix("/api/v1")),
                    params={parameter["name"]: value},
                    headers=credentials(gateway, operation),
                )
                what = f"{method.upper()} {path}?{parameter['name']}={value}"
                assert response.status_code == 422, f"{what}: {response.status_code}"


# The calendar's ends, alone and with offsets that push them past it: range arithmetic on
# them (a default 30-day start, an exclusive upper bound, a shift to UTC) must not overflow.
EDGE_DATES = ["0001-01-01", "0001-01-02", "9999-12-30", "9999-12-31"]
EDGE_DATETIMES = [
    "0001-01-01T00:00:00",
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59.999999",
    "9999-12-31T23:59:59.999999-23:59",
    "9999-12-31T23:59:59+23:59",
]


async def test_dates_at_the_calendars_ends_never_get_a_5xx(
    gateway: GatewayUnderTest, document: dict[str, Any]
) -> None:
    """Every date query parameter of every operation, at each end of the calendar, alone and
    combined with every other date parameter of the operation at each end."""
    for path, method, operation in operations(document):
        dated: dict[str, list[str]] = {}
        for parameter in operation.get("parameters", []):
            schema = json.dumps(parameter.get("schema", {}))
            if parameter["in"] != "query":
                continue
            if '"format": "date-time"' in schema:
                dated[parameter["name"]] = EDGE_DATETIMES
            elif '"format": "date"' in schema:
                dated[parameter["name"]] = EDGE_DATES
        queries: list[dict[str, str]] = [
            {name: value} for name, values in dated.items() for value in values
        ]
        names = sorted(dated)
        for index, first in enumerate(names):
            for second in names[index + 1 :]:
                queries += [{first: a, second: b} for a in dated[first] for b in dated[second]]
        for params in queries:
            for extra in ({}, {"group_by": "day"}, {"group_by": "model"}):
                response = await gateway.client.request(
                    method.upper(),
                    fill_path(path.removeprefix("/api/v1")),
                    params={**params, **extra} if "/usage/stats" in path else params,
                    headers=credentials(gateway, operation),
                )
                what = f"{method.upper()} {path}?{params}"
                assert_documented_refusal(response, operation, what)
                if "/usage/stats" not in path:
                    break


async def test_hostile_path_values_never_get_a_5xx(
    gateway: GatewayUnderTest, document: dict[str, Any]
) -> None:
    for path, method, operation in operations(document):
        if "{" not in path:
            continue
        for value in [*HOSTILE_VALUES[1:], "%00", "%2e%2e", "job_" + "0" * 32]:
            response = await gateway.client.request(
                method.upper(),
                fill_path(path.removeprefix("/api/v1"), value),
                headers=credentials(gateway, operation),
                json={} if "requestBody" in operation else None,
            )
            assert_documented_refusal(response, operation, f"{method.upper()} {path} ← {value!r}")


async def test_hostile_bodies_never_get_a_5xx(
    gateway: GatewayUnderTest, document: dict[str, Any]
) -> None:
    for path, method, operation in operations(document):
        if "requestBody" not in operation:
            continue
        for body, content_type in HOSTILE_BODIES:
            response = await gateway.client.request(
                method.upper(),
                fill_path(path.removeprefix("/api/v1"), "x"),
                content=body,
                headers={**credentials(gateway, operation), "content-type": content_type},
            )
            what = f"{method.upper()} {path} ← {body[:30]!r}"
            assert_documented_refusal(response, operation, what)
            assert response.status_code >= 400, what
