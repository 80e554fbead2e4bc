"""Helpers for the tests and the benches (the product does not use them): a free port, a server
in a thread of this process, and waiting until a URL answers. Every wait has a deadline."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def uvicorn_in_thread(app: Any, timeout: float = 120.0) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn (lifespan on) in a thread on a free loopback port;
    yields its base URL, stops it on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port} within {timeout:.0f} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until_answers(
    url: str,
    timeout: float,
    proc: subprocess.Popen | None = None,
    accept: Callable[[httpx.Response], bool] = lambda r: r.is_success,
) -> httpx.Response:
    """Poll ``url`` with GET until ``accept(response)``; that response. :class:`TimeoutError`
    after ``timeout`` seconds, :class:`RuntimeError` as soon as ``proc`` (the server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=2)
            if accept(response):
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
