"""Outbound URLs (webhooks, input images) may only reach the public internet.

`check_url_shape` is pure: it refuses what no resolver needs to see (a scheme other than https,
credentials, control characters, a host that is an address in any spelling and not a public one).
`resolve_public_addresses` resolves the host once and checks every address, so callers can pin
the connection to what was checked. Loopback is admitted only when the operator sets
KILN_ALLOW_LOOPBACK_URLS (local development), and then only loopback: private ranges stay refused.

Hosts are read the way browsers and glibc's `inet_aton` read them (the WHATWG URL standard's
IPv4 parser), so `2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` are all 127.0.0.1, and a
host whose last label is a number but that is no valid address is refused rather than guessed at.
Addresses that carry an IPv4 address inside an IPv6 one (IPv4-mapped `::ffff:a.b.c.d`, 6to4
`2002::/16`) are judged by the IPv4 address inside.
"""

import asyncio
import ipaddress
import socket
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Resolves (host, port) to address strings. Tests pass their own to map names deterministically.
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048
DEFAULT_RESOLVE_TIMEOUT_S = 5.0

METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}
CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Ranges Python's `is_global` still calls global but that nobody should call back to.
EXTRA_REFUSED = (
    ipaddress.ip_network("192.88.99.0/24"),  # 6to4 relay anycast (deprecated)
    ipaddress.ip_network("fec0::/10"),  # IPv6 site-local (deprecated, still routed inside)
)
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class UnsafeUrl(ValueError):
    pass


@dataclass(frozen=True)
class UrlTarget:
    scheme: str
    host: str  # lowercase ASCII (IDNA) name, or the canonical text of a literal address
    port: int
    address: IPAddress | None = None  # set when the host is an address, in whatever spelling


def check_url_shape(url: str, *, allow_loopback: bool) -> UrlTarget:
    """Everything that can be refused without resolving the host."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"URL is longer than {MAX_URL_LENGTH} characters")
    if any(unicodedata.category(ch)[0] in "CZ" for ch in url) or "\\" in url:
        # Spaces, control and invisible characters, backslashes: parsers disagree about them,
        # and a URL that means one thing here and another to the HTTP client is an attack.
        raise UnsafeUrl("URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl("URL is malformed") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UnsafeUrl("URL must use https")
    if scheme == "http" and not allow_loopback:
        raise UnsafeUrl("URL must use https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeUrl("URL must not carry credentials")
    if port == 0:
        raise UnsafeUrl("URL port must be between 1 and 65535")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("URL has no host")
    host, address = _parse_host(host)
    if address is None and not allow_loopback and _is_localhost_name(host):
        raise UnsafeUrl("URL points to a loopback address")  # RFC 6761: always loopback
    if address is not None:
        reason = address_refusal(address, allow_loopback=allow_loopback)
        if reason is not None:
            raise UnsafeUrl(f"URL points to a {reason}")
        if scheme == "http" and not _unwrapped(address).is_loopback:
            raise UnsafeUrl("URL must use https")
    return UrlTarget(
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        address=address,
    )


def address_refusal(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why this address may not be reached, or None when it may."""
    address = _unwrapped(address)
    if address.is_loopback:
        return None if allow_loopback else "loopback address"
    if address in METADATA_ADDRESSES:
        return "cloud metadata address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if address in CARRIER_GRADE_NAT:
        return "carrier-grade NAT address"
    if isinstance(address, ipaddress.IPv6Address) and address in NAT64:
        return "NAT64 address"
    if _ipv4_compatible(address):
        return "IPv4-compatible IPv6 address"
    if address.is_private or address.is_reserved or address.is_unspecified:
        return "private or reserved address"
    if not address.is_global or any(address in network for network in EXTRA_REFUSED):
        return "non-public address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (getaddrinfo), as address strings."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_public_addresses(
    url: str,
    *,
    allow_loopback: bool,
    resolver: Resolver | None = None,
    timeout_s: float = DEFAULT_RESOLVE_TIMEOUT_S,
) -> tuple[UrlTarget, list[str]]:
    """Resolve once; refuse if any address is not public. Returns the addresses to pin."""
    target = check_url_shape(url, allow_loopback=allow_loopback)
    if target.address is not None:
        return target, [str(target.address)]
    try:
        async with asyncio.timeout(timeout_s):
            resolved = await (resolver or system_resolver)(target.host, target.port)
    except TimeoutError as exc:
        raise UnsafeUrl("URL host did not resolve in time") from exc
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise UnsafeUrl("URL host does not resolve") from exc
    addresses = sorted(set(resolved))
    if not addresses:
        raise UnsafeUrl("URL host does not resolve")
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError as exc:
            raise UnsafeUrl("URL host resolves to something that is not an address") from exc
        reason = address_refusal(address, allow_loopback=allow_loopback)
        if reason is not None:
            raise UnsafeUrl(f"URL resolves to a {reason}")
        # Plain http passes check_url_shape only when loopback is allowed, and then only
        # for loopback addresses: never in clear text over a real network.
        if target.scheme == "http" and not _unwrapped(address).is_loopback:
            raise UnsafeUrl("URL must use https")
    return target, addresses


