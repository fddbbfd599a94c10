"""Where a request comes from: the peer, or the client a trusted proxy forwarded for.

Budgets per client address (new sessions, messages, streams) need the real
client. Behind a reverse proxy every peer is the proxy, so ``X-Forwarded-For``
and ``X-Forwarded-Proto`` are believed, but only from the addresses and
networks in ``trusted_proxies``: anyone else could write them. The
forwarded-for list is read from the right (the entry the nearest proxy
added) and the first address that is not a trusted proxy is the client's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import hdrs, web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(value: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class Proxies:
    """The proxies whose forwarding headers are believed."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(item, strict=False) for item in trusted]

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client's address, given the peer's and the ``X-Forwarded-For`` values."""
        address = parse_address(peer) if peer else None
        if not self.trusts(address):
            return peer
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            forwarded = parse_address(hop)
            if forwarded is None:
                break  # garbage: believe nothing further left
            address = forwarded
            if not self.trusts(address):
                break
        return str(address)


def budget_key(address: str | None) -> str:
    """What an address's budget is kept under: an IPv6 client has a whole /64."""
    parsed = parse_address(address) if address else None
    if parsed is None:
        return address or "unknown"
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def from_client(request: web.Request, proxies: Proxies) -> web.Request:
    """The request with ``remote`` (and ``scheme``) the client's when the peer
    is a trusted proxy; else the request as it is."""
    peer = request.remote
    if not proxies.trusts(parse_address(peer) if peer else None):
        return request
    client = proxies.client(peer, request.headers.getall(hdrs.X_FORWARDED_FOR, ()))
    proto = request.headers.get(hdrs.X_FORWARDED_PROTO, "").split(",")[-1].strip().lower()
    if proto in ("http", "https"):
        return request.clone(remote=client or "", scheme=proto)
    return request.clone(remote=client or "")
