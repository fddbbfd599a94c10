"""Where a request comes from (the peer, or the client a trusted proxy forwarded
for), and how many connections each address holds.

Budgets per client address (new sessions, messages, streams) need the real
client. Behind a reverse proxy every peer is the proxy, so ``X-Forwarded-For``
and ``X-Forwarded-Proto`` are believed, but only from the addresses and
networks in ``trusted_proxies``: anyone else could write them. The
forwarded-for list is read from the right (the entry the nearest proxy
added) and the first address that is not a trusted proxy is the client's.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from aiohttp import hdrs, web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# A stream's request asks for its client's address several times (the
# connection's count, forwarding, budgets, limits), and a client connects
# again and again: parsed once, while it is among the recent ones.
RECENT_ADDRESSES = 4096


@functools.lru_cache(maxsize=RECENT_ADDRESSES)
def parse_address(value: str) -> IPAddress | None:
    """The IP address ``value`` names (an IPv4-mapped IPv6 one as IPv4);
    None when it is none. (Remembered: a client's address is parsed for
    each of its requests, by several checks.)"""
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

    def trusts_any(self) -> bool:
        """Whether any proxy is trusted (else no forwarding header is read)."""
        return bool(self.networks)

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


@functools.lru_cache(maxsize=RECENT_ADDRESSES)
def owner_of(address: str | None) -> str:
    """The owner an address's budgets and limits are kept under (see
    :mod:`server.store.ratelimit`): an IPv6 client has a whole /64."""
    parsed = parse_address(address) if address else None
    if parsed is None:
        return address or "unknown"
    return _key(parsed)


def _key(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class OpenConnections:
    """How many connections each client address has open in this worker, up to ``limit``.

    Counted as a connection is accepted, by its peer's address (an IPv6
    client's /64, as its budgets): a trusted proxy's connections are not
    counted, since whose they are is only known from their headers.
    """

    def __init__(self, limit: int, proxies: Proxies) -> None:
        self.limit = limit
        self._proxies = proxies
        self._open: dict[str, int] = {}

    def key(self, peer: str | None) -> str | None:
        """What a connection from ``peer`` counts under; None: it is not counted."""
        address = parse_address(peer) if peer else None
        if address is None or self._proxies.trusts(address):
            return None
        return _key(address)

    def add(self, key: str) -> bool:
        """Count one more connection of ``key``; False (not counted) when it has ``limit``."""
        count = self._open.get(key, 0)
        if count >= self.limit:
            return False
        self._open[key] = count + 1
        return True

    def remove(self, key: str) -> None:
        count = self._open.pop(key, 0) - 1
        if count > 0:
            self._open[key] = count


def from_client(request: web.Request, proxies: Proxies) -> web.Request:
    """The request with ``remote`` (and ``scheme``) the client's when the peer
    is a trusted proxy; else the request as it is."""
    peer = request.remote
    if not proxies.trusts_any() or not proxies.trusts(parse_address(peer) if peer else None):
        return request
    client = proxies.client(peer, request.headers.getall(hdrs.X_FORWARDED_FOR, ()))
    proto = request.headers.get(hdrs.X_FORWARDED_PROTO, "").split(",")[-1].strip().lower()
    if proto in ("http", "https"):
        return request.clone(remote=client or "", scheme=proto)
    return request.clone(remote=client or "")
