"""Hot reload: the server follows the registry's champion alias without a restart or a failed request."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fixtures_serving import Served
from test_serving_api import GOOD

pytestmark = pytest.mark.slow


Result = tuple[float, int | str, str | None]  # (time answered, status or error, model_version)


class Stream:
    """Clients posting a photo in a loop; records each answer as a :data:`Result`."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url, self.results, self._stop = url, [], threading.Event()
        self._answered = threading.Condition()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                try:
                    r = http.post(f"{self.url}/count", content=GOOD, headers={"content-type": "image/png"})
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    result: Result = (time.monotonic(), r.status_code, version)
                except httpx.HTTPError as e:
                    result = (time.monotonic(), type(e).__name__, None)
                with self._answered:
                    self.results.append(result)
                    self._answered.notify_all()

    def wait_until(self, condition: Callable[[list[Result]], bool], timeout: float = 60) -> bool:
        """Block until ``condition(results)`` holds, checked at each answer; False after ``timeout``."""
        with self._answered:
            return self._answered.wait_for(lambda: condition(self.results), timeout)

    def __enter__(self) -> Stream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@pytest.fixture
def restore_champion(served_champion: Served):
    """Put the alias back where it was, and make the server serve it again (one poll, now)."""
    from trainer import registry

    before = registry.champion().version
    yield
    registry.set_champion(before)
    served_champion.app.state.slot.sync()
    assert served_champion.app.state.slot.current.version == before


def test_champion_switch_during_requests_fails_none_and_shows_within_the_poll(
    served_champion: Served, tiny_model_dir: Path, restore_champion: None
) -> None:
    from trainer import registry

    slot = served_champion.app.state.slot
    old = slot.current.version
    reloads = served_champion.metric("bookcounter_model_reloads_total")
    new = registry.register(tiny_model_dir).version  # same weights, a new registry version
    with Stream(served_champion.url) as stream:
        assert stream.wait_until(lambda results: len(results) >= 2)
        switched = time.monotonic()
        registry.set_champion(new)  # the server's own poller must notice: no sync() here
        assert stream.wait_until(lambda results: any(v == new for _, _, v in results)), "new version never answered"
        assert stream.wait_until(lambda results: sum(v == new for _, _, v in results) >= 4)  # and goes on answering
    statuses = {s for _, s, _ in stream.results}
    assert statuses == {200}, stream.results
    assert {v for _, _, v in stream.results} == {old, new}
    first_new = min(t for t, _, v in stream.results if v == new)
    # within one poll interval plus loading and warming up the new model (and a request's latency)
    assert first_new - switched <= slot.poll_seconds + slot.current.load_seconds + 1.0
    assert served_champion.metric("bookcounter_model_reloads_total") == reloads + 1
    assert httpx.get(f"{served_champion.url}/model").json()["model_version"] == new


def test_a_broken_new_champion_keeps_the_old_one_serving(
    served_champion: Served, tiny_model_dir: Path, tmp_path: Path, restore_champion: None
) -> None:
    from trainer import registry

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.pt").write_bytes(b"this is not a checkpoint")
    bad = registry.register(broken).version
    slot = served_champion.app.state.slot
    serving = slot.current.version
    failures = served_champion.metric("bookcounter_model_reload_failures_total")
    with Stream(served_champion.url) as stream:
        registry.set_champion(bad)
        slot.sync()  # one poll now (or after the poller's own, which holds the same lock): the load fails
        assert served_champion.metric("bookcounter_model_reload_failures_total") == failures + 1
        for _ in range(3):
            slot.sync()  # later polls do not retry it at once (nor count it again)
        answered = len(stream.results)
        assert stream.wait_until(lambda results: len(results) >= answered + 2)  # the old model goes on answering
    assert served_champion.metric("bookcounter_model_reload_failures_total") == failures + 1
    assert {s for _, s, _ in stream.results} == {200}
    assert {v for _, _, v in stream.results} == {serving}
    assert httpx.get(f"{served_champion.url}/readyz").json()["model_version"] == serving
    assert httpx.get(f"{served_champion.url}/model").json()["champion_version"] == bad
