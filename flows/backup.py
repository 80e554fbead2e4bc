"""The ``backup`` flow: a dated backup of the human work, the oldest beyond ``keep`` removed."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from bookcounter.settings import get_settings
from flows.state_backup import dated_backup, summary


@flow(name="backup", log_prints=True)
def backup_flow(keep: int | None = None) -> str:
    """Back up the state dir into ``settings.backups_dir/<UTC date-time>``, keeping the newest
    ``keep`` (default ``settings.backup_keep``); returns the new folder."""
    settings = get_settings()
    dest, manifest, removed = dated_backup(settings, settings.backups_dir, keep or settings.backup_keep)
    line = summary(manifest)
    create_markdown_artifact(
        f"# Backup {dest.name}\n\n{line}\n\nRemoved (older than the newest {keep or settings.backup_keep}): "
        f"{', '.join(p.name for p in removed) or 'none'}",
        key="backup",
    )
    print(f"backup: {dest}: {line}")
    return str(dest)
