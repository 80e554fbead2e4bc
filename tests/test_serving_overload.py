"""Overload and exposure: a bounded number of photos in flight (503 + Retry-After past it), the
optional API key, and the warning for serving beyond loopback without one. Real uvicorn, real
champion; the "slow" request is held at a gate, never timed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fixtures_serving import (
    API_KEY,
    Served,
    running_server,
    serving_settings,
)
from starlette.types import Receive, Scope, Send
from test_serving_api import GOOD

from bookcounter.testing import free_port

pytestmark = pytest.mark.slow

PNG = {"content-type": "image/png"}


class GatedPredictor:
    """The champion's predictor; once ``armed``, each prediction waits at the gate (a slow model)."""

    def __init__(self, inner, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    def predict(self, *args, **kwargs):
        if self.gate.armed:
            self.gate.arrivals.release()
            assert self.gate.release.wait(120), "the test never opened the gate"
        return self.inner.predict(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class Gate:
    """:mod:`trainer.registry` whose predictors are :class:`GatedPredictor` (the app's registry seam)."""

    def __init__(self) -> None:
        self.armed, self.arrivals, self.release = False, threading.Semaphore(0), threading.Event()

    def champion(self):
        from trainer import registry

        return registry.champion()

    def load_predictor(self, version: str = "champion", device: str | None = None):
        from trainer import registry

        return GatedPredictor(registry.load_predictor(version, device=device), self)


def post_good(url: str, headers: dict[str, str] | None = None, **kw) -> httpx.Response:
    return httpx.post(f"{url}/count", content=GOOD, headers={**PNG, **(headers or {})}, timeout=120, **kw)


def test_a_burst_past_the_bound_gets_503_at_once_while_the_photos_in_flight_are_counted(tiny_champion) -> None:
    from serving.app import create_app

    gate = Gate()
    app = create_app(serving_settings(max_in_flight=2), registry=gate)
    with running_server(app) as url, ThreadPoolExecutor(12) as pool:
        served = Served(url, app)
        expected = post_good(url).json()["count"]  # before arming: the gate lets the warm-up through too
        gate.armed = True
        first = pool.submit(post_good, url)
        assert gate.arrivals.acquire(timeout=60)
        second = pool.submit(post_good, url)
        assert gate.arrivals.acquire(timeout=60)  # both slots are held by photos at the model
        burst = [pool.submit(post_good, url) for _ in range(8)]
        refused = [f.result(timeout=120) for f in burst]  # all answered while both are still held at the gate
        assert not first.done() and not second.done()
        for r in refused:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert "busy" in r.json()["detail"] and "BOOKCOUNTER_MAX_IN_FLIGHT" in r.json()["detail"]
        assert served.metric("bookcounter_count_in_flight") == 2
        gate.release.set()
        for r in (first.result(timeout=120), second.result(timeout=120)):
            assert r.status_code == 200 and r.json()["count"] == expected
        assert post_good(url).status_code == 200  # the slots are free again
        assert served.metric("bookcounter_count_busy_total") == 8
        assert served.metric("bookcounter_count_in_flight") == 0
        assert 'bookcounter_requests_total{route="/count",status="503"} 8.0' in httpx.get(f"{url}/metrics").text


class NoticeCount:
    """ASGI wrapper that sets ``arrived`` when a ``POST /count`` reaches the app (its headers, not its body)."""

    def __init__(self, app) -> None:
        self.app, self.arrived = app, threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/count":
            self.arrived.set()  # no await until the app has taken its slot: the next request sees it taken
        await self.app(scope, receive, send)


def test_an_upload_still_streaming_holds_its_slot(tiny_champion) -> None:
    from serving.app import create_app

    app = NoticeCount(create_app(serving_settings(max_in_flight=1)))
    more = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield GOOD[:100]
        assert more.wait(120)
        yield GOOD[100:]

    with running_server(app) as url, ThreadPoolExecutor(1) as pool:
        streaming = pool.submit(httpx.post, f"{url}/count", content=slow_body(), headers=PNG, timeout=120)
        assert app.arrived.wait(60)
        busy = post_good(url)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        more.set()
        assert streaming.result(timeout=120).status_code == 200
        assert post_good(url).status_code == 200


def test_the_api_key_is_asked_for_by_the_api_and_the_page(served_with_key: Served) -> None:
    url = served_with_key.url
    refused = post_good(url)
    assert refused.status_code == 401 and "X-API-Key" in refused.json()["detail"]
    assert API_KEY not in refused.text
    assert post_good(url, params={"key": "wrong"}).status_code == 401
    assert post_good(url, headers={"x-api-key": "wrong"}).status_code == 401
    assert post_good(url, headers={"x-api-key": API_KEY}).status_code == 200
    assert post_good(url, headers={"authorization": f"Bearer {API_KEY}"}).status_code == 200
    for path in ("/", "/static/app.js", "/model", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
    for path in ("/healthz", "/readyz"):  # probes stay open
        assert httpx.get(f"{url}{path}").status_code == 200, path
    wrong = httpx.get(f"{url}/?key=wrong")
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers

    with httpx.Client(base_url=url, timeout=120) as browser:  # what the page does: ?key= once, then the cookie
        opened = browser.get(f"/?key={API_KEY}")
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        assert "httponly" in opened.headers["set-cookie"].lower()
        page = browser.get("/")
        assert page.status_code == 200 and 'src="/static/app.js"' in page.text
        assert browser.get("/model").status_code == 200
        assert browser.post("/count", content=GOOD, headers=PNG).status_code == 200
        docs = browser.get(f"/docs?key={API_KEY}&x=1")
        assert docs.status_code == 303 and docs.headers["location"] == "/docs?x=1"
    assert (
        'bookcounter_requests_total{route="/count",status="401"}'
        in httpx.get(f"{url}/metrics", headers={"x-api-key": API_KEY}).text
    )


def test_without_a_key_nothing_asks_for_one(served_champion: Served) -> None:
    url = served_champion.url
    assert post_good(url).status_code == 200
    for path in ("/", "/static/app.js", "/model", "/metrics", "/openapi.json"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    assert httpx.get(f"{url}/?key=anything").status_code == 200  # no redirect, no cookie


def serve_output(host: str, env: dict[str, str], state_dir: Path) -> str:
    """What ``bookcounter serve --host HOST`` prints up to and including the line after "serving on"."""
    cli = Path(sys.executable).with_name("bookcounter")
    env = {**os.environ, "BOOKCOUNTER_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1", **env}
    proc = subprocess.Popen(
        [str(cli), "serve", "--host", host, "--port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if any(seen.startswith("serving on") for seen in lines[:-1]):
                break
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return "".join(lines)


def test_serving_beyond_loopback_without_a_key_prints_a_warning(tmp_path: Path) -> None:
    exposed = serve_output("0.0.0.0", {"BOOKCOUNTER_API_KEY": ""}, tmp_path / "a")
    assert "warning: serving on 0.0.0.0" in exposed and "BOOKCOUNTER_API_KEY" in exposed
    assert exposed.index("warning") < exposed.index("serving on")
    keyed = serve_output("0.0.0.0", {"BOOKCOUNTER_API_KEY": "k" * 16}, tmp_path / "b")
    assert "serving on" in keyed and "warning" not in keyed and "API key required" in keyed
    assert "k" * 16 not in keyed  # the key itself is never printed
    local = serve_output("127.0.0.1", {"BOOKCOUNTER_API_KEY": ""}, tmp_path / "c")
    assert "serving on" in local and "warning" not in local
