"""Counting many photos: ``bookcounter count`` (a real subprocess), kill and resume, and the
``count-folder`` flow on a real Dask ``LocalCluster`` through prefect-dask, on the tiny champion."""

from __future__ import annotations

import csv
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from distributed.diagnostics.plugin import WorkerPlugin
from fixtures_trainer import synthetic_photo
from PIL import Image

pytestmark = pytest.mark.slow

BOOKCOUNTER = Path(sys.executable).with_name("bookcounter")


def run_count(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BOOKCOUNTER), "count", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# The books in each photo of ``shelf``: what a count is checked against.
TRUE_COUNTS = {**{f"part-{i}.png": 1 + i % 5 for i in range(5)}, "part-9.png": 3}


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory, tiny_champion) -> Path:
    """Five synthetic photos, one subfolder photo, and one file that is no photo at all."""
    folder = tmp_path_factory.mktemp("shelf")
    for i in range(5):
        synthetic_photo(100 + i, TRUE_COUNTS[f"part-{i}.png"])[0].save(folder / f"part-{i}.png")
    (folder / "more").mkdir()
    synthetic_photo(200, TRUE_COUNTS["part-9.png"])[0].save(folder / "more" / "part-9.png")
    (folder / "notes.jpg").write_text("not a photo, just notes\n")
    (folder / "readme.txt").write_text("not a photo suffix: ignored in a folder\n")
    return folder


@pytest.fixture(scope="module")
def expected(shelf: Path, tiny_model_dir: Path) -> dict[str, int]:
    """Each good photo's count by the champion's model run directly (file name -> books)."""
    from trainer.predictor import Predictor

    predictor = Predictor(tiny_model_dir)
    return {p.name: len(predictor.predict(Image.open(p).convert("RGB"))) for p in shelf.rglob("*.png")}


