"""The counting server's routes: the page, the probes and metrics, and ``POST /count``.

Each route finds the model slot, the metrics and the settings in ``request.app.state`` (set by
:func:`serving.app.create_app`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from bookcounter.images import BadImage, ImageTooLarge, ImageTooSmall, decode_image
from serving.counting import count_books
from serving.metrics import CONTENT_TYPE_LATEST
from serving.middleware import TooLarge
from serving.model_slot import ModelSlot

STATIC_DIR = Path(__file__).parent / "static"
TRAIN_HINT = (
    "No champion model yet. Train and promote one: `bookcounter demo` (the whole loop on the sample "
    "photos), or `bookcounter train --dataset vNNNN` then `bookcounter promote --candidate VERSION`. "
    "This server picks up the new champion within {poll:g} s, no restart needed."
)

page = APIRouter()
probes = APIRouter()
counting = APIRouter()
ROUTERS = (page, probes, counting)


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


def not_ready(slot: ModelSlot) -> HTTPException:
    """The 503 while no model answers: how to train one, or that the champion is still loading."""
    if slot.champion_version is None:
        detail = TRAIN_HINT.format(poll=slot.poll_seconds)
    else:
        detail = (
            f"the champion (version {slot.champion_version}) is not loaded yet: it is loading or failed "
            "to load (see the server log); try again in a few seconds"
        )
    return HTTPException(503, detail, headers={"Retry-After": str(max(1, round(slot.poll_seconds)))})


@page.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@probes.get("/healthz", summary="The process is up.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/readyz", summary="A model is loaded (503 until there is a champion).")
async def readyz(request: Request) -> dict[str, str]:
    slot = request.app.state.slot
    current = slot.current
    if current is None:
        raise not_ready(slot)
    return {"status": "ready", "model_version": current.version}


@probes.get(
    "/model",
    summary="The model answering /count: version, counting threshold and NMS IoU, dataset version, metrics.",
)
async def model(request: Request) -> dict[str, Any]:
    slot = request.app.state.slot
    if slot.current is None:
        raise not_ready(slot)
    return slot.describe()


@probes.get("/metrics", summary="Prometheus metrics.", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@counting.post(
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
        413: {
            "description": "Over the upload size or megapixel limit (a decompression bomb is refused by its header)."
        },
        415: {"description": "Wrong content type."},
        401: {"description": "The server has an API key (BOOKCOUNTER_API_KEY) and the request lacks it."},
        422: {
            "description": "A photo too small to count books in (the message says the minimum size), "
            "or a bad query parameter."
        },
        503: {
            "description": "Busy (BOOKCOUNTER_MAX_IN_FLIGHT photos in flight; see Retry-After), or no "
            "champion model loaded yet (the message says how to train one)."
        },
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
    slot, settings = request.app.state.slot, request.app.state.settings
    if slot.current is None:
        raise not_ready(slot)
    started = time.perf_counter()
    limit, message = upload_limit(settings.max_upload_mb), too_large_message(settings.max_upload_mb)
    data, name = await read_upload(request, limit, message)
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


def upload_limit(max_upload_mb: float) -> int:
    """The largest photo accepted, in bytes (``BOOKCOUNTER_MAX_UPLOAD_MB``)."""
    return int(max_upload_mb * 1_000_000)


def too_large_message(max_upload_mb: float) -> str:
    return f"the photo is over the {max_upload_mb:g} MB upload limit (BOOKCOUNTER_MAX_UPLOAD_MB)"


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
