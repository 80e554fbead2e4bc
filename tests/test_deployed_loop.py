"""The loop as a team deploys it, end to end, in one test.

``bookcounter flows serve`` runs in a subprocess, as a user runs it: it starts its own Prefect
server and serves every deployment. A ``bookcounter serve`` counting server runs beside it. Then,
through Label Studio's API only, annotations cross N; the ``annotation-count`` deployment's
schedule (its interval shortened by ``BOOKCOUNTER_ANNOTATION_POLL_SECONDS``) runs
``watch-annotations``, which sends ``bookcounter.annotations.ready``; the ``loop`` deployment's
trigger makes a run, and the serve process executes it: collect -> new dataset version ->
retrain (the tiny recipe, set as the deployment's ``recipe`` parameter, as a user sets it in the
Prefect UI) -> promote. The decision must be in the log and the counting server must answer with
the new champion.

The dataset starts as a synthetic ``v0001`` (:func:`starting_dataset`); the annotations are
synthetic photos with their true masks. There is no champion before, so the candidate is judged
against the median-count baseline, which the tiny recipe beats on that version's test photos.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from fixtures_trainer import synthetic_photo, tiny_train_config

from annotator import events
from annotator.labelstudio.client import client
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import create_task, ensure_project, upload_photo
from bookcounter import masks as rle
from bookcounter.dataset_store import DatasetStore, NewImage
from bookcounter.images import sha256_bytes
from bookcounter.processes import answers
from bookcounter.settings import REPO_ROOT, Settings, get_settings
from bookcounter.testing import free_port
from flows.prefect_server import prefect_ui_server

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

START_S = 180  # a loaded 2-core machine: the Prefect server and both processes up
LOOP_S = 240  # the triggered loop run, from the annotations to COMPLETED (tiny training: ~30-60 s)
SWITCH_S = 60  # the counting server polls the registry every second
POLL_S = 15  # BOOKCOUNTER_ANNOTATION_POLL_SECONDS for the test (default 60)
NEVER = "0 0 29 2 *"  # the nightly crons of the test's serve: leap days at midnight only
T = TypeVar("T")


def starting_dataset(settings: Settings) -> None:
    """``v0001``: 10 train and 6 val photos of 1-5 books, 12 test photos of 1 or 2 books. The
    promotion gate compares the first candidate with the median count of train (3 or 4) photo by
    photo; on these test photos the tiny model is off by at most one book and the median by one
    to three, so the paired interval says "better" on 12 photos (on photos of 1-5 books it is
    too close to tell, and the gate rightly keeps no champion)."""
    rng = np.random.default_rng(0)
    items = []
    for split, n, books in (("train", 10, (1, 2, 3, 4, 5)), ("val", 6, (1, 2, 3, 4, 5)), ("test", 12, (1, 2))):
        for i in range(n):
            image, masks = synthetic_photo(int(rng.integers(1 << 30)), int(rng.choice(books)))
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            items.append(NewImage(buf.getvalue(), f"{split}_{i}.png", [rle.encode(m) for m in masks], split=split))
    DatasetStore.from_settings(settings).commit(items, source={"name": "synthetic"})


def tiny_recipe() -> dict[str, Any]:
    """The tiny model's training settings as the loop's ``recipe`` (the worker's device decides the device)."""
    recipe = tiny_train_config("unused").to_dict()
    del recipe["dataset"], recipe["device"]
    return recipe


@dataclass
class Deployed:
    settings: Settings
    api_url: str  # the Prefect API that `flows serve` started
    count_url: str  # the counting server
    logs: dict[str, Path]

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {name} ({path}):\n{path.read_text(errors='replace')[-6000:]}"
            for name, path in self.logs.items()
            if path.is_file()
        )


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` in its own process group (so every flow-run subprocess it starts is stopped with it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group ``start`` made, then SIGKILL what is left after ``timeout``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_for(
    what: str,
    get: Callable[[], T | None],
    timeout: float,
    procs: Sequence[subprocess.Popen] = (),
    deployed: Deployed | None = None,
) -> T:
    """Poll ``get`` until it returns something truthy; fail after ``timeout`` or when a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = get()
        if got:
            return got
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            break
        time.sleep(0.5)
    tails = deployed.log_tails() if deployed else ""
    raise AssertionError(f"{what}: not within {timeout:.0f} s{f' (exited: {dead})' if dead else ''}\n{tails}")


@pytest.fixture
def deployed(labelstudio: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployed]:
    """A fresh state dir holding the tiny ``v0001``, with `bookcounter flows serve` and
    `bookcounter serve` running on it (the session's Label Studio, a project of its own)."""
    env = {
        "BOOKCOUNTER_STATE_DIR": str(tmp_path / "var"),
        "BOOKCOUNTER_LS_PROJECT_TITLE": f"test-loop-{uuid.uuid4().hex[:8]}",
        "BOOKCOUNTER_RETRAIN_EVERY_N_ANNOTATIONS": "2",
        "BOOKCOUNTER_ANNOTATION_POLL_SECONDS": str(POLL_S),
        "BOOKCOUNTER_INBOX_POLL_SECONDS": "3600",  # nothing is dropped in the inbox here
        "BOOKCOUNTER_LOOP_CRON": NEVER,  # only the event starts the loop here
        "BOOKCOUNTER_BACKUP_CRON": NEVER,
        "BOOKCOUNTER_PREFECT_PORT": str(free_port()),
        "BOOKCOUNTER_SERVE_PORT": str(free_port()),
        "BOOKCOUNTER_RELOAD_POLL_SECONDS": "1",
        "PREFECT_HOME": str(tmp_path / "var" / "prefect"),
        "PREFECT_LOGGING_LEVEL": "INFO",  # the flow runs' logs, in the serve log
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # `flows serve` sets it to the server it starts
    get_settings.cache_clear()
    settings = get_settings()
    starting_dataset(settings)
    bookcounter = str(Path(sys.executable).with_name("bookcounter"))
    logs = {"flows serve": tmp_path / "flows-serve.log", "serve": tmp_path / "serve.log"}
    procs = [start([bookcounter, "serve"], logs["serve"]), start([bookcounter, "flows", "serve"], logs["flows serve"])]
    deployed = Deployed(settings, f"{settings.prefect_url}/api", settings.serve_url, logs)
    try:
        wait_for("the counting server", lambda: answers(f"{settings.serve_url}/healthz"), START_S, procs, deployed)
        wait_for("the loop deployment", lambda: deployment_id(deployed, "loop/loop"), START_S, procs, deployed)
        yield deployed
    finally:
        for proc in procs:
            stop(proc)
        prefect_ui_server(settings).stop()  # `flows serve` started it in the background
        get_settings.cache_clear()


def prefect_client(deployed: Deployed):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: deployed.api_url}):
        return get_client(sync_client=True)


def deployment_id(deployed: Deployed, name: str) -> uuid.UUID | None:
    if not answers(f"{deployed.api_url}/health"):
        return None
    from prefect.exceptions import ObjectNotFound

    try:
        with prefect_client(deployed) as c:
            return c.read_deployment_by_name(name).id
    except ObjectNotFound:
        return None


def runs_of(deployed: Deployed, deployment: uuid.UUID) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with prefect_client(deployed) as c:
        return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment])))


def ready_events(deployed: Deployed, project_id: int) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[events.ANNOTATIONS_READY]),
        resource=EventResourceFilter(id=[f"{events.RESOURCE_PREFIX}.{project_id}"]),
    )
    with prefect_client(deployed) as c:
        return c.read_events(flt, limit=50).events


def annotated_task(settings: Settings, project: int, seed: int, n_books: int) -> str:
    """A synthetic photo imported as a task and annotated with its true masks; returns its sha256."""
    image, masks = synthetic_photo(seed, n_books)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    url = upload_photo(settings, project, data, f"shelf-{seed}.png")
    task = create_task(
        settings, project, {"image": url, "sha256": sha256_bytes(data), "file_name": f"shelf-{seed}.png"}, []
    )
    client(settings).annotations.create(id=task, result=[brush_result(m) for m in masks])
    return sha256_bytes(data)


def test_annotations_crossing_n_run_the_served_loop_and_the_counting_server_switches(deployed: Deployed):
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.objects import StateType

    settings = deployed.settings
    loop = deployment_id(deployed, "loop/loop")
    watch = deployment_id(deployed, "watch-annotations/annotation-count")
    with prefect_client(deployed) as c:  # the tiny recipe, as a user sets the loop's parameters in the UI
        c.update_deployment(loop, DeploymentUpdate(parameters={"recipe": tiny_recipe()}))
    project = ensure_project(settings)
    shas = [annotated_task(settings, project, seed, n) for seed, n in ((101, 3), (102, 4))]  # N = 2 reached

    # the schedule: a watch-annotations run that the annotation-count schedule made counts the two
    # annotations and sends the event (nothing else here sends it: no ML backend, no webhook)
    (event,) = wait_for(
        "the scheduled watcher's event", lambda: ready_events(deployed, project), LOOP_S, deployed=deployed
    )
    assert event.payload["source"] == "watch-annotations" and event.payload["pending"] == 2
    with prefect_client(deployed) as c:  # it has done its part: the two cores go to the loop now
        c.pause_deployment(watch)
    scheduled = [r for r in runs_of(deployed, watch) if r.state_type == StateType.COMPLETED]
    assert scheduled and all(r.auto_scheduled for r in scheduled)

    # the automation makes one loop run and the serve process runs it to the end
    def finished_loop_run() -> Any:
        made = [r for r in runs_of(deployed, loop) if not r.auto_scheduled]
        if made and made[0].state and made[0].state.is_final():
            return made
        return None

    (run,) = wait_for("the triggered loop run to finish", finished_loop_run, LOOP_S, deployed=deployed)
    assert run.created_by.type == "AUTOMATION"
    assert run.state_type == StateType.COMPLETED, f"{run.state}\n{deployed.log_tails()}"
    assert run.parameters["recipe"] == tiny_recipe()

    # collect made v0002 = v0001 + the two annotated photos with their books
    version = DatasetStore.from_settings(deployed.settings).latest()
    assert version.name == "v0002"
    coco = version.coco()
    held = {im["sha256"]: im["id"] for im in coco["images"]}
    assert set(shas) <= set(held)
    assert sorted(sum(a["image_id"] == held[s] for a in coco["annotations"]) for s in shas) == [3, 4]

    # the decision is in the log: the candidate trained on v0002 was promoted
    (decision,) = [json.loads(line) for line in settings.decision_log.read_text().splitlines()]
    assert (decision["dataset_version"], decision["champion"], decision["decision"]) == ("v0002", None, "promoted"), (
        decision
    )
    candidate = decision["candidate"]

    # and the counting server, running all along, answers with the new champion
    photo, _ = synthetic_photo(7, 3)
    buf = io.BytesIO()
    photo.save(buf, format="PNG")

    def counted() -> dict | None:
        r = httpx.post(
            f"{deployed.count_url}/count", content=buf.getvalue(), headers={"content-type": "image/png"}, timeout=60
        )
        return r.json() if r.status_code == 200 and r.json()["model_version"] == candidate else None

    answer = wait_for("the counting server to answer with the new champion", counted, SWITCH_S, deployed=deployed)
    assert answer["count"] == len(answer["instances"])
    assert httpx.get(f"{deployed.count_url}/readyz", timeout=10).json() == {
        "status": "ready",
        "model_version": candidate,
    }
