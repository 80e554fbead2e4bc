"""The HTTP API and web page: ``create_app()`` builds the FastAPI app that ``bookcounter serve`` runs."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bookcounter.images import BadImage, ImageTooLarge, ImageTooSmall, decode_image
from bookcounter.settings import Settings, get_settings
from serving.counting import count_books
from serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from serving.model_slot import ModelSlot, Registry

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MULTIPART_OVERHEAD = 64 * 1024  # bytes a multipart body may carry beyond the photo itself
BUSY_RETRY_AFTER_S = 1  # Retry-After of a 503 for too many photos in flight: about one photo's time on CPU
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # answered without the API key (probes)
KEY_COOKIE, KEY_COOKIE_DAYS = "bookcounter_key", 30
NEEDS_KEY = (
    "this server asks for its API key (BOOKCOUNTER_API_KEY): send the header 'X-API-Key: KEY' or "
    "'Authorization: Bearer KEY'; in a browser open /?key=KEY once"
)
TRAIN_HINT = (
    "No champion model yet. Train and promote one: `bookcounter demo` (the whole loop on the sample "
    "photos), or `bookcounter train --dataset vNNNN` then `bookcounter promote --candidate VERSION`. "
    "This server picks up the new champion within {poll:g} s, no restart needed."
)


class InstanceOut(BaseModel):
    score: float
    bbox: list[float]  # [x, y, w, h] in original pixels
    mask: dict[str, Any]  # COCO RLE {"size": [h, w], "counts": str} in original pixels


class CountOut(BaseModel):
    count: int
    model_version: str
    threshold: float
    elapsed_ms: float
    width: int
    height: int
    instances: list[InstanceOut]


class TooLarge(Exception):
    """The request body, or the photo in it, is over the configured limit (413)."""


# --- middleware (pure ASGI, so it sees every response, 413s included) --------------------------
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
    """Counts every answered request by route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

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
            self.metrics.observe(_route_label(scope), status, time.perf_counter() - started)


def _route_label(scope: Scope) -> str:
    """The route's path template; a request refused before routing (early 413) by its own path."""
    route = scope.get("route")
    if route is not None:
        return getattr(route, "path", "unmatched")
    known = {getattr(r, "path", None) for r in scope["app"].routes}
    return scope["path"] if scope["path"] in known else "unmatched"


