"""Saved Data Manager tabs ("views") of the project, created once by title and kept as defined."""

from __future__ import annotations

from typing import Any

from annotator.labelstudio.client import api_errors, client
from bookcounter.locks import file_lock
from bookcounter.settings import Settings


def ensure_view(settings: Settings, project_id: int, title: str, data: dict[str, Any]) -> int:
    """The id of the project's tab titled ``title`` with ``data`` (filters, ordering,
    ``columnsDisplayType``, ...); created once, put back to ``data`` when it was changed.
    """
    want = {**data, "title": title}
    ls = client(settings)
    with file_lock(settings.run_dir / "labelstudio-views.lock"), api_errors(settings, f"save the tab {title!r}"):
        found = [v for v in ls.views.list(project=project_id) if (v.data or {}).get("title") == title]
        if not found:
            return ls.views.create(project=project_id, data=want).id
        view = min(found, key=lambda v: v.id)
        if any((view.data or {}).get(k) != v for k, v in want.items()):
            ls.views.update(id=str(view.id), project=project_id, data=want)
        return view.id
