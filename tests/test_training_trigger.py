"""The one trigger, for real: Label Studio's webhook and ``watch-annotations`` count the same
annotations, send ``bookcounter.annotations.ready`` once per crossing, and a real Prefect server
(its triggers service on) turns that event into exactly one run of the ``loop`` deployment.

No worker serves the deployment here, so the runs stay scheduled: what is tested is that the
event made them, not the loop itself (``test_flows.py`` runs that).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_ml_backend_labelstudio import add_task, backend_in_thread, photo

from annotator import events, training_trigger
from annotator.labelstudio.client import client
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.ml_backend_link import connect_ml_backend
from annotator.labelstudio.project import ensure_project
from bookcounter.settings import Settings, get_settings
from bookcounter.testing import free_port
from serving.ml_backend.backend import TITLE

RUN_WAIT_S = 60  # the automation makes the run well within a second; this is the failure deadline


@pytest.fixture(scope="session")
def loop_deployment(prefect_server: Settings) -> uuid.UUID:
    """The ``loop`` deployment with its trigger, applied as ``bookcounter flows serve`` applies it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import deployments

    (loop,) = [d for d in deployments(prefect_server) if d.name == "loop"]
    with temporary_settings(updates={PREFECT_API_URL: f"{prefect_server.prefect_url}/api"}):
        return loop.apply()


@pytest.fixture
def trigger_settings(ls_settings: Settings, prefect_server: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with N = 2 that send events to the test's Prefect server (also for flows run here)."""
    monkeypatch.setenv("BOOKCOUNTER_RETRAIN_EVERY_N_ANNOTATIONS", "2")
    monkeypatch.setenv("BOOKCOUNTER_PREFECT_PORT", str(prefect_server.prefect_port))
    get_settings.cache_clear()
    return get_settings()


def prefect(settings: Settings):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: f"{settings.prefect_url}/api"}):
        return get_client(sync_client=True)


