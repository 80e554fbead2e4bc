"""Retries against an unreachable Label Studio: one layer (the SDK's), and what it costs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from annotator.labelstudio import client
from annotator.labelstudio.errors import LabelStudioUnavailable
from annotator.labelstudio.project import ensure_project, fetch_photo
from bookcounter.settings import Settings
from bookcounter.testing import free_port


class RecordedSleeps:
    """The ``time`` module as one module sees it, with ``sleep`` recorded instead of slept."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every backoff the SDK's HTTP client would sleep, recorded instead of slept (only that
    module's ``time`` is replaced: every other sleep of the process still sleeps)."""
    import label_studio_sdk.core.http_client as sdk_http

    clock = RecordedSleeps()
    monkeypatch.setattr(sdk_http, "time", clock)
    return clock.waits


@pytest.mark.parametrize("request_kind", ["sdk method", "raw request"])
def test_a_dead_server_costs_the_sdk_retries_once_then_one_line(
    tmp_path: Path, waits: list[float], request_kind: str
) -> None:
    dead = Settings(state_dir=tmp_path / "var", ls_port=free_port())  # nobody listens there
    with pytest.raises(
        LabelStudioUnavailable, match="is not reachable .*ConnectError after 5 retries over 31 s.*labelstudio start"
    ):
        if request_kind == "sdk method":
            ensure_project(dead)
        else:
            fetch_photo(dead, "/data/upload/1/photo.jpg")
    # one request, retried MAX_RETRIES times with the SDK's doubling backoff (±10 % jitter) and no
    # second layer of retries around it
    assert len(waits) == client.MAX_RETRIES == 5
    for n, wait in enumerate(waits):
        assert 0.9 * 2**n <= wait <= 1.1 * 2**n
    assert client.retry_window_s() == 31.0
