"""The one module that talks to Label Studio: the server process, the SDK client, the project,
photo upload and the brush-mask format.

Server: ``label-studio start`` from its own venv (``settings.ls_venv``), bound to 127.0.0.1,
data (SQLite, uploaded photos) under ``settings.ls_data_dir``, the admin user and a legacy API
token bootstrapped from settings, a pid file and a log under ``settings.run_dir``. Setting
``BOOKCOUNTER_LS_DATABASE_URL=postgresql://user:pw@host:5432/db`` makes it use PostgreSQL.

Photos are *uploaded* to Label Studio (its own media store), not served through local-file
storage: the server then needs no access to our folders (it works the same when it runs
elsewhere or on PostgreSQL), and every consumer (editor, ML backend, collect) fetches the very
same bytes through one authenticated URL. What is uploaded is an upright copy
(:func:`served_copy`): EXIF orientation applied, 8-bit RGB, so the pixel grid the annotator
paints on is the one our masks use. Each task carries the inbox file's ``sha256`` in its data;
that is the idempotency key of pre-labelling.

Every call that reaches the server goes through :func:`call`, which retries with backoff while
the server is down or restarting and then raises :class:`LabelStudioUnavailable`.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import httpx
import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter import brush
from label_studio_sdk.core.api_error import ApiError

from bookcounter import locks
from bookcounter.errors import UserError
from bookcounter.processes import Server
from bookcounter.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE = "image"  # <Image name> and the task data key holding the photo URL
BRUSH = "mask"  # <BrushLabels name>: the answer format (prelabel predictions, annotations)
POLYGON = "polygon"  # <PolygonLabels name>: accepted from annotators, rasterised by collect
LABEL = "book"

# KeyPointLabels/RectangleLabels are the ML backend's prompt tools (smart = sent to the
# backend as the annotator clicks); collect ignores them, only brush and polygon are masks.
LABEL_CONFIG = f"""<View>
  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true" brightnessControl="true"/>
  <BrushLabels name="{BRUSH}" toName="{IMAGE}">
    <Label value="{LABEL}" background="#ff0066"/>
  </BrushLabels>
  <PolygonLabels name="{POLYGON}" toName="{IMAGE}" strokeWidth="2" pointSize="small">
    <Label value="{LABEL}" background="#00a0ff"/>
  </PolygonLabels>
  <KeyPointLabels name="click" toName="{IMAGE}" smart="true">
    <Label value="{LABEL}" smart="true" background="#ffa500" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="{IMAGE}" smart="true">
    <Label value="{LABEL}" background="#ffa500" showInline="true"/>
  </RectangleLabels>
