"""Flows SIGKILLed at known points of their work, then run again, for real (Label Studio, Prefect, MLflow).

Each killed run is a subprocess in its own process group with ``tests/killpoint`` on its
PYTHONPATH: it stops for good right after a named function returns (see its sitecustomize),
the test sees the mark file that says so, and kills the whole group with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from fixtures_labelstudio import save_photo, shelf_photo
from fixtures_trainer import make_synthetic_store, synthetic_photo, tiny_train_config

from annotator.labelstudio.client import client
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import ensure_project
from bookcounter.dataset_store import DatasetStore
from bookcounter.images import sha256_file
from bookcounter.locks import file_lock
from bookcounter.settings import REPO_ROOT, Settings
from flows.loop import collect_flow, retrain_flow
from flows.prelabel import prelabel_flow
from serving.metrics import ServingMetrics
from serving.model_slot import ModelSlot
from trainer import promote, registry

pytestmark = pytest.mark.slow  # flows in subprocesses, trained and killed

KILLPOINT_DIR = Path(__file__).parent / "killpoint"
BOOKCOUNTER = str(Path(sys.executable).parent / "bookcounter")
KILLPOINT_TIMEOUT_S = 300.0


def run_until_killed(args: list[str], killpoint: str, tmp_path: Path, after: int = 1) -> None:
    """Run ``args`` until the ``after``-th call of ``killpoint`` (``module:qualname``) returns, then SIGKILL it."""
    mark = tmp_path / f"killpoint-{uuid.uuid4().hex[:8]}.pid"
    log = tmp_path / f"{mark.stem}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        PYTHONPATH=f"{KILLPOINT_DIR}{os.pathsep}{REPO_ROOT}",
        PREFECT_HOME=str(Path(os.environ["BOOKCOUNTER_STATE_DIR"]) / "prefect"),  # its own Prefect database
        BOOKCOUNTER_KILLPOINT=killpoint,
        BOOKCOUNTER_KILLPOINT_AFTER=str(after),
        BOOKCOUNTER_KILLPOINT_MARK=str(mark),
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + KILLPOINT_TIMEOUT_S
        while not mark.exists():  # observing the process, not waiting for a guess
            assert proc.poll() is None, f"{killpoint} was never reached; the run ended:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{killpoint} not reached within {KILLPOINT_TIMEOUT_S:.0f} s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def tasks_of(settings: Settings) -> list[dict]:
    return [
        t.dict() for t in client(settings).tasks.list(project=ensure_project(settings), fields="all", resolve_uri=False)
    ]


def assert_lock_is_free(path: Path) -> None:
    """The killed run's lock file is still there; it must not hold anyone back."""
    assert path.is_file()
    with file_lock(path, blocking=False) as mine:
        assert mine, f"{path} is still held after the process that took it was killed"


def test_prelabel_killed_between_a_task_and_filing_its_photo(ls_settings: Settings, tmp_path: Path) -> None:
    photos = [save_photo(shelf_photo(96, 64, seed=40 + i), ls_settings.inbox_dir / f"k{i}.jpg") for i in range(5)]
    shas = sorted(sha256_file(p) for p in photos)
    # killed right after the second task was created, before its photo moved to inbox/done
    run_until_killed([BOOKCOUNTER, "flows", "run", "prelabel"], "annotator.prelabel:create_task", tmp_path, after=2)
    assert len(tasks_of(ls_settings)) == 2
    assert len(list(ls_settings.inbox_dir.glob("*.jpg"))) == 4
    assert_lock_is_free(ls_settings.run_dir / "prelabel.lock")

    assert prelabel_flow() == {"imported": 3, "already_there": 1, "rejected": 0}

    tasks = tasks_of(ls_settings)
    assert sorted(t["data"]["sha256"] for t in tasks) == shas  # each photo once: no duplicate task
    assert not list(ls_settings.inbox_dir.glob("*.jpg"))
    assert sorted(p.name for p in (ls_settings.inbox_dir / "done").iterdir()) == sorted(p.name for p in photos)


