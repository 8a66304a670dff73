"""The outbound URL guard: https only, public addresses only, however the address is spelt or
whatever a name resolves to. Names are mapped by an injected resolver (deterministic, no DNS),
except `localhost`, which goes through the system's resolver for real."""

import asyncio
import ipaddress

import pytest

from kiln_runtime.url_guard import (
    UnsafeUrl,
    address_refusal,
    check_url_shape,
    parse_ipv4_host,
    resolve_public_addresses,
)

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"

# What the injected resolver answers for each name.
NAMES = {
    "public.example": [PUBLIC_V4, PUBLIC_V6],
    "loopback.example": ["127.0.0.1"],
    "loopback6.example": ["::1"],
    "private10.example": ["10.0.0.7"],
    "private172.example": ["172.16.5.4"],
    "private192.example": ["192.168.0.10"],
    "linklocal.example": ["169.254.10.20"],
    "metadata.example": ["169.254.169.254"],
    "metadata6.example": ["fd00:ec2::254"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "mapped-private.example": ["::ffff:10.1.2.3"],
    "cgnat.example": ["100.64.3.2"],
    "ula.example": ["fc00::5"],
    "linklocal6.example": ["fe80::1%eth0"],
    "unspecified.example": ["0.0.0.0"],
    "multicast.example": ["239.1.2.3"],
    # One bad address among good ones is enough to refuse: the client could get any of them.
    "mixed.example": [PUBLIC_V4, "10.0.0.1"],
    "empty.example": [],
}


async def fake_resolver(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise OSError(f"no such name {host}")
    return NAMES[host]


async def never_called(host: str, port: int) -> list[str]:
    raise AssertionError(f"the resolver must not be asked about a literal address: {host}")


def refusal(url: str, *, allow_loopback: bool = False) -> str | None:
    async def run() -> None:
        await resolve_public_addresses(url, allow_loopback=allow_loopback, resolver=fake_resolver)

    try:
        asyncio.run(run())
    except UnsafeUrl as exc:
        return str(exc)
    return None


# --- literal addresses, in every spelling ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://127.255.255.254/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://10.0.0.1/hook", "private"),
        ("https://172.16.0.1/hook", "private"),
        ("https://172.31.255.255/hook", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("https://169.254.1.1/hook", "link-local"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://[fd00:ec2::254]/latest/meta-data/", "metadata"),
        ("https://100.100.100.200/", "metadata"),
        ("https://100.64.0.1/hook", "carrier-grade NAT"),
        ("https://100.127.255.254/hook", "carrier-grade NAT"),
        ("https://0.0.0.0/hook", "private or reserved"),
        ("https://[::]/hook", "private or reserved"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://[ff02::1]/hook", "multicast"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://[fe80::1%25eth0]/hook", "link-local"),
        ("https://[fc00::1]/hook", "private"),
        ("https://[fec0::1]/hook", "non-public"),
        ("https://198.18.0.1/hook", "private"),
        ("https://240.0.0.1/hook", "private or reserved"),
        ("https://255.255.255.255/hook", "private or reserved"),
        # IPv4-mapped / embedded IPv6
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://[::ffff:7f00:1]/hook", "loopback"),
        ("https://[0:0:0:0:0:ffff:127.0.0.1]/hook", "loopback"),
        ("https://[::ffff:169.254.169.254]/hook", "metadata"),
        ("https://[::ffff:10.0.0.1]/hook", "private"),
        ("https://[::ffff:100.64.0.1]/hook", "carrier-grade NAT"),
        ("https://[::127.0.0.1]/hook", "IPv4-compatible"),
        ("https://[2002:7f00:1::]/hook", "loopback"),  # 6to4 of 127.0.0.1
        ("https://[2002:a9fe:a9fe::]/hook", "metadata"),  # 6to4 of 169.254.169.254
        ("https://[64:ff9b::7f00:1]/hook", "NAT64"),
        # Decimal, hex, octal and short spellings of IPv4 (WHATWG URL / inet_aton)
        ("https://2130706433/hook", "loopback"),
        ("https://0x7f000001/hook", "loopback"),
        ("https://0X7F000001/hook", "loopback"),
        ("https://017700000001/hook", "loopback"),
        ("https://0177.0.0.1/hook", "loopback"),
        ("https://0x7f.0.0.1/hook", "loopback"),
        ("https://0x7f.1/hook", "loopback"),
        ("https://127.1/hook", "loopback"),
        ("https://127.0.1/hook", "loopback"),
        ("https://127.0.0.1./hook", "loopback"),
        ("https://0/hook", "private or reserved"),
        ("https://2852039166/latest", "metadata"),  # 169.254.169.254
        ("https://0xa9fea9fe/latest", "metadata"),
        ("https://0251.0376.0251.0376/latest", "metadata"),
        ("https://169.254.43518/latest", "metadata"),
        ("https://167772161/hook", "private"),  # 10.0.0.1
        ("https://1681915905/hook", "carrier-grade NAT"),  # 100.64.0.1
        # Unicode spellings that normalise to ASCII digits
        ("https://１２７．０．０．１/hook", "loopback"),
    ],
)
def test_literal_addresses_are_refused_without_resolving(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl, match=reason):
        check_url_shape(url, allow_loopback=False)

    async def run() -> None:
        await resolve_public_addresses(url, allow_loopback=False, resolver=never_called)

    with pytest.raises(UnsafeUrl, match=reason):
        asyncio.run(run())


@pytest.mark.parametrize(
    "host",
    [
        "1.2.3.4.5",
        "256.0.0.1",
        "1.2.3.256",
        "0x100.0.0.1",
        "08.0.0.1",
        "1_0.0.0.1",
        "foo.123",
        "4294967296",
        "127.0.0.1.2",
    ],
)
def test_hosts_that_look_numeric_but_are_no_address_are_refused(host: str) -> None:
    with pytest.raises(UnsafeUrl, match="not a valid address"):
        check_url_shape(f"https://{host}/hook", allow_loopback=False)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.258", "10.1.1.2"),
        ("0x5d.0xb8.0xd8.0x22", PUBLIC_V4),
        ("1572395042", PUBLIC_V4),
        ("0x", "0.0.0.0"),
        ("1.2.3.0x", "1.2.3.0"),
    ],
)
def test_ipv4_spellings_parse_like_browsers(host: str, address: str) -> None:
    assert parse_ipv4_host(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["example.com", "1e100.net", "0x7f000001.example.com", "a.b"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ipv4_host(host) is None


def test_public_literals_pass_without_resolving() -> None:
    async def run(url: str) -> list[str]:
        _target, addresses = await resolve_public_addresses(
            url, allow_loopback=False, resolver=never_called
        )
        return addresses

    assert asyncio.run(run(f"https://{PUBLIC_V4}/hook")) == [PUBLIC_V4]
    assert asyncio.run(run("https://1572395042/hook")) == [PUBLIC_V4]
    assert asyncio.run(run(f"https://[{PUBLIC_V6}]:8443/hook")) == [PUBLIC_V6]
    assert asyncio.run(run("https://[2002:5db8:d822::]/hook")) == ["2002:5db8:d822::"]


# --- names that resolve to bad addresses -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("loopback.example", "loopback"),
        ("loopback6.example", "loopback"),
        ("private10.example", "private"),
        ("private172.example", "private"),
        ("private192.example", "private"),
        ("linklocal.example", "link-local"),
        ("metadata.example", "metadata"),
        ("metadata6.example", "metadata"),
        ("mapped.example", "loopback"),
        ("mapped-private.example", "private"),
        ("cgnat.example", "carrier-grade NAT"),
        ("ula.example", "private"),
        ("linklocal6.example", "link-local"),
        ("unspecified.example", "private or reserved"),
        ("multicast.example", "multicast"),
        ("mixed.example", "private"),
        ("empty.example", "does not resolve"),
        ("unknown.example", "does not resolve"),
    ],
)
def test_names_resolving_to_non_public_addresses_are_refused(name: str, reason: str) -> None:
    message = refusal(f"https://{name}/hook")
    assert message is not None and reason in message, message


def test_a_public_name_passes_and_returns_every_address_to_pin() -> None:
    async def run() -> tuple[str, list[str]]:
        target, addresses = await resolve_public_addresses(
            "https://Public.Example:8443/hook?x=1", allow_loopback=False, resolver=fake_resolver
        )
        return f"{target.scheme}://{target.host}:{target.port}", addresses

    assert asyncio.run(run()) == ("https://public.example:8443", sorted([PUBLIC_V4, PUBLIC_V6]))


def test_localhost_through_the_real_resolver() -> None:
    async def run(url: str, allow_loopback: bool) -> list[str]:
        _target, addresses = await resolve_public_addresses(url, allow_loopback=allow_loopback)
        return addresses

    with pytest.raises(UnsafeUrl, match="loopback"):
        asyncio.run(run("https://localhost/hook", False))
    # RFC 6761 names are loopback whatever a resolver says: refused before asking one.
    for name in ["LOCALHOST.", "api.localhost", "x.y.localhost."]:
        with pytest.raises(UnsafeUrl, match="loopback"):
            check_url_shape(f"https://{name}/hook", allow_loopback=False)
    addresses = asyncio.run(run("http://localhost:9999/hook", True))
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def test_a_resolver_that_hangs_is_cut_off() -> None:
    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return [PUBLIC_V4]

    async def run() -> None:
        await resolve_public_addresses(
            "https://slow.example/", allow_loopback=False, resolver=slow, timeout_s=0.05
        )

    with pytest.raises(UnsafeUrl, match="in time"):
        asyncio.run(run())


# --- KILN_ALLOW_LOOPBACK_URLS admits loopback, and only loopback --------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9999/hook",
        "https://127.0.0.1/hook",
        "http://[::1]:9999/hook",
        "http://127.1:9999/hook",
        "http://2130706433:9999/hook",
        "http://[::ffff:127.0.0.1]:9999/hook",
        "http://loopback.example:9999/hook",
    ],
)
def test_allow_loopback_admits_loopback(url: str) -> None:
    assert refusal(url, allow_loopback=True) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://10.0.0.1/hook", "private"),
        ("https://169.254.169.254/latest", "metadata"),
        ("https://100.64.0.1/hook", "carrier-grade NAT"),
        ("https://0.0.0.0/hook", "private or reserved"),
        ("https://metadata.example/hook", "metadata"),
        ("https://private192.example/hook", "private"),
        # Clear-text http stays loopback-only: not to a public address either.
        (f"http://{PUBLIC_V4}/hook", "https"),
        ("http://public.example/hook", "https"),
    ],
)
def test_allow_loopback_admits_nothing_else(url: str, reason: str) -> None:
    message = refusal(url, allow_loopback=True)
    assert message is not None and reason in message, message