</View>"""

HEALTH_TIMEOUT_S = 120.0
MEDIA_URL = "/data/"  # Label Studio's MEDIA_URL: the file-uploads API gives names relative to it
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # ~15 s in all: covers a server restart (~4 s)


class LabelStudioError(UserError):
    """Label Studio refused something or is set up wrongly; the message says what to do."""


class LabelStudioUnavailable(LabelStudioError):
    """The server did not answer, even after retries."""


# --- the server process ---------------------------------------------------------------------


@dataclass
class ServerStatus:
    running: bool  # our pid is alive
    healthy: bool  # /health answers
    pid: int | None
    url: str
    log_file: Path

    def line(self) -> str:
        if self.running and self.healthy:
            return f"Label Studio is running at {self.url} (pid {self.pid}); log {self.log_file}"
        if self.running:
            return f"Label Studio (pid {self.pid}) is starting or stuck: {self.url}/health does not answer; log {self.log_file}"
        if self.healthy:
            return f"something not started by bookcounter answers at {self.url}"
        return f"Label Studio is not running (would listen on {self.url})"


def _server(settings: Settings) -> Server:
    return Server("labelstudio", settings.run_dir)


def is_healthy(settings: Settings, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{settings.ls_url}/health", timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def server_status(settings: Settings) -> ServerStatus:
    server = _server(settings)
    return ServerStatus(server.pid() is not None, is_healthy(settings), server.pid(), settings.ls_url, server.log_file)


def server_env(settings: Settings) -> dict[str, str]:
    """Environment of the server process (and only of it)."""
    env = {
        "PATH": f"{settings.ls_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(settings.ls_venv),
        "LABEL_STUDIO_BASE_DATA_DIR": str(settings.ls_data_dir),
        "LABEL_STUDIO_USERNAME": settings.ls_username,
        "LABEL_STUDIO_PASSWORD": settings.ls_password,
        "LABEL_STUDIO_USER_TOKEN": settings.ls_token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # let Label Studio reach an ML backend on loopback (the one bookcounter starts)
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
        # "Start training" posts START_TRAINING to the ML backend's /webhook (not the legacy /train)
        "LABEL_STUDIO_ff_back_dev_1417_start_training_mlbackend_webhooks_250122_long": "true",
        # no internet here, and nothing to report home
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "DJANGO_DB": "sqlite",
        "PYTHONPATH": "",
    }
    if settings.ls_database_url:
        url = urlparse(settings.ls_database_url)
        if url.scheme not in ("postgres", "postgresql") or not url.path.strip("/"):
            raise LabelStudioError(
                f"ls_database_url {settings.ls_database_url!r}: expected postgresql://user:password@host:port/database"
            )
        env.update(
            {
                "DJANGO_DB": "default",
                "POSTGRE_NAME": url.path.strip("/"),
                "POSTGRE_USER": unquote(url.username or "postgres"),
                "POSTGRE_PASSWORD": unquote(url.password or ""),
                "POSTGRE_HOST": url.hostname or "localhost",
                "POSTGRE_PORT": str(url.port or 5432),
            }
        )
    return env


def start_server(settings: Settings, timeout: float = HEALTH_TIMEOUT_S) -> ServerStatus:
    """Start Label Studio (no-op when ours is already up) and wait until ``/health`` answers."""
    server = _server(settings)
    if server.pid() is None and is_healthy(settings):
        raise LabelStudioError(
            f"port {settings.ls_port} is taken by a server bookcounter did not start; "
            "stop it or set BOOKCOUNTER_LS_PORT"
        )
    exe = settings.ls_venv / "bin" / "label-studio"
    if not exe.is_file():
        raise LabelStudioError(f"{exe} not found: create the Label Studio venv ('make setup') or set BOOKCOUNTER_LS_VENV")
    settings.ls_data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), "start", "--no-browser", "--internal-host", settings.ls_host, "--port", str(settings.ls_port)]
    server.start(cmd, f"{settings.ls_url}/health", env=server_env(settings), timeout=timeout, cwd=settings.ls_data_dir)
    return server_status(settings)


def stop_server(settings: Settings) -> bool:
    """Stop the server we started (its pid file's process group, nothing else); False if none ran."""
    return _server(settings).stop()


# --- calling the API ---------------------------------------------------------------------------


def client(settings: Settings, timeout: float = 60.0) -> LabelStudio:
    return LabelStudio(base_url=settings.ls_url, api_key=settings.ls_token, timeout=timeout)


def _transient(e: Exception) -> bool:
    if isinstance(e, httpx.TransportError):
        return True
    if isinstance(e, ApiError):
        return e.status_code is None or e.status_code in (502, 503, 504)
    if isinstance(e, httpx.HTTPStatusError):
        return e.response.status_code in (502, 503, 504)
    return False


def call(settings: Settings, what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (one or more API calls); retry with backoff while the server is unreachable.

    ``fn`` must be safe to repeat: callers that create things check first (see prelabel).
    """
    delays = RETRY_DELAYS_S
    for attempt, delay in enumerate((*delays, None)):
        try:
            return fn()
        except Exception as e:
            if not _transient(e):
                if isinstance(e, ApiError):
                    raise LabelStudioError(f"Label Studio refused to {what}: {e.status_code} {str(e.body)[:300]}") from None
                raise
            if delay is None:
                raise LabelStudioUnavailable(
                    f"Label Studio at {settings.ls_url} is not reachable (tried {attempt + 1} times over "
                    f"{sum(delays):.0f} s to {what}); start it with 'bookcounter labelstudio start'"
                ) from None
            log.warning("Label Studio unreachable (%s); retrying to %s in %.1f s", type(e).__name__, what, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _http(settings: Settings, timeout: float = 60.0) -> httpx.Client:
    return httpx.Client(
        base_url=settings.ls_url, headers={"Authorization": f"Token {settings.ls_token}"}, timeout=timeout
    )


def file_lock(settings: Settings, name: str) -> AbstractContextManager[bool]:
    """An exclusive lock (``run_dir/<name>.lock``) held by one process at a time."""
    return locks.file_lock(settings.run_dir / f"{name}.lock")


# --- the project -------------------------------------------------------------------------------


def ensure_project(settings: Settings) -> int:
    """The id of the project titled ``settings.ls_project_title``, created once.

    An existing project whose labelling config differs from :data:`LABEL_CONFIG` is updated
    (the config only ever gains tools, so existing annotations stay valid).
    """
    ls = client(settings)
    title = settings.ls_project_title

    def find_or_create() -> int:
        found = [p for p in ls.projects.list(title=title) if p.title == title]
        if found:
            project = ls.projects.get(id=min(p.id for p in found))
            if (project.label_config or "").strip() != LABEL_CONFIG.strip():
                ls.projects.update(id=project.id, label_config=LABEL_CONFIG)
            return project.id
        return ls.projects.create(
            title=title,
            description="Instance masks of books; pre-labelled by bookcounter (SAM / Mask R-CNN).",
            label_config=LABEL_CONFIG,
        ).id

    with file_lock(settings, "labelstudio-project"):
        return call(settings, f"find or create project {title!r}", find_or_create)


def task_shas(settings: Settings, project_id: int) -> dict[str, int]:
    """sha256 (of the inbox file) -> task id, for every task of the project that has one."""
    ls = client(settings)

    def fetch() -> dict[str, int]:
        out: dict[str, int] = {}
        for t in ls.tasks.list(project=project_id, fields="task_only", resolve_uri=False, page_size=500):
            sha = (t.data or {}).get("sha256")
            if sha:
                out.setdefault(sha, t.id)
        return out

    return call(settings, "list tasks", fetch)


def upload_photo(settings: Settings, project_id: int, data: bytes, file_name: str) -> str:
    """Upload a photo into the project's media store (no task yet); returns its ``/data/upload`` URL."""

    def upload() -> str:
        with _http(settings) as h:
            r = h.post(
                f"/api/projects/{project_id}/import",
                params={"commit_to_project": "false"},
                files={"file": (file_name, data, mimetypes.guess_type(file_name)[0] or "application/octet-stream")},
            )
            r.raise_for_status()
            upload_id = r.json()["file_upload_ids"][0]
            r = h.get(f"/api/projects/{project_id}/file-uploads", params={"ids": json.dumps([upload_id])})
            r.raise_for_status()
            return next(u["file"] for u in r.json() if u["id"] == upload_id)

    try:
        url = call(settings, f"upload {file_name}", upload)
    except httpx.HTTPStatusError as e:
        raise LabelStudioError(f"Label Studio refused upload of {file_name}: {e.response.status_code} {e.response.text[:300]}") from None
    return f"{MEDIA_URL}{url.lstrip('/')}"


def create_task(settings: Settings, project_id: int, data: dict[str, Any], predictions: list[dict[str, Any]]) -> int:
    """Import one task with its predictions in a single request; returns the task id.

    Safe to retry: if an earlier attempt reached the server (answer lost), the task found by
    its ``sha256`` is returned instead of importing a second one.
    """
    ls = client(settings)
    sha = data["sha256"]

    def once() -> int:
        existing = _find_task(ls, project_id, sha)
        if existing is not None:
            return existing
        res = ls.projects.import_tasks(
            id=project_id, request=[{"data": data, "predictions": predictions}], return_task_ids=True
        )
        ids = getattr(res, "task_ids", None) or []
        return ids[0] if ids else _find_task(ls, project_id, sha)

    return call(settings, f"import task for {data.get('file_name', sha[:12])}", once)


def _find_task(ls: LabelStudio, project_id: int, sha: str) -> int | None:
    query = json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [{"filter": "filter:tasks:data.sha256", "operator": "equal", "type": "String", "value": sha}],
            }
        }
    )
    for t in ls.tasks.list(project=project_id, query=query, fields="task_only", resolve_uri=False, page_size=10):
        if (t.data or {}).get("sha256") == sha:
            return t.id
    return None