@pytest.fixture(scope="module")
def cli_rows(shelf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path_factory.mktemp("cli") / "counts.csv"
    done = run_count(str(shelf), "--recursive", "--out", str(out), cwd=shelf)
    return done, read_csv(out)


def test_cli_writes_one_row_per_photo_and_fails_on_the_bad_one(cli_rows, shelf: Path, expected, tiny_champion) -> None:
    done, rows = cli_rows
    assert done.returncode == 1, done.stderr
    assert sorted(Path(r["path"]).name for r in rows) == sorted([*expected, "notes.jpg"])  # not readme.txt
    bad = [r for r in rows if r["error"]]
    assert [Path(r["path"]).name for r in bad] == ["notes.jpg"]
    assert "not an image" in bad[0]["error"] and bad[0]["count"] == "" and len(bad[0]["sha256"]) == 64
    good = [r for r in rows if not r["error"]]
    assert {Path(r["path"]).name: int(r["count"]) for r in good} == expected
    errors = [abs(int(r["count"]) - TRUE_COUNTS[Path(r["path"]).name]) for r in good]
    assert sum(errors) / len(errors) <= 1.0, errors  # against the books in the photos
    for r in good:
        assert r["model_version"] == tiny_champion.version
        assert (r["width"], r["height"]) == ("96", "96") and float(r["seconds"]) > 0 and float(r["threshold"]) > 0
    total = sum(expected.values())
    assert f"{total} books in 7 photos: 6 counted, 1 failed" in done.stdout


def test_cli_without_recursive_or_photos_says_so(shelf: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = run_count(str(tmp_path / "empty"), "--out", str(tmp_path / "c.csv"), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'empty'}: no photos in this folder")


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path: Path, tiny_champion) -> None:
    photos = tmp_path / "library"
    photos.mkdir()
    for i in range(40):
        synthetic_photo(300 + i, 1 + i % 5)[0].resize((384, 384)).save(photos / f"shelf-{i:02d}.png")
    out, overlays = tmp_path / "counts.jsonl", tmp_path / "overlays"
    args = [str(BOOKCOUNTER), "count", str(photos), "--out", str(out), "--format", "json", "--overlays", str(overlays)]
    proc = subprocess.Popen(args, cwd=tmp_path, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 300
    while not re.search(rb"\b([3-9]|\d\d)/40\b", seen):  # tqdm says three photos are done
        left = deadline - time.monotonic()
        assert left > 0, (
            f"bookcounter count did not finish three photos within 300 s: {seen.decode(errors='replace')[-2000:]}"
        )
        if not select.select([proc.stderr], [], [], left)[0]:
            continue
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"bookcounter count ended early: {seen.decode(errors='replace')[-2000:]}"
        seen += chunk
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    first = out.read_text().splitlines()
    assert 3 <= len(first) < 40, "the kill came after the batch ended: nothing to resume"
    with open(out, "a") as f:  # a kill inside the one write of a row leaves at most this
        f.write('{"path": "' + str(photos / "shelf-39.png") + '", "sha2')

    done = run_count(str(photos), "--out", str(out), "--format", "json", "--overlays", str(overlays), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in photos.iterdir())
    assert rows[: len(first)] == [json.loads(line) for line in first]  # earlier rows kept as they were
    assert all(not r["error"] and r["count"] == len(r["instances"]) for r in rows)
    assert f"{len(first)} skipped (already in {out})" in done.stdout
    assert len(list(overlays.glob("*.png"))) == 40

    again = run_count(str(photos), "--out", str(out), "--format", "json", cwd=tmp_path)
    assert again.returncode == 0 and "0 counted, 0 failed, 40 skipped" in again.stdout
    assert len(out.read_text().splitlines()) == 40


def test_count_folder_flow_on_a_dask_local_cluster_gives_the_cli_counts(
    cli_rows, shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, LocalCluster

    from flows.count_folder import DASK_ADDRESS_ENV, count_folder_flow, task_runner

    out = tmp_path / "flow.csv"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.setenv(DASK_ADDRESS_ENV, cluster.scheduler_address)
        runner = task_runner()
        assert type(runner).__name__ == "DaskTaskRunner"
        summary = count_folder_flow.with_options(task_runner=runner)(paths=[str(shelf)], out=str(out), recursive=True)
        with Client(cluster) as client:
            workers_with_model = client.run(lambda: len(__import__("serving.batch").batch._models))
    assert sorted(workers_with_model.values()) == [1, 1]  # both workers counted, each loaded the model once
    _, cli = cli_rows
    rows = read_csv(out)
    by_sha = {r["sha256"]: (r["count"], r["model_version"], r["error"]) for r in rows}
    assert len(by_sha) == len(rows) == len(cli)
    assert by_sha == {r["sha256"]: (r["count"], r["model_version"], r["error"]) for r in cli}
    assert summary == {
        "photos": 7,
        "books": sum(int(r["count"] or 0) for r in cli),
        "counted": 6,
        "failed": 1,
        "skipped": 0,
    }

    again = count_folder_flow(paths=[str(shelf)], out=str(out), recursive=True)  # Prefect's thread pool this time
    assert again["skipped"] == 7 and again["counted"] == 0 and len(read_csv(out)) == 7


class DieOnFirstTask(WorkerPlugin):
    """A Dask worker plugin: the first worker to start a task dies on the spot (once per test)."""

    name = "die-on-first-task"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish == "executing":
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(1)


def test_a_worker_that_dies_mid_batch_has_its_photo_counted_elsewhere_once(
    cli_rows, shelf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, LocalCluster

    from flows.count_folder import DASK_ADDRESS_ENV, count_folder_flow, task_runner

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    marker = tmp_path / "a-worker-died"
    out = tmp_path / "flow.csv"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.register_plugin(DieOnFirstTask(str(marker)))
        monkeypatch.setenv(DASK_ADDRESS_ENV, cluster.scheduler_address)
        summary = count_folder_flow.with_options(task_runner=task_runner())(
            paths=[str(shelf)], out=str(out), recursive=True
        )
    assert marker.is_file()  # a worker did die with a photo in hand
    _, cli = cli_rows
    rows = read_csv(out)
    assert sorted(r["sha256"] for r in rows) == sorted(r["sha256"] for r in cli)  # each photo once
    assert {r["sha256"]: r["count"] for r in rows} == {r["sha256"]: r["count"] for r in cli}
    assert summary["counted"] == 6 and summary["failed"] == 1