# --- the app ----------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, registry: Registry | None = None) -> FastAPI:
    """The serving app; ``registry`` defaults to :mod:`trainer.registry` (MLflow)."""
    settings = settings or get_settings()
    if registry is None:
        from trainer import registry as trainer_registry

        registry = trainer_registry
    metrics = ServingMetrics()
    slot = ModelSlot(registry, metrics, poll_seconds=settings.reload_poll_seconds)
    max_bytes = int(settings.max_upload_mb * 1_000_000)
    too_large = f"the photo is over the {settings.max_upload_mb:g} MB upload limit (BOOKCOUNTER_MAX_UPLOAD_MB)"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(slot.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(slot.stop)

    app = FastAPI(
        title="bookcounter",
        summary="Count the books in a photo with the champion Mask R-CNN.",
        lifespan=lifespan,
    )
    app.state.slot, app.state.metrics, app.state.settings = slot, metrics, settings
    # outermost last: metrics see every answer; a refused key or an over-limit Content-Length takes no slot
    app.add_middleware(InFlightLimit, limit=settings.max_in_flight, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=max_bytes + MULTIPART_OVERHEAD, message=too_large)
    api_key = settings.api_key.get_secret_value() if settings.api_key else ""
    if api_key:
        app.add_middleware(ApiKeyGate, key=api_key)
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.exception_handler(TooLarge)
    async def _too_large(request: Request, exc: TooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    def not_ready() -> HTTPException:
        if slot.champion_version is None:
            detail = TRAIN_HINT.format(poll=slot.poll_seconds)
        else:
            detail = (
                f"the champion (version {slot.champion_version}) is not loaded yet: it is loading or failed "
                "to load (see the server log); try again in a few seconds"
            )
        return HTTPException(503, detail, headers={"Retry-After": str(max(1, round(slot.poll_seconds)))})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", summary="The process is up.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="A model is loaded (503 until there is a champion).")
    async def readyz() -> dict[str, str]:
        current = slot.current
        if current is None:
            raise not_ready()
        return {"status": "ready", "model_version": current.version}

    @app.get("/model", summary="The model answering /count: version, counting threshold and NMS IoU, dataset version, metrics.")
    async def model() -> dict[str, Any]:
        if slot.current is None:
            raise not_ready()
        return slot.describe()

    @app.get("/metrics", summary="Prometheus metrics.", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/count",
        response_model=CountOut,
        summary="Count the books in a photo.",
        description=(
            "Send the photo as multipart/form-data (field `image`) or as the raw body (Content-Type "
            "`image/*` or `application/octet-stream`). EXIF orientation is applied; photos larger than "
            "the model's input are downscaled and results mapped back to original pixels. "
            "`?overlay=1` answers a PNG with the masks and numbers drawn instead of JSON."
        ),
        responses={
            200: {"content": {"image/png": {}}},
            400: {"description": "Not a decodable photo (empty, corrupt, truncated)."},
            413: {"description": "Over the upload size or megapixel limit (a decompression bomb is refused by its header)."},
            415: {"description": "Wrong content type."},
            401: {"description": "The server has an API key (BOOKCOUNTER_API_KEY) and the request lacks it."},
            422: {"description": "A photo too small to count books in (the message says the minimum size), or a bad query parameter."},
            503: {"description": "Busy (BOOKCOUNTER_MAX_IN_FLIGHT photos in flight; see Retry-After), or no "
                  "champion model loaded yet (the message says how to train one)."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"image": {"type": "string", "format": "binary"}},
                            "required": ["image"],
                        }
                    },
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def count(request: Request, overlay: bool = Query(False, description="Answer a PNG overlay.")) -> Any:
        if slot.current is None:
            raise not_ready()
        started = time.perf_counter()
        data, name = await read_upload(request, max_bytes, too_large)
        loaded = slot.current  # this request finishes on this model, even if a newer one is swapped in

        def work() -> Any:
            image = decode_image(data, name, settings.max_megapixels, settings.min_photo_side)
            prediction = count_books(image, loaded)
            if overlay:
                png = prediction.overlay_png()
                headers = {"X-Count": str(prediction.count), "X-Model-Version": prediction.model_version}
                return Response(png, media_type="image/png", headers=headers)
            return prediction.to_json(elapsed_ms=(time.perf_counter() - started) * 1000)

        try:
            return await anyio.to_thread.run_sync(work)
        except ImageTooLarge as e:
            raise HTTPException(413, str(e)) from None
        except ImageTooSmall as e:
            raise HTTPException(422, str(e)) from None
        except BadImage as e:
            raise HTTPException(400, str(e)) from None

    return app


async def read_upload(request: Request, max_bytes: int, too_large: str) -> tuple[bytes, str]:
    """The photo's bytes and a name for messages, from a multipart form or the raw body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=4, max_fields=16) as form:
            uploads = [v for v in form.values() if isinstance(v, UploadFile)]
            if not uploads:
                raise HTTPException(400, "the multipart body has no file: send the photo as the form field 'image'")
            upload = form.get("image") if isinstance(form.get("image"), UploadFile) else uploads[0]
            data = await upload.read(max_bytes + 1)
            name = upload.filename or "upload"
    elif content_type in ("", "application/octet-stream") or content_type.startswith("image/"):
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(too_large)
            chunks.append(chunk)
        data, name = b"".join(chunks), "upload"
    else:
        raise HTTPException(
            415,
            f"unsupported content type {content_type!r}: send the photo as multipart/form-data (field 'image') "
            "or as the raw body with Content-Type image/jpeg, image/png, ... or application/octet-stream",
        )
    if len(data) > max_bytes:
        raise TooLarge(too_large)
    return data, name