def fetch_photo(settings: Settings, url: str) -> bytes:
    """The bytes behind a task's image URL (``/data/upload/...`` or any URL Label Studio serves)."""

    def get() -> bytes:
        with _http(settings) as h:
            r = h.get(url)
            r.raise_for_status()
            return r.content

    try:
        return call(settings, f"fetch {url}", get)
    except httpx.HTTPStatusError as e:
        raise LabelStudioError(f"cannot fetch {url} from Label Studio: {e.response.status_code}") from None


def export_snapshot(settings: Settings, project_id: int, timeout: float = 300.0) -> list[dict[str, Any]]:
    """All tasks with annotations, through an export snapshot (create, wait, download JSON)."""
    ls = client(settings, timeout=timeout)

    def run() -> list[dict[str, Any]]:
        snap = ls.projects.exports.create(id=project_id, title=f"bookcounter collect {time.strftime('%Y%m%dT%H%M%S')}")
        deadline = time.monotonic() + timeout
        while snap.status not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise LabelStudioError(f"export snapshot {snap.id} still '{snap.status}' after {timeout:.0f} s")
            time.sleep(0.5)
            snap = ls.projects.exports.get(id=project_id, export_pk=snap.id)
        if snap.status == "failed":
            raise LabelStudioError(f"export snapshot {snap.id} of project {project_id} failed in Label Studio")
        raw = b"".join(ls.projects.exports.download(id=project_id, export_pk=snap.id, export_type="JSON"))
        try:
            ls.projects.exports.delete(id=project_id, export_pk=snap.id)
        except ApiError:
            log.warning("could not delete export snapshot %s", snap.id)
        return json.loads(raw)

    return call(settings, f"export project {project_id}", run)