def test_collect_killed_while_writing_a_version(ls_settings: Settings, tmp_path: Path) -> None:
    for i in range(3):
        save_photo(shelf_photo(96, 64, seed=50 + i), ls_settings.inbox_dir / f"c{i}.jpg")
    prelabel_flow()
    ls = client(ls_settings)
    for task in tasks_of(ls_settings):
        mask = np.zeros((64, 96), bool)
        mask[10:60, 20:30] = True
        ls.annotations.create(id=task["id"], result=[brush_result(mask)], lead_time=5.0)
    store = DatasetStore.from_settings(ls_settings)
    # killed with the images stored and both files of v0001 written to its temp dir, not yet renamed
    run_until_killed(
        [BOOKCOUNTER, "flows", "run", "collect"], "bookcounter.dataset_store:_write_file", tmp_path, after=2
    )
    assert store.versions() == []  # nothing half-written is visible
    assert any(p.name.startswith(".tmp-") for p in store.root.iterdir()), "the kill should have left the temp version"
    assert_lock_is_free(store.root / ".lock")

    assert collect_flow() == "v0001"

    assert [v.name for v in store.versions()] == ["v0001"]
    assert not [p.name for p in store.root.iterdir() if p.name.startswith(".tmp-")]  # nothing orphaned
    assert store.verify("v0001") == []
    assert sum(c["images"] for c in store.get("v0001").manifest()["counts"].values()) == 3
    verify = subprocess.run(
        [BOOKCOUNTER, "dataset", "verify", "v0001"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert collect_flow() is None  # the rerun finished the job: nothing left to collect


def _recipe(epochs: int) -> dict:
    cfg = tiny_train_config("unused", epochs=epochs).to_dict()
    cfg.pop("dataset")
    return cfg


RETRAIN = "import json, sys; from flows.loop import retrain_flow; retrain_flow(recipe=json.loads(sys.argv[1]))"


@pytest.mark.parametrize(
    "killpoint",
    [
        "trainer.train:_save_checkpoint",  # mid-training: epoch 1 of 3 checkpointed
        "mlflow.tracking.client:MlflowClient.log_artifacts",  # mid-registration: run and model files logged, no version
        "mlflow.tracking.client:MlflowClient.create_model_version",  # registered, not judged yet
    ],
    ids=["mid-epoch", "mid-registration", "before-promotion"],
)
def test_retrain_killed_then_rerun(settings: Settings, tmp_path: Path, killpoint: str) -> None:
    make_synthetic_store(settings.datasets_dir, {"train": 4, "val": 2, "test": 2})
    first = retrain_flow(recipe=_recipe(epochs=1))
    if registry.champion() is None:
        registry.set_champion(first["candidate"])
    champion = registry.champion().version
    make_synthetic_store(settings.datasets_dir, {"train": 2, "test": 1}, seed=1)  # new photos: v0002
    assert DatasetStore.from_settings(settings).latest().name == "v0002"

    run_until_killed([sys.executable, "-c", RETRAIN, json.dumps(_recipe(epochs=3))], killpoint, tmp_path)

    assert registry.champion().version == champion  # the alias did not move
    slot = ModelSlot(registry, ServingMetrics(), poll_seconds=60)
    slot.sync()
    assert slot.current is not None and slot.current.version == champion  # and serving loads it
    photo, _ = synthetic_photo(seed=5, n_books=3)
    slot.current.predictor.predict(photo)
    assert_lock_is_free(settings.run_dir / "retrain.lock")

    decision = retrain_flow(recipe=_recipe(epochs=1))

    assert decision is not None and decision["dataset_version"] == "v0002"  # the rerun finished the job
    on_v2 = [m.version for m in registry.versions() if m.dataset_version == "v0002"]
    assert on_v2 == [decision["candidate"]]  # one candidate for v0002, judged once
    assert [d["dataset_version"] for d in promote.history()] == ["v0001", "v0002"]
    won = decision["decision"] == "promoted"
    assert registry.champion().version == (decision["candidate"] if won else champion)
    assert retrain_flow(recipe=_recipe(epochs=1)) is None  # and nothing is left to do


def test_retrain_killed_between_its_decision_and_the_alias_switch(settings: Settings, tmp_path: Path) -> None:
    """Killed after the decision is logged, before the alias moves: the rerun finishes the job
    (moves the alias if the decision was "promoted") without judging the candidate again."""
    make_synthetic_store(settings.datasets_dir, {"train": 4, "val": 2, "test": 2})
    first = retrain_flow(recipe=_recipe(epochs=1))
    if registry.champion() is None:
        registry.set_champion(first["candidate"])
    champion = registry.champion().version
    make_synthetic_store(settings.datasets_dir, {"train": 2, "test": 1}, seed=1)

    run_until_killed(
        [sys.executable, "-c", RETRAIN, json.dumps(_recipe(epochs=3))], "trainer.promote:_record", tmp_path
    )

    last = promote.history()[-1]
    assert last["dataset_version"] == "v0002" and registry.champion().version == champion  # decided, not switched
    rerun = retrain_flow(recipe=_recipe(epochs=1))
    won = last["decision"] == "promoted"
    assert rerun == (last if won else None)
    assert registry.champion().version == (last["candidate"] if won else champion)
    assert len(promote.history()) == 2  # judged once
    assert retrain_flow(recipe=_recipe(epochs=1)) is None
