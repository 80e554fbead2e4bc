"""The counting server's ASGI middlewares (pure ASGI, so they see every response, 413s included).

In the order :func:`serving.app.create_app` stacks them, outermost first: :class:`RequestMetrics`
(every answer counted and timed), :class:`ApiKeyGate` (with ``BOOKCOUNTER_API_KEY``),
:class:`BodyLimit` (an over-limit body is refused before it takes a slot), :class:`InFlightLimit`.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import ServingMetrics

BUSY_RETRY_AFTER_S = 1  # Retry-After of a 503 for too many photos in flight: about one photo's time on CPU
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # answered without the API key (probes)
KEY_COOKIE, KEY_COOKIE_DAYS = "bookcounter_key", 30
NEEDS_KEY = (
    "this server asks for its API key (BOOKCOUNTER_API_KEY): send the header 'X-API-Key: KEY' or "
    "'Authorization: Bearer KEY'; in a browser open /?key=KEY once"
)


class TooLarge(Exception):
    """The request body, or the photo in it, is over the configured limit (413)."""


class BodyLimit:
    """Refuses bodies over ``max_bytes``: by Content-Length up front, else while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int, message: str) -> None:
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise TooLarge(self.message)
            return message

        await self.app(scope, limited, send)


class InFlightLimit:
    """At most ``limit`` ``POST /count`` at once, each from before its body is read until its answer starts.

    One more is answered 503 with ``Retry-After`` at once: its body is not read (uvicorn discards
    it) and nothing queues, so a burst of big uploads costs at most ``limit`` photos of memory.
    """

    def __init__(self, app: ASGIApp, limit: int, metrics: ServingMetrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics
        self.in_flight = 0  # only touched on the event loop: no lock needed
        self.message = (
            f"the server is busy: {limit} photos are being counted (BOOKCOUNTER_MAX_IN_FLIGHT); "
            f"try again in {BUSY_RETRY_AFTER_S} s"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/count":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            self.metrics.busy.inc()
            busy = JSONResponse({"detail": self.message}, 503, headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
            return await busy(scope, receive, send)
        self.in_flight += 1
        self.metrics.in_flight.inc()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.in_flight -= 1
                self.metrics.in_flight.dec()

        async def send_and_release(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()  # the work is done: a client that has its answer can get the next slot
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()


class ApiKeyGate:
    """With ``BOOKCOUNTER_API_KEY`` set, every request but ``/healthz`` and ``/readyz`` must carry it.

    Accepted as the header ``X-API-Key: KEY``, ``Authorization: Bearer KEY``, the query ``?key=KEY``
    or the cookie a browser gets for it: a ``GET`` with a right ``?key=`` is answered with that
    cookie and a redirect to the same URL without the key, so ``http://HOST:PORT/?key=KEY`` opens
    the page, and the page's own requests carry the cookie.
    """

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        request = Request(scope)  # headers, cookies and query only; the body is not read
        authorization = request.headers.get("authorization", "")
        bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
        from_query = request.query_params.get("key")
        given = from_query or request.headers.get("x-api-key") or bearer or request.cookies.get(KEY_COOKIE)
        if given is None or not secrets.compare_digest(given.encode(), self.key):
            refused = JSONResponse({"detail": NEEDS_KEY}, 401, headers={"WWW-Authenticate": "Bearer"})
            return await refused(scope, receive, send)
        if from_query and scope["method"] == "GET":
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "key"])
            response = RedirectResponse(scope["path"] + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(KEY_COOKIE, from_query, max_age=KEY_COOKIE_DAYS * 86400, httponly=True, samesite="lax")
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class RequestMetrics:
    """Counts every answered request by route template and status, and times it.

    ``paths`` are the app's route paths: a request refused before routing (an early 413 or 503)
    is labelled by its own path when it is one of them, else ``unmatched``.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, paths: frozenset[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe(self._label(scope), status, time.perf_counter() - started)

    def _label(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path", "unmatched")
        return scope["path"] if scope["path"] in self.paths else "unmatched"