def test_without_the_setting_http_and_loopback_are_refused() -> None:
    for url in ["http://127.0.0.1:9999/hook", "http://public.example/hook"]:
        message = refusal(url)
        assert message is not None and "https" in message


# --- the shape of the URL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "https"),
        ("file:///etc/passwd", "https"),
        ("gopher://example.com/", "https"),
        ("javascript:alert(1)", "https"),
        ("//example.com/hook", "https"),
        ("example.com/hook", "https"),
        ("https:///hook", "no host"),
        ("https://user:pass@example.com/hook", "credentials"),
        ("https://user@example.com/hook", "credentials"),
        ("https://example.com@127.0.0.1/hook", "credentials"),
        ("https://example.com\\@127.0.0.1/", "backslashes"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/\nHost: evil", "control"),
        ("https://example.com/\x00", "control"),
        ("https://exam\u200bple.com/", "control"),
        ("https://example.com:0/hook", "port"),
        ("https://example.com:99999/hook", "malformed"),
        ("https://example.com:http/hook", "malformed"),
        ("https://[::1/hook", "malformed"),
        ("https://[not-an-address]/hook", "malformed"),
        ("https://exa%mple.com/", "not a valid name"),
        ("https://a..b/", "not a valid name"),
        ("https://" + "a" * 64 + ".com/", "not a valid name"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_url_shape_is_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl, match=reason):
        check_url_shape(url, allow_loopback=False)


def test_url_shape_accepts_ordinary_https_urls() -> None:
    target = check_url_shape("HTTPS://Hooks.Example.COM:8443/kiln?x=1#f", allow_loopback=False)
    assert (target.scheme, target.host, target.port, target.address) == (
        "https",
        "hooks.example.com",
        8443,
        None,
    )
    assert check_url_shape("https://bücher.example/h", allow_loopback=False).host == (
        "xn--bcher-kva.example"
    )


def test_address_refusal_keeps_its_contract() -> None:
    assert address_refusal(ipaddress.ip_address(PUBLIC_V4), allow_loopback=False) is None
    assert address_refusal(ipaddress.ip_address(PUBLIC_V6), allow_loopback=False) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert address_refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allow_loopback=True) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), allow_loopback=False) == (
        "loopback address"
    )
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) is not None
