"""The one module that knows how Prefect is configured and started (``bookcounter ui prefect``)."""

from __future__ import annotations

import os
import sys

from bookcounter.processes import Server
from bookcounter.settings import Settings


def prefect_ui_server(settings: Settings) -> Server:
    return Server("prefect-server", settings.run_dir)


def ui_url(settings: Settings) -> str:
    return settings.prefect_url


def configure_prefect(settings: Settings) -> None:
    """Point this process's Prefect at bookcounter's state dir; call before ``import prefect``.

    Entry points call it (``bookcounter``'s ``main``, the benches, the tests): importing a
    package never changes ``os.environ``. Prefect's database lives in ``var/prefect`` (so runs
    made in ephemeral mode show up when ``bookcounter ui prefect`` starts the UI on it),
    analytics are off, and while that UI server runs the flows report to it instead of
    starting a temporary server. ``import prefect`` creates its home but not the parents.
    With ``prefect_database_url`` set, Prefect's database is that PostgreSQL database instead.
    """
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if settings.prefect_database_connection_url:  # BOOKCOUNTER_PREFECT_DATABASE_URL: PostgreSQL, not SQLite
        os.environ.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", settings.prefect_database_connection_url)
    if "PREFECT_API_URL" not in os.environ and prefect_ui_server(settings).pid() is not None:
        os.environ["PREFECT_API_URL"] = f"{ui_url(settings)}/api"


def start_ui(settings: Settings) -> str:
    """Start ``prefect server start`` on 127.0.0.1 over bookcounter's Prefect database
    (SQLite in ``prefect_home``, or ``prefect_database_url``)."""
    env = {"PREFECT_HOME": str(settings.prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if settings.prefect_database_connection_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = settings.prefect_database_connection_url
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.prefect_port),
    ]
    prefect_ui_server(settings).start(cmd, f"{ui_url(settings)}/api/health", env=env, timeout=120)
    return ui_url(settings)