# --- the ML backend connection (used by annotator/ml_backend_server.py) -------------------------


def connect_ml_backend(settings: Settings, project_id: int, url: str, title: str) -> int:
    """Connect the interactive ML backend at ``url`` to the project, idempotently; its row id.

    Re-running keeps the one row for ``url``; rows with our ``title`` and another URL (a stale
    port) are removed with the webhook Label Studio made for them. Label Studio sets the
    project's ``model_version`` to the backend's title when it was empty, which would hide the
    pre-labelling predictions and make it ask the backend to pre-annotate each task opened; the
    old value is put back.
    """
    ls = client(settings)
    url = url.rstrip("/")

    def once() -> int:
        rows = ls.ml.list(project=project_id)
        ours = [r for r in rows if (r.url or "").rstrip("/") == url]
        keep = ours[0].id if ours else None
        for r in rows:
            if r.id == keep or (r.title != title and r not in ours):
                continue
            ls.ml.delete(id=r.id)
            old_url = (r.url or "").rstrip("/")
            for hook in ls.webhooks.list(project=str(project_id)) if old_url != url else []:
                if hook.url == f"{old_url}/webhook":
                    ls.webhooks.delete(id=hook.id)
        if ours:
            row = ours[0]
            if not row.is_interactive or row.title != title:
                ls.ml.update(id=row.id, is_interactive=True, title=title)
            return row.id
        before = ls.projects.get(id=project_id).model_version or ""
        row = ls.ml.create(project=project_id, url=url, is_interactive=True, title=title)
        if (ls.projects.get(id=project_id).model_version or "") != before:
            ls.projects.update(id=project_id, model_version=before)
        return row.id

    with file_lock(settings, "labelstudio-ml-backend"):
        return call(settings, f"connect the ML backend at {url}", once)


