"""The ``prelabel`` flow: new inbox photos -> SAM masks -> Label Studio tasks (idempotent)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from annotator.prelabel import PrelabelReport, prelabel
from bookcounter.settings import get_settings
from flows.loop import ensure_labelstudio
from trainer.registry import load_predictor


@task(timeout_seconds=3600)
def prelabel_task(inbox: str | None) -> PrelabelReport:
    # Label Studio requests retry in the SDK client (annotator/labelstudio/client.py), not here.
    return prelabel(get_settings(), Path(inbox) if inbox else None, champion=load_predictor)


@flow(name="prelabel", log_prints=True)
def prelabel_flow(inbox: str | None = None) -> dict[str, int]:
    """Import every new photo of the inbox (default ``var/inbox``) as a Label Studio task."""
    settings = get_settings()
    folder = Path(inbox) if inbox else settings.inbox_dir
    folder.mkdir(parents=True, exist_ok=True)
    if not any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir()):
        print(f"prelabel: inbox {folder} is empty")
        return {"imported": 0, "already_there": 0, "rejected": 0}
    ensure_labelstudio()
    report = prelabel_task(str(folder))
    rows = [
        {"photo": n, "task": t, "masks": report.predictions.get(n, 0), "status": "imported"}
        for n, t in report.imported.items()
    ]
    rows += [
        {"photo": n, "task": t, "masks": "", "status": "already in Label Studio"}
        for n, t in report.already_there.items()
    ]
    rows += [{"photo": n, "task": "", "masks": "", "status": f"rejected: {r}"} for n, r in report.rejected.items()]
    if rows:
        create_table_artifact(rows, key="prelabel", description=report.line())
    print(f"prelabel: {report.line()}")
    return {
        "imported": len(report.imported),
        "already_there": len(report.already_there),
        "rejected": len(report.rejected),
    }
