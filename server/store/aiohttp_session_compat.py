"""What the session store relies on of aiohttp-session beyond its documented API.

Checked on aiohttp-session 2.12.1 (with redis-py 8.2.0);
``tests/test_compat_aiohttp_session.py`` fails when one of these changes, or
when a private name of the signed store (``_secret``, ``_sign``) becomes one
of aiohttp-session's. Check them against a new aiohttp-session release.

- ``RedisStorage`` keeps a session under ``<cookie_name>_<key>`` (its
  ``load_session`` reads it there: :meth:`RedisStorageBase.redis_key`), with
  the key made by its ``_key_factory`` (:meth:`~RedisStorageBase.new_key`)
  and the value by ``_encoder(_get_session_data(session))``, read back by
  ``_decoder``
  (:meth:`~RedisStorageBase.encode`); it reads and writes through
  ``_redis``, which its constructor accepts only as a
  ``redis.asyncio.Redis`` (:class:`RedisStorageBase` puts a Cluster client
  there after the check).
- The session middleware keeps the storage of a request under
  ``request[STORAGE_KEY]`` (:func:`storage_of`); a stream's is put there by
  ``server.web.middlewares.sessions`` instead, and ``get_session`` reads
  it from there alike. ``get_session`` keeps the session it loaded under
  ``request[SESSION_KEY]``, where it finds it again (and the middleware, to
  save it): a session put there is the request's (:func:`use_session`,
  :func:`drop_session`). A stream drops it once set up
  (``server.web.transports.sink.forget_handshake``).
- That key, and the session's, are strings, which aiohttp warns about
  (``web.NotAppKeyWarning``, once a key; ignored by aiohttp outside the
  tests, and by name in the tests' settings in ``pyproject.toml``).
"""

from __future__ import annotations

from typing import Any

import aiohttp_session
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_session.redis_storage import RedisStorage

# The releases these were checked on (tests/test_compat_aiohttp_session.py
# says when another is installed: check it, then add it).
CHECKED_ON = ("2.12.1",)


class RedisStorageBase(RedisStorage):
    """aiohttp-session's Redis store, of any client with GET and SET (a Redis
    Cluster client too), what a subclass needs of its internals named."""

    def __init__(self, redis: aioredis.Redis, **kwargs: Any) -> None:
        # aiohttp-session accepts only a redis.asyncio.Redis; a Redis Cluster
        # client has the same GET and SET, so it is put in place after the
        # check, which is handed an unconnected stand-in.
        super().__init__(redis if isinstance(redis, aioredis.Redis) else aioredis.Redis(), **kwargs)
        self._redis = redis

    @property
    def redis(self) -> aioredis.Redis:
        """The client the store reads and writes sessions with."""
        return self._redis

    def new_key(self) -> str:
        """A new session's key, as the store makes them."""
        return self._key_factory()

    def encode(self, session: aiohttp_session.Session) -> str:
        """The session as the store writes it to Redis."""
        return self._encoder(self._get_session_data(session))

    def decode(self, raw: str) -> Any:
        """What :meth:`encode` wrote, read back (``ValueError`` when it is not that)."""
        return self._decoder(raw)

    def redis_key(self, key: str) -> str:
        """Where the store keeps the session of ``key`` in Redis."""
        return self.cookie_name + "_" + key


def storage_of(request: web.Request) -> aiohttp_session.AbstractStorage:
    """The store the session middleware gave ``request``."""
    storage: aiohttp_session.AbstractStorage = request[aiohttp_session.STORAGE_KEY]
    return storage


def use_session(request: web.Request, session: aiohttp_session.Session) -> None:
    """Make ``session`` the request's: ``get_session`` answers it, and the
    middleware saves it when it changes."""
    request[aiohttp_session.SESSION_KEY] = session


def drop_session(request: web.Request) -> None:
    """Forget the request's session: ``get_session`` loads it again."""
    request.pop(aiohttp_session.SESSION_KEY, None)