def loop_runs(settings: Settings, deployment_id: uuid.UUID) -> dict:
    """The deployment's runs made by something other than its schedule (events, by hand)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with prefect(settings) as c:
        runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return {r.id: r for r in runs if not r.auto_scheduled}  # not the nightly cron's scheduled runs


def wait_for_new_runs(settings: Settings, deployment_id: uuid.UUID, before: dict, n: int) -> dict:
    deadline = time.monotonic() + RUN_WAIT_S
    while time.monotonic() < deadline:
        new = {k: r for k, r in loop_runs(settings, deployment_id).items() if k not in before}
        if len(new) >= n:
            return new
        time.sleep(0.2)
    raise AssertionError(f"expected {n} new loop run(s) within {RUN_WAIT_S} s")


def ready_events(settings: Settings, project_id: int, n: int) -> list:
    """The project's ``bookcounter.annotations.ready`` events, once at least ``n`` are stored."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[events.ANNOTATIONS_READY]),
        resource=EventResourceFilter(id=[f"{events.RESOURCE_PREFIX}.{project_id}"]),
    )
    deadline = time.monotonic() + RUN_WAIT_S
    while True:  # the server stores events in batches
        with prefect(settings) as c:
            found = c.read_events(flt, limit=50).events
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def caused_runs(settings: Settings, event_id: uuid.UUID) -> list[str]:
    """Flow runs that Prefect's automations started for this event (its 'action executed' events)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    flt = EventFilter(
        event=EventNameFilter(name=["prefect.automation.action.executed"]),
        related=EventRelatedFilter(id=[f"prefect.event.{event_id}"]),
    )
    deadline = time.monotonic() + RUN_WAIT_S
    while True:
        with prefect(settings) as c:
            done = c.read_events(flt, limit=50).events
        runs = [
            r.id.removeprefix("prefect.flow-run.")
            for e in done
            for r in e.related
            if r.id.startswith("prefect.flow-run.")
        ]
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def annotate(settings: Settings, task_id: int) -> None:
    mask = np.zeros((640, 640), bool)
    mask[100:300, 200:260] = True
    client(settings).annotations.create(id=task_id, result=[brush_result(mask)])


def test_webhook_and_watcher_crossing_n_together_start_exactly_one_loop_run(
    trigger_settings: Settings, loop_deployment: uuid.UUID, sample_dir: Path
):
    from flows.loop import watch_annotations_flow

    settings = trigger_settings
    project = ensure_project(settings)
    tasks = [add_task(settings, project, photo(sample_dir, i)) for i in (0, 1)]
    before = loop_runs(settings, loop_deployment)
    with backend_in_thread(settings) as url:
        connect_ml_backend(settings, project, url, TITLE)  # Label Studio now posts each annotation to /webhook
        for task in tasks:  # the second one reaches N = 2
            annotate(settings, task["id"])
    # the backend has stopped, so every webhook check has finished: the webhook sent the event
    (run,) = wait_for_new_runs(settings, loop_deployment, before, 1).values()
    assert run.created_by.type == "AUTOMATION"  # made by the deployment's trigger
    (event,) = ready_events(settings, project, 1)
    assert event.payload["source"] == "webhook" and event.payload["pending"] == 2
    assert caused_runs(settings, event.id) == [str(run.id)]  # the run's cause is that event

    # the watcher counts the same 2 annotations, sees the crossing was sent, and sends nothing
    assert watch_annotations_flow() == {"pending": 2, "emitted": False}
    assert len(ready_events(settings, project, 2)) == 1
    assert set(loop_runs(settings, loop_deployment)) == set(before) | {run.id}


def test_concurrent_checks_of_one_crossing_send_one_event(trigger_settings: Settings, sample_dir: Path):
    settings = trigger_settings
    project = ensure_project(settings)
    for i in (2, 3, 4):
        annotate(settings, add_task(settings, project, photo(sample_dir, i))["id"])
    with ThreadPoolExecutor(4) as pool:  # the webhook of several annotations and the watcher at once
        results = list(pool.map(lambda s: training_trigger.check_annotations(settings, s), ["webhook", "watch"] * 2))
    assert [pending for pending, _ in results] == [3] * 4
    sent = [c for _, c in results if c is not None]
    assert len(sent) == 1 and (sent[0].relative_to, sent[0].index) == (None, 1)
    (event,) = ready_events(settings, project, 2)
    assert event.id == sent[0].event_id


def test_start_training_in_label_studio_starts_a_loop_run(
    trigger_settings: Settings, loop_deployment: uuid.UUID, sample_dir: Path
):
    settings = trigger_settings
    project = ensure_project(settings)
    before = loop_runs(settings, loop_deployment)
    with backend_in_thread(settings) as url:
        backend_id = connect_ml_backend(settings, project, url, TITLE)
        client(settings).ml.train(id=backend_id)  # the "Start training" button: START_TRAINING to /webhook
        (run,) = wait_for_new_runs(settings, loop_deployment, before, 1).values()
        assert run.created_by.type == "AUTOMATION"
        (event,) = ready_events(settings, project, 1)
        assert event.payload == {"source": "start-training"}
        assert caused_runs(settings, event.id) == [str(run.id)]
        # Label Studio's job protocol: the job is the event, its status the state of the run it caused
        job = httpx.post(f"{url}/job_status", json={"job": str(event.id)}, timeout=30).json()
        assert job == {"job_status": "queued"}  # scheduled: no worker serves the deployment here
        assert httpx.post(f"{url}/job_status", json={"job": str(uuid.uuid4())}, timeout=30).json() == {
            "job_status": "unknown"
        }


def test_start_training_without_a_prefect_server_says_so(ls_settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BOOKCOUNTER_PREFECT_PORT", str(free_port()))  # nothing listens there
    get_settings.cache_clear()
    with backend_in_thread(get_settings()) as url:
        answer = httpx.post(f"{url}/train", json={}, timeout=30).json()
    assert answer["status"] == "error" and "no Prefect server answers" in answer["error"]
