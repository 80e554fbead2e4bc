"""``bookcounter serve``: the HTTP API and web page."""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from pathlib import Path

import typer

from bookcounter.errors import UserError
from bookcounter.processes import Server
from bookcounter.settings import Settings, get_settings


class PortInUse(UserError):
    """The address to serve on is taken or cannot be bound."""


def serve(
    host: str | None = typer.Option(
        None, help="Address to listen on (default BOOKCOUNTER_SERVE_HOST, 127.0.0.1). Use 0.0.0.0 to let "
        "phones on the same LAN open the page."
    ),
    port: int | None = typer.Option(None, help="Port (default BOOKCOUNTER_SERVE_PORT, 8000)."),
) -> None:
    """Serve the counting API and web page with the champion model; swaps in newly promoted models.

    Page: http://HOST:PORT/ (upload, drag and drop, or camera).

    API: POST /count (OpenAPI at /docs); /healthz, /readyz, /model; Prometheus at /metrics.

    At most BOOKCOUNTER_MAX_IN_FLIGHT photos are counted at once; more get 503 with Retry-After.

    With BOOKCOUNTER_API_KEY set, everything but /healthz and /readyz asks for the key (header X-API-Key or Authorization: Bearer; in a browser open /?key=KEY once). Serving on a non-loopback host without a key prints a warning.

    A newly promoted champion is swapped in without a restart (see BOOKCOUNTER_RELOAD_POLL_SECONDS).
    """
    import logging

    import uvicorn

    from serving.app import create_app

    s = get_settings()
    host, port = host or s.serve_host, port if port is not None else s.serve_port
    _check_free(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warning = exposure_warning(host, has_key=bool(s.api_key and s.api_key.get_secret_value()))
    if warning:
        typer.echo(warning, err=True)
    typer.echo(f"serving on http://{host}:{port}/ (API docs at /docs); Ctrl-C to stop")
    if s.api_key and s.api_key.get_secret_value():
        typer.echo(f"API key required (BOOKCOUNTER_API_KEY); open the page as http://{host}:{port}/?key=KEY")
    uvicorn.run(create_app(s), host=host, port=port, log_level="info")


def exposure_warning(host: str, has_key: bool) -> str | None:
    """The warning for serving beyond this machine without an API key, or None."""
    if has_key or is_loopback(host):
        return None
    return (
        f"warning: serving on {host}, reachable from other machines, with no API key: anyone on the network "
        "can use the page, /count, /model and /metrics. Set BOOKCOUNTER_API_KEY to require one."
    )


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; a host name other than localhost counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serving_process(settings: Settings) -> Server:
    """The pid file and log of ``bookcounter serve`` when bookcounter starts it in the background."""
    return Server("serving", settings.run_dir)


def start_in_background(settings: Settings, timeout: float = 120) -> str:
    """Start ``bookcounter serve`` in the background unless it runs, wait until it answers; its URL."""
    exe = str(Path(sys.executable).with_name("bookcounter"))
    serving_process(settings).start([exe, "serve"], f"{settings.serve_url}/healthz", timeout=timeout)
    return settings.serve_url


def _check_free(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as e:
        hint = " (another server is running there? pick another --port)" if e.errno == errno.EADDRINUSE else ""
        raise PortInUse(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
