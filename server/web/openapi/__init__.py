"""``GET /openapi.json``: one OpenAPI 3.1 document for the browser API, its
streams, the server API and the operators' endpoints.

The document is built in Python rather than kept as a JSON or YAML file:
each operation is declared once, with its own answers and errors, and what
every request of its kind can get (a bad ``Host``, 405, a late or oversize
body, Redis' 503, a cross-site write, a bad sign-in token) is added by one
function (:func:`~server.web.openapi.operations.operation`) rather than
repeated a few hundred times by hand. Patterns and limits come from the
constants the handlers check (room names, ids, page sizes) and from the
configuration (the longest message), so the two cannot disagree.

The operations are declared apart from the route table, by side:
:mod:`.operators` (the page, health, metrics, this document),
:mod:`.browser` (section 6 of the specification, its streams included) and
:mod:`.server_api` (section 6b); :mod:`.schemas` holds the components,
:mod:`.operations` how an operation is declared, and :mod:`.document`
assembles and serves the whole. The tests hold the two
together: every route the app serves is in the document and every path
and method of the document is served, and the suite's responses are
validated against it.
"""

from .document import OpenApiDocument, build

__all__ = ["OpenApiDocument", "build"]
