"""The project, its tasks, and the photos in its media store.

What is uploaded is an upright copy (``annotator.prelabel.served_copy``): EXIF orientation
applied, 8-bit RGB, so the pixel grid the annotator paints on is the one our masks use. Each
task carries the inbox file's ``sha256`` in its data; that is the idempotency key of
pre-labelling.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.core import ApiError

from annotator.labelstudio.client import api_errors, checked, client, raw_requests
from annotator.labelstudio.errors import LabelStudioError
from annotator.labelstudio.label_config import LABEL_CONFIG
from annotator.labelstudio.views import ensure_view
from bookcounter.locks import file_lock
from bookcounter.settings import Settings

log = logging.getLogger(__name__)

MEDIA_URL = "/data/"  # Label Studio's MEDIA_URL: the file-uploads API gives names relative to it


def ensure_project(settings: Settings) -> int:
    """The id of the project titled ``settings.ls_project_title``, created once.

    An existing project whose labelling config differs from :data:`LABEL_CONFIG` is updated
    (the config only ever gains tools, so existing annotations stay valid). Its saved tab
    :data:`LEAST_SURE_TAB` is made too.
    """
    project_id = _find_or_create_project(settings)
    ensure_least_sure_tab(settings, project_id)
    return project_id


def _find_or_create_project(settings: Settings) -> int:
    ls = client(settings)
    title = settings.ls_project_title
    with (
        file_lock(settings.run_dir / "labelstudio-project.lock"),
        api_errors(settings, f"find or create project {title!r}"),
    ):
        found = [p for p in ls.projects.list(title=title) if p.title == title]
        if found:
            project = ls.projects.get(id=min(p.id for p in found))
            if (project.label_config or "").strip() != LABEL_CONFIG.strip():
                ls.projects.update(id=project.id, label_config=LABEL_CONFIG)
            return project.id
        return ls.projects.create(
            title=title,
            description="Instance masks of books; pre-labelled by bookcounter (SAM / Mask R-CNN).",
            label_config=LABEL_CONFIG,
        ).id


def task_shas(settings: Settings, project_id: int) -> dict[str, int]:
    """sha256 (of the inbox file) -> task id, for every task of the project that has one."""
    ls = client(settings)
    out: dict[str, int] = {}
    with api_errors(settings, "list tasks"):
        for t in ls.tasks.list(project=project_id, fields="task_only", resolve_uri=False, page_size=500):
            sha = (t.data or {}).get("sha256")
            if sha:
                out.setdefault(sha, t.id)
    return out


def upload_photo(settings: Settings, project_id: int, data: bytes, file_name: str) -> str:
    """Upload a photo into the project's media store (no task yet); returns its ``/data/upload`` URL."""
    mime = mimetypes.guess_type(file_name)[0] or "application/octet-stream"
    with raw_requests(settings) as http, api_errors(settings, f"upload {file_name}"):
        r = checked(
            http.request(
                f"api/projects/{project_id}/import",
                method="POST",
                params={"commit_to_project": "false"},
                files={"file": (file_name, data, mime)},
            )
        )
        upload_id = r.json()["file_upload_ids"][0]
        r = checked(
            http.request(
                f"api/projects/{project_id}/file-uploads", method="GET", params={"ids": json.dumps([upload_id])}
            )
        )
    url = next(u["file"] for u in r.json() if u["id"] == upload_id)
    return f"{MEDIA_URL}{url.lstrip('/')}"


def create_task(settings: Settings, project_id: int, data: dict[str, Any], predictions: list[dict[str, Any]]) -> int:
    """Import one task with its predictions in a single request; returns the task id.

    Safe to run again: a task that already has this ``sha256`` is returned, not imported twice.
    """
    ls = client(settings)
    sha = data["sha256"]
    with api_errors(settings, f"import task for {data.get('file_name', sha[:12])}"):
        existing = _find_task(ls, project_id, sha)
        if existing is not None:
            return existing
        res = ls.projects.import_tasks(
            id=project_id, request=[{"data": data, "predictions": predictions}], return_task_ids=True
        )
        ids = getattr(res, "task_ids", None) or []
        return ids[0] if ids else _find_task(ls, project_id, sha)