def parse_ipv4_host(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a URL host names, read as browsers do (WHATWG URL, like `inet_aton`):
    1 to 4 parts, each decimal, `0x` hex or `0` octal, the last one filling the remaining
    bytes. None when the host is a name (its last label is not a number); UnsafeUrl when it
    looks like a number but is not a valid address."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not parts or not _is_number(parts[-1]):
        return None
    if len(parts) > 4:
        raise UnsafeUrl("URL host is not a valid address")
    try:
        numbers = [_ipv4_number(part) for part in parts]
    except ValueError as exc:
        raise UnsafeUrl("URL host is not a valid address") from exc
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise UnsafeUrl("URL host is not a valid address")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _is_number(label: str) -> bool:
    if label[:2].lower() == "0x":
        return all(ch in "0123456789abcdefABCDEF" for ch in label[2:])
    return label != "" and all(ch in "0123456789" for ch in label)


def _ipv4_number(part: str) -> int:
    # Strict digit sets: int() alone would also take "+1", " 1" and "1_0".
    if part[:2].lower() == "0x":
        digits, base, allowed = part[2:], 16, "0123456789abcdefABCDEF"
    elif len(part) > 1 and part.startswith("0"):
        digits, base, allowed = part[1:], 8, "01234567"
    else:
        digits, base, allowed = part, 10, "0123456789"
    if not all(ch in allowed for ch in digits) or (base == 10 and not digits):
        raise ValueError(f"not a number: {part!r}")
    return int(digits, base) if digits else 0


def _parse_host(host: str) -> tuple[str, IPAddress | None]:
    """(the host as ASCII, the address it is if it is one)."""
    if ":" in host:  # only a bracketed IPv6 literal has colons in its host
        try:
            address = ipaddress.ip_address(host)
        except ValueError as exc:
            raise UnsafeUrl("URL host is not a valid address") from exc
        return str(address), address
    try:
        # NFKC first: fullwidth digits and dots are how `１２７．０．０．１` sneaks past.
        ascii_host = unicodedata.normalize("NFKC", host).encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise UnsafeUrl("URL host is not a valid name") from exc
    if not ascii_host or not set(ascii_host) <= _HOST_CHARS:
        raise UnsafeUrl("URL host is not a valid name")
    ipv4 = parse_ipv4_host(ascii_host)
    if ipv4 is not None:
        return str(ipv4), ipv4
    return ascii_host, None


def _is_localhost_name(host: str) -> bool:
    name = host.removesuffix(".")
    return name == "localhost" or name.endswith(".localhost")


def _unwrapped(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4), else the address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def _ipv4_compatible(address: IPAddress) -> bool:
    """`::a.b.c.d` (deprecated by RFC 4291): some stacks still route it to a.b.c.d."""
    return (
        isinstance(address, ipaddress.IPv6Address) and int(address) >> 32 == 0 and int(address) > 1
    )


class CachingResolver:
    """A resolver that remembers each host's addresses for `ttl_s` (bounded to `size` hosts).

    What it hands back is checked again by `resolve_public_addresses` on every call, and the
    connection is pinned to a checked address: a name whose DNS changes meanwhile reaches the
    address checked before, never an unchecked one. It saves a `getaddrinfo` per webhook and
    per submitted URL (docs/architecture.md, "Hot paths")."""

    def __init__(
        self, resolver: Resolver | None = None, *, ttl_s: float = 10.0, size: int = 4096
    ) -> None:
        self._resolver = resolver or system_resolver
        self._ttl_s = ttl_s
        self._size = size
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def __call__(self, host: str, port: int) -> list[str]:
        now = asyncio.get_running_loop().time()
        hit = self._cache.get((host, port))
        if hit is not None and hit[0] > now:
            return hit[1]
        addresses = await self._resolver(host, port)
        if len(self._cache) >= self._size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[(host, port)] = (now + self._ttl_s, addresses)
        return addresses
