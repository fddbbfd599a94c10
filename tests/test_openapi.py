"""``GET /openapi.json``: a valid OpenAPI 3.1 document, served with an ETag
and no session, that names exactly the routes the app serves."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from openapi_spec_validator import validate

from server.common.config import Config
from server.web import middlewares
from server.web import state as keys
from server.web.openapi import build

from .openapi_check import Contract

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
# A key with every scope, for the server API's routes (none are served without one).
SERVER_KEY = "openapi:" + "k" * 40 + ":publish,read,moderate"


def every_feature() -> dict[str, Any]:
    """Settings that make the app serve every route it has."""
    return {"server_api_keys": [SERVER_KEY]} if "server_api_keys" in Config.model_fields else {}


def served(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route, but the static files, the
    catch-all (unknown paths' 404 and 405) and aiohttp's HEAD beside each GET."""
    routes = set()
    for route in app.router.routes():
        if isinstance(route.resource, web.StaticResource) or route.handler is middlewares.unrouted:
            continue
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        routes.add((route.method, route.resource.canonical))
    return routes


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_the_document_is_valid_openapi_3_1(make_config: Callable[..., Config]) -> None:
    for config in (Config(), make_config(message_max_chars=50, anonymous="none")):
        document = build(config)
        assert document["openapi"] == "3.1.0"
        validate(document)
    # The validator can fail: a response without its description is not OpenAPI.
    broken = build(Config())
    del broken["paths"]["/healthz"]["get"]["responses"]["200"]["description"]
    with pytest.raises(Exception, match="description"):
        validate(broken)


async def test_every_route_served_is_documented_and_every_documented_route_served(
    make_app: Callable[..., Any],
) -> None:
    app = await make_app(**every_feature())
    routes, document = served(app), documented(build(app[keys.CONFIG]))
    assert routes - document == set(), "routes the document does not describe"
    assert document - routes == set(), "documented routes the app does not serve"


def test_every_operation_declares_its_errors_and_the_json_error_body() -> None:
    document = build(Config())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for status in ("400", "405", "429", "431", "500"):
                assert status in responses, (method, path, status)
            retry_after = responses["429"]["headers"]["Retry-After"]
            assert retry_after["required"] is True
            for status, response in responses.items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)
            if path.startswith("/server/v1/"):
                scopes = operation["security"][0]["serverKey"]
                assert len(scopes) == 1 and {"401", "403", "404"} <= set(responses)
            elif path.startswith("/api/"):
                assert "401" in responses, (method, path)


async def test_openapi_json_is_cached_by_etag_and_writes_no_session(
    make_app: Callable[..., Any], aiohttp_client: Callable[..., Any], redis: aioredis.Redis
) -> None:
    app = await make_app(message_max_chars=123)
    contract = Contract(build(Config()))
    client = await aiohttp_client(app, middlewares=(contract,))
    before = await redis.dbsize()
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert body == json.loads(json.dumps(build(app[keys.CONFIG])))
    # (The served document is this configuration's: its limits.)
    text = body["components"]["schemas"]["NewMessage"]["properties"]["text"]
    assert text["maxLength"] == 123
    etag = resp.headers["ETag"]
    assert resp.headers["Cache-Control"] == "public, max-age=86400"
    assert "Set-Cookie" not in resp.headers
    again = await client.get("/openapi.json", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag and "Set-Cookie" not in again.headers
    other = await client.get("/openapi.json", headers={"If-None-Match": '"other"'})
    assert other.status == 200 and other.headers["ETag"] == etag
    # Cross-site or cookie-laden, it still makes no session.
    cookie = await client.get("/openapi.json", cookies={"chat_session": "forged"})
    assert cookie.status == 200 and "Set-Cookie" not in cookie.headers
    assert await redis.dbsize() == before
    assert contract.checked[("get", "/openapi.json", 200)] == 3
    assert contract.checked[("get", "/openapi.json", 304)] == 1