def update_task_data(settings: Settings, task_id: int, data: dict[str, Any]) -> None:
    """Replace one task's ``data`` (PATCH of the task): its annotations and predictions stay as they are."""
    with api_errors(settings, f"update task {task_id}"):
        client(settings).tasks.update(id=str(task_id), data=data)


def _find_task(ls: LabelStudio, project_id: int, sha: str) -> int | None:
    query = json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [{"filter": "filter:tasks:data.sha256", "operator": "equal", "type": "String", "value": sha}],
            }
        }
    )
    for t in ls.tasks.list(project=project_id, query=query, fields="task_only", resolve_uri=False, page_size=10):
        if (t.data or {}).get("sha256") == sha:
            return t.id
    return None


def latest_submitted(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's latest annotation that a person submitted (cancelled/skipped ones do not count)."""
    submitted = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(submitted, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a["id"]), default=None)


def fetch_photo(settings: Settings, url: str) -> bytes:
    """The bytes behind a task's image URL (``/data/upload/...`` or any URL Label Studio serves)."""
    with raw_requests(settings) as http, api_errors(settings, f"fetch {url}"):
        return checked(http.request(url, method="GET")).content


def export_snapshot(settings: Settings, project_id: int, timeout: float = 300.0) -> list[dict[str, Any]]:
    """All tasks with annotations and their predictions in full, through an export snapshot
    (create, wait, download JSON)."""
    ls = client(settings, timeout=timeout)
    with api_errors(settings, f"export project {project_id}"):
        snap = ls.projects.exports.create(
            id=project_id,
            title=f"bookcounter collect {time.strftime('%Y%m%dT%H%M%S')}",
            serialization_options={"predictions": {"only_id": False}},  # the pre-labels, not just their ids
        )
        deadline = time.monotonic() + timeout
        while snap.status not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise LabelStudioError(f"export snapshot {snap.id} still '{snap.status}' after {timeout:.0f} s")
            time.sleep(0.5)  # the snapshot is built in the background: poll its status
            snap = ls.projects.exports.get(id=project_id, export_pk=snap.id)
        if snap.status == "failed":
            raise LabelStudioError(f"export snapshot {snap.id} of project {project_id} failed in Label Studio")
        raw = b"".join(ls.projects.exports.download(id=project_id, export_pk=snap.id, export_type="JSON"))
        try:
            ls.projects.exports.delete(id=project_id, export_pk=snap.id)
        except ApiError:
            log.warning("could not delete export snapshot %s", snap.id)
    return json.loads(raw)


LEAST_SURE_TAB = "Annotate next: least sure first"


def ensure_least_sure_tab(settings: Settings, project_id: int) -> int:
    """The project's saved Data Manager tab :data:`LEAST_SURE_TAB`: tasks with no annotation yet,
    lowest prediction ``score`` first (the score is the champion's count confidence, see
    ``bookcounter.uncertainty``). Created once; a re-run finds it (and resets its filter and order)."""
    return ensure_view(
        settings,
        project_id,
        LEAST_SURE_TAB,
        {
            "ordering": ["tasks:predictions_score"],
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
                ],
            },
        },
    )


def set_model_version(settings: Settings, project_id: int, model_version: str) -> None:
    """Make ``model_version`` the project's, so the Data Manager's prediction-score column (and
    :data:`LEAST_SURE_TAB`'s order) uses the predictions of that version."""
    ls = client(settings)
    with api_errors(settings, f"set the project's model version to {model_version!r}"):
        if (ls.projects.get(id=project_id).model_version or "") != model_version:
            ls.projects.update(id=project_id, model_version=model_version)
