"""`bookcounter backup` while Label Studio runs, the state dir wiped, `bookcounter restore`: all back."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_labelstudio import save_photo, shelf_photo
from fixtures_trainer import make_synthetic_store

from annotator.collect import collect, pending_annotations
from annotator.labelstudio.client import client
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import ensure_project
from annotator.labelstudio.server import start_server, stop_server
from annotator.prelabel import Masker, prelabel
from bookcounter.dataset_store import DatasetStore
from bookcounter.settings import REPO_ROOT, Settings, get_settings
from bookcounter.testing import free_port
from flows.state_backup import MANIFEST, read_manifest
from trainer import promote, registry

BOOKCOUNTER = str(Path(sys.executable).parent / "bookcounter")
LS_START_TIMEOUT_S = 300.0  # a cold start on a fresh database, on a shared 2-core machine


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BOOKCOUNTER, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


def annotations_of(settings: Settings) -> dict[int, list]:
    """task id -> the results of its annotations, as Label Studio returns them."""
    ls = client(settings)
    tasks = ls.tasks.list(project=ensure_project(settings), fields="all", resolve_uri=False)
    return {t.id: [a["result"] for a in t.annotations or []] for t in tasks}


def wipe(state_dir: Path) -> None:
    registry._clients.clear()  # as a new process would: no MLflow connection to the deleted database
    shutil.rmtree(state_dir)


def champion_with_a_decision(tiny_model_dir: Path) -> str:
    """The tiny model registered and judged (on the tiny dataset's test split), and made the champion."""
    candidate = registry.register(tiny_model_dir).version
    promote.promote(candidate, progress=False)
    if registry.champion() is None:
        registry.set_champion(candidate)
    return candidate


@pytest.mark.labelstudio
def test_backup_while_running_wipe_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    state = tmp_path / "var"
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(state))
    monkeypatch.setenv("BOOKCOUNTER_LS_PORT", str(free_port()))  # a Label Studio of its own, data under state
    get_settings.cache_clear()
    s = get_settings()
    make_synthetic_store(s.datasets_dir, {"train": 10, "val": 4, "test": 4})  # v0001: what the tiny model learnt
    champion = champion_with_a_decision(tiny_model_dir)
    start_server(s, timeout=LS_START_TIMEOUT_S)
    try:
        s.inbox_dir.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            save_photo(shelf_photo(96, 64, seed=60 + i), s.inbox_dir / f"b{i}.jpg")
        prelabel(s, masker=Masker(None, None))
        save_photo(shelf_photo(96, 64, seed=70), s.inbox_dir / "pending.jpg")  # dropped, not pre-labelled yet
        first, second = sorted(annotations_of(s))
        ls = client(s)
        mask = np.zeros((64, 96), bool)
        mask[8:56, 10:24] = True
        ls.annotations.create(id=first, result=[brush_result(mask)], lead_time=3.0)
        assert collect(s).version.name == "v0002"
        mask[8:56, 40:52] = True
        ls.annotations.create(id=second, result=[brush_result(mask)], lead_time=4.0)  # only in Label Studio's database
        assert pending_annotations(s).count == 1
        secrets = state / "secrets.env"
        if not secrets.is_file():
            secrets.write_text("# stands in for the generated secrets\n")
            secrets.chmod(0o600)

        done = cli("backup", str(tmp_path / "backup"))  # Label Studio still running
        assert done.returncode == 0, done.stderr
        manifest = read_manifest(tmp_path / "backup")
        kinds = {rel: f["kind"] for rel, f in manifest["files"].items()}
        assert kinds["label-studio/label_studio.sqlite3"] == kinds["mlflow/mlflow.db"] == "sqlite"
        assert "inbox/pending.jpg" in kinds and "registry/decisions.jsonl" in kinds and "secrets.env" in kinds
        assert not [rel for rel in kinds if rel.startswith(("runs/", "run/", "prefect/"))]
        assert stat.S_IMODE((tmp_path / "backup" / "files" / "secrets.env").stat().st_mode) == 0o600

        before = {
            "annotations": annotations_of(s),
            "versions": [(v.name, v.manifest()["content_hash"]) for v in DatasetStore.from_settings(s).versions()],
            "history": promote.history(),
            "models": registry.versions(),
            "secrets": secrets.read_text(),
        }
    finally:
        stop_server(s)
    wipe(state)

    state.mkdir()
    (state / "something").write_text("x")
    refused = cli("restore", str(tmp_path / "backup"))
    assert refused.returncode == 1 and "not empty" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    shutil.rmtree(state)
    done = cli("restore", str(tmp_path / "backup"))
    assert done.returncode == 0, done.stderr

    store = DatasetStore.from_settings(s)
    assert [(v.name, v.manifest()["content_hash"]) for v in store.versions()] == before["versions"]
    assert all(store.verify(v.name) == [] for v in store.versions())
    assert registry.champion().version == champion and registry.load_predictor() is not None
    assert registry.versions() == before["models"]
    assert promote.history() == before["history"] and before["history"]
    assert (s.inbox_dir / "pending.jpg").is_file()
    assert secrets.read_text() == before["secrets"] and stat.S_IMODE(secrets.stat().st_mode) == 0o600
    start_server(s, timeout=LS_START_TIMEOUT_S)  # on the restored database
    try:
        assert annotations_of(s) == before["annotations"]
        assert pending_annotations(s).count == 1
        made = collect(s)
        assert made is not None and made.version.name == "v0003"  # the annotation that was only in Label Studio
        assert collect(s) is None  # and no duplicate version
        assert [v.name for v in store.versions()] == ["v0001", "v0002", "v0003"]
    finally:
        stop_server(s)


def test_restore_elsewhere_points_mlflow_at_the_new_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(old))
    get_settings.cache_clear()
    make_synthetic_store(get_settings().datasets_dir, {"train": 10, "val": 4, "test": 4})
    champion = champion_with_a_decision(tiny_model_dir)
    assert cli("backup", str(tmp_path / "b")).returncode == 0
    wipe(old)  # the old place is gone: nothing may still point there
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(new))
    get_settings.cache_clear()
    done = cli("restore", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    assert registry.model_dir(champion).is_relative_to(new)
    assert registry.load_predictor() is not None
    retrained = registry.register(registry.model_dir(champion))  # a new run writes its artifacts under new/
    assert registry.model_dir(retrained.version).is_relative_to(new) and not old.exists()


def test_a_damaged_backup_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    make_synthetic_store(get_settings().datasets_dir, {"train": 2})
    assert cli("backup", str(tmp_path / "b")).returncode == 0
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    image = next(rel for rel in manifest["files"] if rel.startswith("datasets/images/"))
    (tmp_path / "b" / "files" / image).write_bytes(b"not the photo")
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(tmp_path / "other"))
    get_settings.cache_clear()
    refused = cli("restore", str(tmp_path / "b"))
    assert refused.returncode == 1 and "does not match its sha256" in refused.stderr
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


@pytest.mark.slow  # a Prefect flow (a temporary Prefect server)
def test_nightly_backup_flow_keeps_the_newest_k(settings: Settings) -> None:
    from flows.backup import backup_flow

    make_synthetic_store(settings.datasets_dir, {"train": 2})
    made = [Path(backup_flow(keep=2)) for _ in range(3)]
    assert all(p.parent == settings.backups_dir for p in made)
    assert sorted(p.name for p in settings.backups_dir.iterdir()) == sorted(p.name for p in made[1:])
    assert all(os.path.isfile(p / MANIFEST) for p in made[1:])
