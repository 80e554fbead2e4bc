"""Several annotators at once, on SQLite and on PostgreSQL: 4 threads submit and correct
annotations through Label Studio's API, with SAM clicks to the ML backend (its own process,
random vit_t weights) in between, while the ML backend's annotation webhook and a
``watch-annotations`` loop both check the count against N.

Nothing submitted is lost (Label Studio holds each corrected annotation once, and the collected
version holds every book of it), collecting again makes no second version, every crossing of N
sends one event that starts exactly one ``loop`` run, and no request gets a 5xx. The numbers
are printed (``-s``) for the record.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from annotator_crowd import (
    ShelfTask,
    Tally,
    add_shelf_tasks,
    annotate_concurrently,
    click_line,
)
from test_training_trigger import caused_runs, loop_runs, ready_events

from annotator import training_trigger
from annotator.collect import collect
from annotator.labelstudio.client import client
from annotator.labelstudio.ml_backend_link import connect_ml_backend
from annotator.labelstudio.project import ensure_project
from bookcounter.settings import Settings, get_settings
from bookcounter.testing import free_port
from serving.ml_backend.backend import TITLE
from serving.ml_backend.server import start_backend, stop_backend

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

ANNOTATORS = 4
TASKS = 8
N = 3  # crossings at 3 and 6 of the 8 annotations
WATCH_EVERY_S = 0.5
SETTLE_S = 60  # the failure deadline for the events and runs to show up


def apply_loop(prefect: Settings) -> uuid.UUID:
    """The ``loop`` deployment with its trigger on this Prefect server, as ``bookcounter flows serve`` applies it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import deployments

    (loop,) = [d for d in deployments(prefect) if d.name == "loop"]
    with temporary_settings(updates={PREFECT_API_URL: f"{prefect.prefect_url}/api"}):
        return loop.apply()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest) -> tuple[Settings, Settings, uuid.UUID]:
    """(Label Studio server, Prefect server, its loop deployment), both on SQLite or both on PostgreSQL."""
    if request.param == "sqlite":
        ls, prefect = request.getfixturevalue("labelstudio"), request.getfixturevalue("prefect_server")
    else:
        ls, prefect = request.getfixturevalue("labelstudio_pg"), request.getfixturevalue("prefect_server_pg")
    return ls, prefect, apply_loop(prefect)


@pytest.fixture
def crowd_settings(stack, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A fresh project on that Label Studio, N = 3, events to that Prefect server, and the SAM
    backend on this state dir (so its webhook and the watcher share the crossing's lock)."""
    ls, prefect, _ = stack
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("BOOKCOUNTER_LS_PORT", str(ls.ls_port))
    monkeypatch.setenv("BOOKCOUNTER_LS_PROJECT_TITLE", f"crowd-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("BOOKCOUNTER_RETRAIN_EVERY_N_ANNOTATIONS", str(N))
    monkeypatch.setenv("BOOKCOUNTER_PREFECT_PORT", str(prefect.prefect_port))
    monkeypatch.setenv("BOOKCOUNTER_ML_BACKEND_PORT", str(free_port()))
    monkeypatch.setenv("BOOKCOUNTER_SAM_RANDOM_INIT", "true")
    get_settings.cache_clear()
    settings = get_settings()
    start_backend(settings)
    try:
        yield settings
    finally:
        stop_backend(settings)
        get_settings.cache_clear()


class Watcher(threading.Thread):
    """``watch-annotations``' check (``check_annotations(settings, "watch-annotations")``) every half second."""

    def __init__(self, settings: Settings):
        super().__init__(daemon=True)
        self.settings, self.stop, self.sent, self.errors = settings, threading.Event(), [], []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                _, crossing = training_trigger.check_annotations(self.settings, "watch-annotations")
                if crossing is not None:
                    self.sent.append(crossing)
            except Exception as e:  # noqa: BLE001  reported by the test
                self.errors.append(repr(e))
            self.stop.wait(WATCH_EVERY_S)


def settled_events(settings: Settings, project: int, final_index: int) -> list:
    """The project's ready events, once one for the final crossing is stored (or the deadline passed)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        found = ready_events(settings, project, 1)
        if any(e.payload.get("index") == final_index for e in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def record(kind: str, tasks: list[ShelfTask], tally: Tally, lost: int, duplicates: int, events: int, runs: int) -> None:
    print(
        f"\n[{kind}] annotators {ANNOTATORS}, tasks {len(tasks)}: submitted {len(tally.submitted)}, corrected "
        f"{tally.corrected}, lost {lost}, duplicate versions {duplicates}, 5xx {len(tally.server_errors)}, "
        f"other errors {len(tally.other_errors)}, clicks without a mask {tally.empty_clicks}, events {events}, "
        f"loop runs {runs}; {click_line(tally)}"
    )


def test_four_annotators_at_once_lose_nothing_and_start_one_loop_per_crossing(
    stack, crowd_settings: Settings, request: pytest.FixtureRequest
) -> None:
    _, _, deployment = stack
    settings = crowd_settings
    project = ensure_project(settings)
    backend_id = connect_ml_backend(settings, project, settings.ml_backend_url, TITLE)  # webhooks on every annotation
    tasks = add_shelf_tasks(settings, project, TASKS)
    runs_before = loop_runs(settings, deployment)

    watcher = Watcher(settings)
    watcher.start()
    try:
        tally = annotate_concurrently(settings, backend_id, tasks, ANNOTATORS)
        time.sleep(2 * WATCH_EVERY_S)  # the watcher sees the final count at least once
    finally:
        watcher.stop.set()
        watcher.join(30)
    assert not watcher.errors, watcher.errors
    assert tally.server_errors == [] and tally.other_errors == [], (tally.server_errors, tally.other_errors)
    assert len(tally.submitted) == tally.corrected == TASKS
    assert tally.empty_clicks == 0 and len(tally.first_click_ms) == len(tally.later_click_ms) == TASKS

    # Label Studio holds each task's one annotation, corrected to every book
    stored = {t.id: t.annotations for t in client(settings).tasks.list(project=project, fields="all")}
    lost = sum(1 for t in tasks if [len(a["result"]) for a in stored[t.id]] != [len(t.masks)])
    # the collected version holds every book of every photo; collecting again makes nothing
    made = collect(settings)
    coco = made.version.coco()
    sha_of = {img["id"]: img["sha256"] for img in coco["images"]}
    books = {sha: 0 for sha in sha_of.values()}
    for ann in coco["annotations"]:
        books[sha_of[ann["image_id"]]] += 1
    lost += sum(1 for t in tasks if books.get(t.sha256) != len(t.masks))
    again = collect(settings)
    duplicates = 0 if again is None else 1

    # every crossing of N (3, 6) was sent once, by the webhook or the watcher, and started one run
    events = settled_events(settings, project, TASKS // N)
    indexes = sorted(e.payload["index"] for e in events)
    caused = {str(e.id): caused_runs(settings, e.id) for e in events}
    new_runs = {k for k in loop_runs(settings, deployment) if k not in runs_before}
    record(request.node.callspec.id, tasks, tally, lost, duplicates, len(events), len(new_runs))
    assert lost == 0 and duplicates == 0
    assert indexes[-1] == TASKS // N and len(set(indexes)) == len(indexes)  # no crossing sent twice
    assert all(len(runs) == 1 for runs in caused.values()), caused
    assert {run for runs in caused.values() for run in runs} == {str(r) for r in new_runs}
