"""Responses checked against the OpenAPI document, as the tests' clients get them.

:class:`Contract` is an aiohttp client middleware: every response to a
path and method the document has is validated with openapi-core (status,
headers, and the body against its schema); anything else (static files,
unknown paths, HEAD) passes unchecked, so a client may also reach routes
the document does not describe. A stream (SSE, a WebSocket's 101) is
checked without its body, which never ends. A 405 is checked against the
path's errors: the document has no operation for a method it refuses.

Test modules marked ``openapi`` have their clients (the ``client``
fixture's, and :func:`tests.support.user`'s) check every response.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from openapi_core import Config as CoreConfig
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.response.validators import V31ResponseHeadersValidator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from server.common.config import Config
from server.web.openapi import build

STREAMS = ("text/event-stream",)


def _template_re(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")


@dataclass
class _Request:
    """A client request as openapi-core reads it."""

    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    body: bytes | None = None
    content_type: str = ""


@dataclass
class _Response:
    status_code: int
    content_type: str
    headers: Headers
    data: bytes | None


@dataclass
class Contract:
    """The document, and what was checked against it: (method, path template, status)."""

    document: dict[str, Any]
    checked: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.full = OpenAPI.from_dict(self.document)
        headers_only = CoreConfig(response_validator_cls=V31ResponseHeadersValidator)
        self.headers_only = OpenAPI.from_dict(self.document, config=headers_only)
        self.paths = [(_template_re(p), p, item) for p, item in self.document["paths"].items()]

    def operation(self, method: str, path: str, status: int) -> tuple[str, str] | None:
        """The documented (method, template) a response is checked as; None: unchecked."""
        for pattern, template, item in self.paths:
            if pattern.match(path):
                if method in item:
                    return method, template
                if status == 405:
                    return next(iter(item)), template
                return None
        return None

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        response = await handler(request)
        await self.check(request, response)
        return response

    async def check(self, request: ClientRequest, response: ClientResponse) -> None:
        method = request.method.lower()
        if method == "head":
            return
        found = self.operation(method, request.url.path, response.status)
        if found is None:
            return
        method, template = found
        mimetype = response.headers.get("Content-Type", "").lower()
        streaming = response.status == 101 or mimetype.split(";")[0] in STREAMS
        data = None
        if not streaming:
            try:
                data = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                return  # cut short: the test sees that for itself
        url = request.url
        core_request = _Request(
            host_url=f"{url.scheme}://{url.raw_authority}",
            path=url.raw_path,
            method=method,
            parameters=RequestParameters(
                query=ImmutableMultiDict(list(url.query.items())),
                header=Headers(list(request.headers.items())),
                cookie=ImmutableMultiDict(),
            ),
        )
        headers = Headers(list(response.headers.items()))
        core_response = _Response(response.status, mimetype, headers, data)
        what = f"{request.method} {url.path_qs} answered {response.status}"
        if streaming:
            self._check_stream(template, method, response.status, mimetype, what)
            validator = self.headers_only
        else:
            validator = self.full
        try:
            validator.validate_response(core_request, core_response)
        except Exception as exc:
            detail = getattr(exc, "__cause__", None) or exc
            body = (data or b"")[:300]
            raise AssertionError(f"{what}, not as the document says: {detail!r} {body!r}") from exc
        self.checked[(method, template, response.status)] += 1

    def _check_stream(
        self, template: str, method: str, status: int, mimetype: str, what: str
    ) -> None:
        responses = self.document["paths"][template][method]["responses"]
        documented = responses.get(str(status), {}).get("content", {})
        if status != 101 and mimetype.split(";", maxsplit=1)[0] not in documented:
            raise AssertionError(f"{what} with {mimetype!r}: the document has {list(documented)}")


_CONTRACT: Contract | None = None


def contract() -> Contract:
    """The document of a default configuration (response schemas do not depend on it)."""
    global _CONTRACT  # noqa: PLW0603 (built once per run: openapi-core's setup is slow)
    if _CONTRACT is None:
        _CONTRACT = Contract(build(Config()))
    return _CONTRACT


class Checking:
    """Whether the running test's clients check responses (its module is marked ``openapi``)."""

    on = False


def middlewares() -> tuple[Contract, ...]:
    """What a test's client session is given: the checker, when the test checks."""
    return (contract(),) if Checking.on else ()


def client_session(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
    """``aiohttp.ClientSession(...)`` that checks responses when the test does."""
    return aiohttp.ClientSession(*args, middlewares=middlewares(), **kwargs)
