"""Outbound URLs (webhooks, input images) may only reach the public internet.

`check_url_shape` is pure; `resolve_public_addresses` resolves the host once and checks every
address, so callers can pin the connection to what was checked. Loopback is admitted only when
the operator sets KILN_ALLOW_LOOPBACK_URLS (local development).
"""

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
}


class UnsafeUrl(ValueError):
    pass


@dataclass(frozen=True)
class UrlTarget:
    scheme: str
    host: str
    port: int


def check_url_shape(url: str, *, allow_loopback: bool) -> UrlTarget:
    if len(url) > 2048:
        raise UnsafeUrl("URL is longer than 2048 characters")
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
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("URL must not carry credentials")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("URL has no host")
    return UrlTarget(scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80))


def address_refusal(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why this address may not be reached, or None when it may."""
    address = _unmapped(address)
    if address.is_loopback:
        return None if allow_loopback else "loopback address"
    if address in METADATA_ADDRESSES:
        return "cloud metadata address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if address in ipaddress.ip_network("100.64.0.0/10"):
        return "carrier-grade NAT address"
    if address.is_private or address.is_reserved or address.is_unspecified:
        return "private or reserved address"
    if not address.is_global:
        return "non-public address"
    return None


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def resolve_public_addresses(
    url: str, *, allow_loopback: bool
) -> tuple[UrlTarget, list[str]]:
    """Resolve once; refuse if any address is not public. Returns the addresses to pin."""
    target = check_url_shape(url, allow_loopback=allow_loopback)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl("URL host does not resolve") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        raise UnsafeUrl("URL host does not resolve")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        reason = address_refusal(address, allow_loopback=allow_loopback)
        if reason is not None:
            raise UnsafeUrl(f"URL resolves to a {reason}")
        # Plain http passes check_url_shape only when loopback is allowed, and then only
        # for loopback addresses: never in clear text over a real network.
        if target.scheme == "http" and not _unmapped(address).is_loopback:
            raise UnsafeUrl("URL must use https")
    return target, addresses
