"""The ML backend's HTTP routes: Label Studio's ML backend protocol on two routers.

``prompts``: ``GET /health``, ``POST /setup``, ``GET /versions``, ``POST /predict`` (a click or a
box). ``training``: ``POST /webhook``, ``POST /train`` and ``POST /job_status`` ("Start training"
and the annotation count, through :mod:`annotator.training_trigger`). Each route finds the
:class:`~serving.ml_backend.backend.Backend` in ``request.app.state.backend``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
from fastapi import APIRouter, BackgroundTasks, Body, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from annotator import events, training_trigger
from annotator.events import PrefectUnavailable
from bookcounter.errors import UserError
from serving.ml_backend.backend import TITLE, Backend, check_label_config

log = logging.getLogger("bookcounter.ml_backend")

prompts = APIRouter()
training = APIRouter()


def create_app(
    backend: Backend, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None
) -> FastAPI:
    """The FastAPI app on ``backend``; ``lifespan`` runs around serving (the server process's
    factory, :func:`serving.ml_backend.server.create_app`, keeps the champion current in it)."""
    app = FastAPI(title="bookcounter ML backend", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.backend = backend
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(prompts)
    app.include_router(training)
    return app


def _backend(request: Request) -> Backend:
    return request.app.state.backend


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)


@prompts.get("/")
@prompts.get("/health")
async def health(request: Request) -> dict[str, Any]:
    backend = _backend(request)
    seg = backend.segmenter
    return {
        "status": "UP",
        "model_class": TITLE,
        "sam": seg.model_type if seg is not None else None,
        "encoder_calls": seg.encoder_calls if seg is not None else 0,
        "detector_calls": backend.detector_calls,
    }


@prompts.post("/setup")
def setup(request: Request, body: dict[str, Any] = Body(...)) -> Any:
    try:
        check_label_config(body.get("schema") or "")
    except UserError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    return {"model_version": _backend(request).model_version}


@prompts.get("/versions")
def versions(request: Request) -> dict[str, Any]:
    return {"versions": [_backend(request).model_version]}


def _answer_all(backend: Backend, tasks: list[dict[str, Any]], regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for task in tasks:
        try:
            results.append(backend.answer(task, regions))
        except UserError as e:
            log.warning("task %s: %s", task.get("id"), e)
            results.append({"result": [], "score": 0.0, "model_version": backend.model_version, "error": str(e)})
    return results


@prompts.post("/predict")
async def predict(request: Request) -> Response:
    # orjson both ways: a click's body may carry the task's pre-labelled masks and its answer is
    # one RLE of up to ~10^5 ints, where FastAPI's own (de)serialisation took 10-90 ms of a click
    backend = _backend(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as e:
        return JSONResponse({"error": f"request body is not JSON ({e})"}, status_code=422)
    tasks = body.get("tasks") if isinstance(body, dict) else None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        return JSONResponse({"error": "body.tasks must be a list of tasks"}, status_code=422)
    params = body.get("params")
    context = (params.get("context") if isinstance(params, dict) else None) or body.get("context")
    if context is None:  # a batch pre-annotation request: this backend is interactive only
        return JSONResponse({"results": [], "model_version": backend.model_version})
    regions = context.get("result") if isinstance(context, dict) else None
    results = await run_in_threadpool(_answer_all, backend, tasks, regions if isinstance(regions, list) else [])
    payload = {"results": results, "model_version": backend.model_version}
    return Response(orjson.dumps(payload), media_type="application/json")


def _start_training(backend: Backend, body: dict[str, Any], source: str) -> Any:
    try:
        event_id = training_trigger.request_training(backend.settings, _project_id(body.get("project")), source)
    except PrefectUnavailable as e:
        log.warning("%s: %s", source, e)
        return JSONResponse({"status": "error", "error": str(e)}, status_code=200)
    return {"status": "ok", "job": str(event_id)}


def _check_annotations(backend: Backend) -> None:
    try:
        training_trigger.check_annotations(backend.settings, "webhook")
    except UserError as e:  # Label Studio or Prefect not answering: the watcher tries again
        log.warning("webhook: %s", e)


@training.post("/webhook", status_code=201)
def webhook(request: Request, background: BackgroundTasks, body: dict[str, Any] = Body(...)) -> Any:
    backend = _backend(request)
    action = body.get("action")
    if action == "START_TRAINING":
        return _start_training(backend, body, "start-training")
    if action in ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED"):
        # after the answer: Label Studio waits 1 s for it, and the count asks Label Studio
        background.add_task(_check_annotations, backend)
        return {"status": "ok"}
    return {"status": "ignored", "action": action}


@training.post("/train", status_code=201)
def train(request: Request, body: dict[str, Any] = Body(default_factory=dict)) -> Any:
    return _start_training(_backend(request), body, "start-training (/train)")


@training.post("/job_status")
def job_status(request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """The state of the loop run that a "Start training" event (its id is the job) caused."""
    return {"job_status": events.job_status(_backend(request).settings, str(body.get("job", "")))}


def _project_id(project: Any) -> int | None:
    """The project's id in a webhook body (``{"id": 3, ...}``) or a ``/train`` body (``"3.1699..."``)."""
    if isinstance(project, dict):
        project = project.get("id")
    head = str(project).split(".")[0] if project is not None else ""
    return int(head) if head.isdigit() else None
