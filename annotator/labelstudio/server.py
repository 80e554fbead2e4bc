"""The Label Studio server process that bookcounter starts.

``label-studio start`` from its own venv (``settings.ls_venv``), bound to 127.0.0.1, data
(SQLite, uploaded photos) under ``settings.ls_data_dir``, the admin user and a legacy API token
bootstrapped from ``settings.ls_secrets`` (generated per install into ``secrets.env``), a pid
file and a log under ``settings.run_dir``. Setting
``BOOKCOUNTER_LS_DATABASE_URL=postgresql://user:pw@host:5432/db`` makes it use PostgreSQL
(docs/postgres.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from annotator.labelstudio.errors import LabelStudioError
from bookcounter.processes import Server, answers
from bookcounter.settings import Settings

HEALTH_TIMEOUT_S = 120.0


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
            return (
                f"Label Studio (pid {self.pid}) is starting or stuck: {self.url}/health does not answer; "
                f"log {self.log_file}"
            )
        if self.healthy:
            return f"something not started by bookcounter answers at {self.url}"
        return f"Label Studio is not running (would listen on {self.url})"


def server_process(settings: Settings) -> Server:
    """The pid file and log of the server bookcounter starts."""
    return Server("labelstudio", settings.run_dir)


def health_url(settings: Settings) -> str:
    return f"{settings.ls_url}/health"


def is_healthy(settings: Settings, timeout: float = 2.0) -> bool:
    return answers(health_url(settings), timeout)


def server_status(settings: Settings) -> ServerStatus:
    server = server_process(settings)
    return ServerStatus(server.pid() is not None, is_healthy(settings), server.pid(), settings.ls_url, server.log_file)


def server_env(settings: Settings) -> dict[str, str]:
    """Environment of the server process (and only of it)."""
    env = {
        "PATH": f"{settings.ls_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(settings.ls_venv),
        "LABEL_STUDIO_BASE_DATA_DIR": str(settings.ls_data_dir),
        "LABEL_STUDIO_USERNAME": settings.ls_username,
        "LABEL_STUDIO_PASSWORD": settings.ls_secrets.password.get_secret_value(),
        "LABEL_STUDIO_USER_TOKEN": settings.ls_secrets.token.get_secret_value(),
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
        url = urlparse(settings.ls_database_url)  # a postgresql:// URL with a database: Settings checks it
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
    server = server_process(settings)
    if server.pid() is None and is_healthy(settings):
        raise LabelStudioError(
            f"port {settings.ls_port} is taken by a server bookcounter did not start; "
            "stop it or set BOOKCOUNTER_LS_PORT"
        )
    exe = settings.ls_venv / "bin" / "label-studio"
    if not exe.is_file():
        raise LabelStudioError(
            f"{exe} not found: create the Label Studio venv ('make setup') or set BOOKCOUNTER_LS_VENV"
        )
    settings.ls_data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), "start", "--no-browser", "--internal-host", settings.ls_host, "--port", str(settings.ls_port)]
    server.start(cmd, health_url(settings), env=server_env(settings), timeout=timeout, cwd=settings.ls_data_dir)
    return server_status(settings)


def stop_server(settings: Settings) -> bool:
    """Stop the server we started (its pid file's process group, nothing else); False if none ran."""
    return server_process(settings).stop()
