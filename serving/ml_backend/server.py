"""The ML backend's process: ``bookcounter ml-backend start|stop|status|connect`` and its app factory.

:func:`create_app` composes the backend (:mod:`serving.ml_backend.backend`, routes in
:mod:`serving.ml_backend.routes`) with the champion from the registry: without SAM a click or a box
is answered by the champion, kept current by a :class:`ModelSlot` (it polls the registry and swaps
in a newly promoted champion, as the counting server does).

The backend runs under uvicorn in a background process bound to ``settings.ml_backend_host``
(127.0.0.1), with a pid file and a log under ``settings.run_dir`` (:class:`bookcounter.processes.Server`,
like Label Studio's). ``start`` then connects it to the Label Studio project when that server is
up; ``connect`` does only that.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import typer
from fastapi import FastAPI

from bookcounter.processes import Server
from bookcounter.settings import REPO_ROOT, Settings, get_settings
from serving.metrics import ServingMetrics
from serving.ml_backend import routes
from serving.ml_backend.backend import TITLE, load_backend
from serving.model_slot import ModelSlot, Registry

CHAMPION_POLL_S = 5.0  # how often the no-SAM backend asks the registry for a new champion
START_TIMEOUT_S = 180.0  # importing torch and building SAM on a busy 2-core machine

ml_backend_cli = typer.Typer(
    help="The ML backend that answers a click or a box in Label Studio with a SAM mask.",
    no_args_is_help=True,
)


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> FastAPI:
    """The ML backend app; ``registry`` defaults to :mod:`trainer.registry` (MLflow).

    Without SAM the champion is loaded at startup, before the first request (Label Studio's
    ``/setup`` has a 3 s timeout), and polled every :data:`CHAMPION_POLL_S` seconds.
    """
    if settings is None:  # the server process: our log lines go to its log next to uvicorn's
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
        settings = get_settings()
    if registry is None:
        from trainer import registry as trainer_registry

        registry = trainer_registry
    slot = ModelSlot(registry, ServingMetrics(), poll_seconds=CHAMPION_POLL_S)
    backend = load_backend(settings, slot.detector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if backend.segmenter is not None:  # SAM answers everything: no champion needed
            yield
            return
        await anyio.to_thread.run_sync(slot.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(slot.stop)

    app = routes.create_app(backend, lifespan)
    app.state.slot = slot
    return app


def backend_process(settings: Settings) -> Server:
    """The pid file and log of the backend bookcounter starts."""
    return Server("ml-backend", settings.run_dir)


def start_backend(settings: Settings, timeout: float = START_TIMEOUT_S) -> bool:
    """Start the backend unless it runs; wait for ``/health``. True if started now.

    The process gets ``settings`` as ``BOOKCOUNTER_*`` variables, so it runs with exactly these.
    """
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        f"{__name__}:{create_app.__name__}",
        "--factory",
        "--host",
        settings.ml_backend_host,
        "--port",
        str(settings.ml_backend_port),
        "--no-access-log",
    ]
    env = {
        f"BOOKCOUNTER_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
        for k, v in settings.model_dump(mode="json", exclude={"ls_password", "ls_token"}).items()
        if v is not None
    }
    # the secrets in use, in clear (a JSON dump masks them); the environment of a process is private to its user
    env["BOOKCOUNTER_LS_PASSWORD"] = settings.ls_secrets.password.get_secret_value()
    env["BOOKCOUNTER_LS_TOKEN"] = settings.ls_secrets.token.get_secret_value()
    # torch's OpenMP threads sleep instead of spinning between ops: clicks come one at a time,
    # and on a shared CPU spinning threads starve Label Studio and training (and themselves)
    env.setdefault("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    return backend_process(settings).start(
        cmd, f"{settings.ml_backend_url}/health", env=env, timeout=timeout, cwd=REPO_ROOT
    )


def stop_backend(settings: Settings) -> bool:
    """Stop the backend we started; False if none was running."""
    return backend_process(settings).stop()


def connect(settings: Settings) -> int:
    """Connect the running backend to the Label Studio project (idempotent); the backend row id."""
    from annotator.labelstudio.ml_backend_link import connect_ml_backend
    from annotator.labelstudio.project import ensure_project

    return connect_ml_backend(settings, ensure_project(settings), settings.ml_backend_url, TITLE)


@ml_backend_cli.command()
def start() -> None:
    """Start the backend on 127.0.0.1 (log and pid file in var/run) and connect it to the project.

    Without a SAM checkpoint it still starts: boxes are answered by the champion Mask R-CNN's
    mask head and clicks get a "needs a SAM checkpoint" message.
    """
    from annotator.labelstudio.server import is_healthy

    settings = get_settings()
    started = start_backend(settings)
    verb = "started" if started else "already running"
    typer.echo(f"ML backend {verb} at {settings.ml_backend_url}; log {backend_process(settings).log_file}")
    if is_healthy(settings):
        typer.echo(f"connected to project '{settings.ls_project_title}' (ML backend #{connect(settings)})")
    else:
        typer.echo("Label Studio is not running: connect later with 'bookcounter ml-backend connect'")


@ml_backend_cli.command()
def stop() -> None:
    """Stop the backend started by 'bookcounter ml-backend start'."""
    settings = get_settings()
    typer.echo("ML backend stopped" if stop_backend(settings) else "ML backend was not running")


@ml_backend_cli.command()
def status() -> None:
    """Say whether the backend runs and what answers (SAM or the champion's mask head)."""
    import httpx

    settings = get_settings()
    pid = backend_process(settings).pid()
    try:
        health = httpx.get(f"{settings.ml_backend_url}/health", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        health = None
    if pid is None and health is None:
        typer.echo(f"ML backend is not running (would listen on {settings.ml_backend_url})")
    elif health is None:
        typer.echo(f"ML backend (pid {pid}) is starting or stuck; log {backend_process(settings).log_file}")
    else:
        sam = f"SAM {health['sam']}" if health.get("sam") else "no SAM (boxes via the champion Mask R-CNN)"
        typer.echo(
            f"ML backend at {settings.ml_backend_url} (pid {pid}): {sam}, {health['encoder_calls']} embeddings computed"
        )


@ml_backend_cli.command("connect")
def connect_command() -> None:
    """Connect the running backend to the Label Studio project (re-running leaves one connection)."""
    settings = get_settings()
    typer.echo(f"connected to project '{settings.ls_project_title}' (ML backend #{connect(settings)})")
