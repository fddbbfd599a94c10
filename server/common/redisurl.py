"""Where Redis is: one server, a Redis Cluster, or a primary watched by Sentinel.

One setting, ``redis_url``, names all three:

- ``redis://host:port/db``, ``rediss://...``, ``unix:///path?db=0``: one
  server. If that server turns out to be a cluster node, the main process
  rewrites the URL to the cluster form below before the workers start, so
  that naming any node of a cluster is enough.
- ``redis+cluster://[user:password@]host:port``: a Redis Cluster, reached
  through any of its nodes (``rediss+cluster://`` with TLS).
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``:
  the primary that the Sentinels at those addresses know as ``service``
  (``mymaster`` when omitted). The password is the primary's; Sentinels
  that need their own give it as ``?sentinel_password=...``.

This module parses them (no I/O, no redis-py); :mod:`server.store.connect`
opens a client of either kind, and the workers' long-lived clients are made
in :mod:`server.store.clients`.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Literal

Kind = Literal["single", "cluster", "sentinel"]

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SERVICE = "mymaster"


class BadRedisURL(ValueError):
    """A ``redis_url`` this server cannot use; the message says why."""


@dataclasses.dataclass(frozen=True)
class Sentinels:
    """What a ``redis+sentinel://`` URL names."""

    addresses: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None


def kind_of(url: str) -> Kind:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        return "single"
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    if scheme == SENTINEL_SCHEME:
        return "sentinel"
    schemes = ", ".join(f"{s}://" for s in (*SINGLE_SCHEMES, *CLUSTER_SCHEMES, SENTINEL_SCHEME))
    raise BadRedisURL(f"expected a {schemes} URL, got {url!r}")


def validate(url: str) -> str:
    """``url`` if this server can use it, else :class:`BadRedisURL`."""
    kind = kind_of(url)
    if kind == "sentinel":
        sentinels(url)
    elif kind == "cluster":
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise BadRedisURL(f"a cluster URL names a node, host:port: {url!r}")
        if parts.path.strip("/") not in ("", "0"):
            raise BadRedisURL(f"Redis Cluster has only database 0: {url!r}")
    return url


def node_url(url: str) -> str:
    """The plain URL of the node a cluster URL names (what redis-py expects)."""
    scheme, rest = url.split("://", 1)
    return f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}"


def cluster_url(url: str) -> str:
    """The cluster form of a plain ``redis://`` or ``rediss://`` URL."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.lower()}+cluster://{rest}"


def address_of(url: str) -> str:
    """The host of a plain URL (``[...]`` around an IPv6 address)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return f"[{host}]" if ":" in host else host


def at_address(url: str, address: str) -> str:
    """The plain ``url``, its credentials and options kept, at ``address``
    (``host:port``, as a cluster names its nodes)."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    host, _, port = address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port}"))


def sentinels(url: str) -> Sentinels:
    parts = urllib.parse.urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    addresses = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise BadRedisURL(f"a Sentinel URL lists host:port pairs: {url!r}")
        addresses.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BadRedisURL(f"a Sentinel URL ends in /service or /service/db: {url!r}")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) or None
    query = urllib.parse.parse_qs(parts.query)
    return Sentinels(
        addresses=addresses,
        service=path[0] if path else DEFAULT_SERVICE,
        db=int(path[1]) if len(path) == 2 else 0,
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def shown(url: str) -> str:
    """``url`` fit for a log line: its passwords masked."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = "&".join(
        f"{name}=***" if name.endswith("password") else f"{name}={value}"
        for name, value in urllib.parse.parse_qsl(parts.query)
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # (urlunsplit would also rewrite "unix:///path" as "unix:/path")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
