"""``bookcounter serve``: the HTTP API and web page."""

from __future__ import annotations

import errno
import ipaddress
import shlex
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
        None,
        help="Address to listen on (default BOOKCOUNTER_SERVE_HOST, 127.0.0.1). Use 0.0.0.0 to let "
        "phones on the same LAN open the page.",
    ),
    port: int | None = typer.Option(None, help="Port (default BOOKCOUNTER_SERVE_PORT, 8000)."),
) -> None:
    """Serve the counting API and web page with the champion model; swaps in newly promoted models.

    Page: http://HOST:PORT/ (upload, drag and drop, or camera).

    API: POST /count (OpenAPI at /docs); /healthz, /readyz, /model; Prometheus at /metrics.

    At most BOOKCOUNTER_MAX_IN_FLIGHT photos are counted at once; more get 503 with Retry-After.

    With BOOKCOUNTER_API_KEY set, everything but /healthz and /readyz asks for the key (header
    X-API-Key or Authorization: Bearer; in a browser open /?key=KEY once). Serving on a
    non-loopback host without a key prints a warning.

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


def count_command(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Photos and/or folders of photos."),
    out: Path | None = typer.Option(
        None, "--out", help="Results file, appended to (default counts.csv, or counts.jsonl with --format json)."
    ),
    fmt: str = typer.Option(
        "csv",
        "--format",
        help="csv: one row per photo; json: JSON lines with the instances (score, bbox, mask RLE) as well.",
    ),
    overlays: Path | None = typer.Option(
        None, "--overlays", help="Also write each photo's annotated PNG (as ?overlay=1) into this folder."
    ),
    model: str = typer.Option("champion", "--model", help="'champion' or a registered version number."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look for photos in subfolders too."),
) -> None:
    """Count the books in many photos into a CSV (or JSON lines): one row per photo with path, sha256,
    count, model version, threshold, width, height, seconds and an error column.

    Photos are counted exactly as POST /count counts them. Resumable: re-running with the same --out
    skips the photos already counted by the same model version (by sha256) and appends the rest;
    a kill loses at most the photo in flight. A bad photo is a row with its reason and never stops
    the batch; the exit status is 1 if any photo failed.
    """
    from serving.batch import FORMATS, Results, Tally, count_all, find_photos, load_model, resolve_model

    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}: choose csv or json")
    settings = get_settings()
    out = out or Path("counts.jsonl" if fmt == "json" else "counts.csv")
    photos = find_photos(paths, recursive)
    model_dir, info = resolve_model(model)
    with Results(out, fmt) as results:
        typer.echo(f"{len(photos)} photos, model version {info.version}; results -> {out}", err=True)
        loaded = load_model(model_dir, info)
        tally = Tally()
        try:
            count_all(photos, loaded, results, settings, tally, overlays)
        except KeyboardInterrupt:
            typer.echo(tally.line(out), err=True)
            again = shlex.join(["bookcounter", *sys.argv[1:]])
            typer.secho(
                f"interrupted: every finished photo is saved in {out}; resume with: {again}", fg="yellow", err=True
            )
            raise typer.Exit(130) from None
    typer.echo(tally.line(out))
    if tally.any_failed:
        raise typer.Exit(1)


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
