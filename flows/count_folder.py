"""The ``count-folder`` flow: ``bookcounter count`` as a Prefect deployment, mapped over a task runner.

One task per photo, on Prefect's thread-pool runner in this process, or with
``BOOKCOUNTER_DASK_ADDRESS=tcp://host:8786`` on an existing Dask cluster through
``prefect_dask.DaskTaskRunner``. Each worker process loads the model once
(:func:`serving.batch.load_model`) from the model directory the flow names; workers need the
photos and the model files at the same paths, nothing else. Only the flow writes the results
file, deduplicated by (sha256, model version), so a task run again after its worker died
(Dask reschedules it on another worker; Prefect retries it) never gives a second row.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from bookcounter.settings import get_settings
from serving.batch import Results, Row, Tally, count_photo, find_photos, load_model, read_photo, resolve_model
from trainer.registry import ModelInfo

DASK_ADDRESS_ENV = "BOOKCOUNTER_DASK_ADDRESS"


def task_runner() -> TaskRunner:
    """Dask at ``BOOKCOUNTER_DASK_ADDRESS`` if set, else threads in this process (one per core)."""
    address = os.environ.get(DASK_ADDRESS_ENV)
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1)


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE, task_run_name="count {path}")
def count_photo_task(path: str, model_dir: str, info: ModelInfo, overlays: str | None, instances: bool) -> Row:
    settings = get_settings()
    model = load_model(Path(model_dir), info)
    return count_photo(
        read_photo(Path(path), settings), model, settings, Path(overlays) if overlays else None, instances
    )


@flow(name="count-folder", task_runner=task_runner(), log_prints=True)
def count_folder_flow(
    paths: list[str],
    out: str = "counts.csv",
    format: str = "csv",
    model: str = "champion",
    recursive: bool = False,
    overlays: str | None = None,
) -> dict[str, int]:
    """Count the photos of ``paths`` (photos or folders) into ``out``, as ``bookcounter count`` does."""
    settings = get_settings()
    photos = find_photos(map(Path, paths), recursive)
    model_dir, info = resolve_model(model)
    out_path = Path(out)
    tally = Tally()
    table: list[dict[str, object]] = []
    with Results(out_path, format) as results:
        pending: dict[tuple[str, str], str] = {}  # one task per distinct photo
        duplicates: list[tuple[str, str]] = []  # the same bytes under another path: skipped, as the CLI does
        for path in photos:
            photo = read_photo(path, settings)
            key = Row(str(path), photo.sha256, model_version=info.version).key
            if key in results.done:
                tally.skip(results, key)
            elif key in pending:
                duplicates.append(key)
            else:
                pending[key] = str(path)
        print(f"count-folder: {len(photos)} photos, {len(pending)} to count with model version {info.version}")
        futures = count_photo_task.map(
            list(pending.values()),
            unmapped(str(model_dir)),
            unmapped(info),
            unmapped(overlays),
            unmapped(format == "json"),
        )
        key_of = {future.task_run_id: key for future, key in zip(futures, pending)}
        for future in as_completed(futures):
            try:
                row = future.result()
            except Exception as e:  # the task failed on every try (its worker kept dying, say)
                sha, _ = key = key_of[future.task_run_id]
                error = f"{pending[key]}: not counted ({type(e).__name__}: {e})".splitlines()[0]
                row = Row(pending[key], "" if sha.startswith("path:") else sha, model_version=info.version, error=error)
            if results.append(row):
                tally.add(row)
                table.append({"photo": row.path, "books": row.count, "error": row.error})
            else:
                tally.skip(results, row.key)
        for key in duplicates:
            tally.skip(results, key)
    create_table_artifact(table, key="count-folder", description=tally.line(out_path))
    print(f"count-folder: {tally.line(out_path)}")
    return {
        "photos": len(photos),
        "books": tally.books,
        "counted": tally.counted,
        "failed": tally.failed,
        "skipped": tally.skipped,
    }
