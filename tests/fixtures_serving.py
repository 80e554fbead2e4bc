"""Serving fixtures: a real uvicorn server around the serving app, in a thread of the test process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.types import ASGIApp

from bookcounter.settings import Settings, get_settings
from bookcounter.testing import uvicorn_in_thread


@contextmanager
def running_server(app: ASGIApp, timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` (the FastAPI app, or a wrapper around it) with uvicorn on a free loopback port;
    yields the base URL; stops on exit."""
    with uvicorn_in_thread(app, timeout) as url:
        yield url


@dataclass
class Served:
    """A running server (real uvicorn) and its app, for tests that talk HTTP."""

    url: str
    app: FastAPI

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample in ``/metrics`` (0 when absent)."""
        import httpx

        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


def serving_settings(**overrides: object) -> Settings:
    """The session's settings (its temp state dir and MLflow store) with serving knobs changed."""
    return get_settings().model_copy(update=overrides)


@pytest.fixture(scope="session")
def served_champion(tiny_champion) -> Iterator[Served]:
    """The serving app on the tiny champion, polling the registry every 0.5 s."""
    from serving.app import create_app

    app = create_app(serving_settings(reload_poll_seconds=0.5))
    with running_server(app) as url:
        yield Served(url, app)


API_KEY = "test-key-0f3a9c"


@pytest.fixture(scope="session")
def served_with_key(tiny_champion) -> Iterator[Served]:
    """The serving app on the tiny champion with ``BOOKCOUNTER_API_KEY`` = :data:`API_KEY`."""
    from serving.app import create_app

    app = create_app(serving_settings(api_key=SecretStr(API_KEY)))
    with running_server(app) as url:
        yield Served(url, app)