# --- masks in Label Studio's formats -------------------------------------------------------------


def brush_result(mask: np.ndarray, score: float | None = None, from_name: str = BRUSH) -> dict[str, Any]:
    """A boolean HxW mask as one Label Studio brush result (RLE of the SDK converter's format)."""
    h, w = mask.shape
    result: dict[str, Any] = {
        "id": uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": IMAGE,
        "type": "brushlabels",
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [LABEL]},
    }
    if score is not None:
        result["score"] = float(score)
    return result


_RLE_SIZES = (3, 4, 8, 16)  # bits of a run's length field, by size index (the SDK's defaults)


def brush_rle(mask: np.ndarray) -> list[int]:
    """``brush.mask2rle(mask * 255)`` bit for bit, vectorised (added by the ML-backend engineer).

    The SDK encodes run by run in Python: ~100 ms for a ragged 640x640 mask, most of an
    interactive click's budget; this takes a few ms. tests/test_ml_backend.py checks both agree.
    Format: 32-bit value count, 5-bit word size - 1, four 4-bit run-length sizes - 1, then per
    run ``1 <size index:2> <length - 1> <value:8>`` (``0 00 000 <value:8>`` for a run of one),
    runs over 2**16 split into chunks of 2**16; zero-padded to whole bytes.
    """
    pixels = np.asarray(mask, dtype=bool).ravel()  # each pixel is 4 equal RGBA values in the format
    header = f"{4 * pixels.size:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in _RLE_SIZES)
    ends = np.append(np.flatnonzero(pixels[1:] != pixels[:-1]), pixels.size - 1) if pixels.size else np.zeros(0, np.int64)
    lengths = 4 * np.diff(np.append(-1, ends))
    values = np.where(pixels[ends], 255, 0)
    chunks = np.where(lengths > 1 << 16, (lengths - 1) >> 16, 0)  # extra 2**16 pieces before the last
    pieces = chunks + 1
    run = np.repeat(np.arange(len(lengths)), pieces)
    k = np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    last = k == chunks[run]
    length = lengths[run]
    single = length == 1
    size_index = np.where(single, 0, np.select([length <= 8, length <= 16, length <= 256], [0, 1, 2], 3))
    length_bits = np.where(single, 3, np.array(_RLE_SIZES)[size_index])
    length_field = np.where(single, 0, np.where(last, length - (chunks[run] << 16) - 1, (1 << 16) - 1))
    code = ((((~single).astype(np.int64) << 2 | size_index) << length_bits | length_field) << 8) | values[run]
    width = 11 + length_bits
    pos = np.arange(27)
    bits = ((code[:, None] >> np.maximum(width[:, None] - 1 - pos, 0)) & 1)[pos < width[:, None]]
    allbits = np.concatenate([np.frombuffer(header.encode(), np.uint8) - 48, bits.astype(np.uint8)])
    allbits = np.concatenate([allbits, np.zeros(8 - len(allbits) % 8, np.uint8)])
    return np.packbits(allbits).tolist()


def result_mask(result: dict[str, Any], height: int, width: int) -> np.ndarray | None:
    """The boolean HxW mask of one brush or polygon result; None for any other kind of result.

    Brush RLE is decoded pixel for pixel (no polygon approximation). Polygon points are percent
    coordinates of the image, rasterised at the image's pixel size.
    """
    kind = result.get("type")
    value = result.get("value") or {}
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or not value.get("rle"):
            return np.zeros((height, width), bool)
        flat = brush.decode_rle(value["rle"])
        if flat.size != height * width * 4:
            raise LabelStudioError(
                f"brush result {result.get('id')}: {flat.size // 4} pixels, image is {width}x{height}"
            )
        return flat.reshape(height, width, 4)[:, :, 3] > 127
    if kind == "polygonlabels":
        from bookcounter import masks

        points = value.get("points") or []
        if len(points) < 3:
            return np.zeros((height, width), bool)
        poly = [c for x, y in points for c in (x * width / 100.0, y * height / 100.0)]
        return masks.decode(masks.from_polygons([poly], height, width))
    return None
