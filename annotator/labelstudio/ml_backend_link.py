"""Connecting the interactive ML backend (``serving/ml_backend/server.py``) to the project."""

from __future__ import annotations

from annotator.labelstudio.client import api_errors, client
from bookcounter.locks import file_lock
from bookcounter.settings import Settings


def connect_ml_backend(settings: Settings, project_id: int, url: str, title: str) -> int:
    """Connect the interactive ML backend at ``url`` to the project, idempotently; its row id.

    Re-running keeps the one row for ``url``; rows with our ``title`` and another URL (a stale
    port) are removed with the webhook Label Studio made for them. Label Studio sets the
    project's ``model_version`` to the backend's title when it was empty, which would hide the
    pre-labelling predictions and make it ask the backend to pre-annotate each task opened; the
    old value is put back.
    """
    ls = client(settings)
    url = url.rstrip("/")
    with (
        file_lock(settings.run_dir / "labelstudio-ml-backend.lock"),
        api_errors(settings, f"connect the ML backend at {url}"),
    ):
        rows = ls.ml.list(project=project_id)
        ours = [r for r in rows if (r.url or "").rstrip("/") == url]
        keep = ours[0].id if ours else None
        for r in rows:
            if r.id == keep or (r.title != title and r not in ours):
                continue
            ls.ml.delete(id=r.id)
            old_url = (r.url or "").rstrip("/")
            for hook in ls.webhooks.list(project=str(project_id)) if old_url != url else []:
                if hook.url == f"{old_url}/webhook":
                    ls.webhooks.delete(id=hook.id)
        if ours:
            row = ours[0]
            if not row.is_interactive or row.title != title:
                ls.ml.update(id=row.id, is_interactive=True, title=title)
            return row.id
        before = ls.projects.get(id=project_id).model_version or ""
        row = ls.ml.create(project=project_id, url=url, is_interactive=True, title=title)
        if (ls.projects.get(id=project_id).model_version or "") != before:
            ls.projects.update(id=project_id, model_version=before)
        return row.id
