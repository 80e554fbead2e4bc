"""Backups of the state that people made: a consistent snapshot while the services run.

What goes in (paths relative to the state dir), in this order:

- ``label-studio/``: its SQLite database through SQLite's online backup API (a consistent
  copy while Label Studio writes), then its media (the uploaded photos the tasks show);
- ``mlflow/``: the tracking/registry database the same way, then the artifacts (model files);
- a database on PostgreSQL (``ls_database_url``, ``mlflow_database_url``) instead goes in as
  ``postgres/<label-studio|mlflow>.dump``: ``pg_dump``'s custom format, one consistent snapshot,
  taken where the SQLite copy would be; ``restore`` loads it with ``pg_restore`` into the
  database the restoring settings name, which must be empty;
- ``registry/decisions.jsonl``: the promotion decisions (after MLflow: a decision whose alias
  switch is not in the database copy is the state a crash before the switch leaves);
- ``datasets/``: the versions and their images, copied under the dataset store's lock, so
  no version is half in the copy;
- ``inbox/`` photos not pre-labelled yet (``done/`` is in Label Studio already);
- ``secrets.env`` when present, mode 0600.

Left out, all rebuilt or re-fetched: ``runs/`` (training work dirs; the models are in MLflow's
artifacts), ``models/`` (downloaded weights: ``bookcounter setup-models``), ``cache/``,
``prefect/`` (flow-run history; on PostgreSQL, ``prefect_database_url``, neither) and ``run/``
(pid files, logs).

A backup is a folder: ``manifest.json`` (when, from where, and every file's size, sha256 and
mode) and ``files/`` (the copies). It is written under a temporary name and renamed when
complete, so a killed backup leaves no folder that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bookcounter import postgres
from bookcounter.errors import UserError
from bookcounter.images import sha256_file
from bookcounter.locks import file_lock
from bookcounter.settings import Settings

MANIFEST = "manifest.json"
FILES = "files"
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
TMP_PREFIX = ".tmp-"
PG_DIR = "postgres"  # in a backup: postgres/<name>.dump, pg_dump of the database of that name
DATABASES = {"label-studio": "ls_database_url", "mlflow": "mlflow_database_url"}  # name -> its Settings field


class BackupError(UserError):
    """A backup that cannot be written or restored; one line saying why."""


def backup(settings: Settings, dest: Path) -> dict[str, Any]:
    """Write a backup of ``settings.state_dir`` to ``dest`` (which must not exist yet); returns the manifest."""
    dest = Path(dest)
    if dest.exists():
        raise BackupError(f"{dest} exists already; back up into a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}")
    if tmp.exists():  # left by a backup that was killed
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o700)
    state = settings.state_dir
    files: dict[str, dict[str, Any]] = {}
    databases = _postgres(settings)
    try:
        for rel in _sources(settings):
            if rel.startswith(f"{PG_DIR}/"):
                files[rel] = _dump_one(databases[Path(rel).stem], tmp / FILES / rel)
            else:
                files[rel] = _copy_one(state / rel, tmp / FILES / rel)
        manifest = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "state_dir": str(state),
            "databases": {
                **{name: "postgresql" if name in databases else "sqlite" for name in DATABASES},
                "prefect": "left out (flow-run history)",
            },
            "files": files,
            "total_bytes": sum(f["size"] for f in files.values()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _postgres(settings: Settings) -> dict[str, str]:
    """Name -> URL of the databases on PostgreSQL in these settings."""
    return {name: url for name, field in DATABASES.items() if (url := getattr(settings, field))}


def _sources(settings: Settings) -> Iterator[str]:
    """Relative paths of the files to back up, in the order that keeps the copy consistent
    (``postgres/<name>.dump``: a database to dump)."""
    state = settings.state_dir
    databases = _postgres(settings)
    if "label-studio" in databases:
        yield f"{PG_DIR}/label-studio.dump"
    yield from _tree(state, settings.ls_data_dir)
    if "mlflow" in databases:
        yield f"{PG_DIR}/mlflow.dump"
    yield from _tree(state, settings.mlflow_dir)
    if settings.decision_log.is_file():
        yield str(settings.decision_log.relative_to(state))
    if settings.datasets_dir.is_dir():
        with file_lock(settings.datasets_dir / ".lock"):  # no version is written meanwhile
            yield from _tree(state, settings.datasets_dir)
    if settings.inbox_dir.is_dir():
        yield from (str(p.relative_to(state)) for p in sorted(settings.inbox_dir.iterdir()) if p.is_file())
    if settings.secrets_file.is_file():
        yield str(settings.secrets_file.relative_to(state))


def _tree(state: Path, root: Path) -> Iterator[str]:
    """Every file under ``root``, SQLite side files, locks and half-written temp entries left out."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(TMP_PREFIX))
        for name in sorted(filenames):
            if name == ".lock" or name.startswith(TMP_PREFIX) or name.endswith(SQLITE_SIDE_FILES):
                continue
            yield str((Path(dirpath) / name).relative_to(state))


def _copy_one(src: Path, dst: Path) -> dict[str, Any]:
    """Copy one file (an SQLite database through the online backup API); its size, sha256 and mode."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(src.stat().st_mode)
    if _is_sqlite(src):
        source = sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True)
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        kind = "sqlite"
    elif src.suffix == ".jsonl":  # an append-only log: only its complete lines
        data = src.read_bytes()
        dst.write_bytes(data[: data.rfind(b"\n") + 1])
        kind = "jsonl"
    else:
        shutil.copyfile(src, dst)
        kind = "file"
    os.chmod(dst, 0o600)
    return {"kind": kind, "size": dst.stat().st_size, "sha256": sha256_file(dst), "mode": oct(mode)}


def _dump_one(url: str, dst: Path) -> dict[str, Any]:
    """``pg_dump`` one database into ``dst``; its size, sha256 and mode, as for a copied file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    postgres.dump(url, dst)
    os.chmod(dst, 0o600)
    return {"kind": "pg_dump", "size": dst.stat().st_size, "sha256": sha256_file(dst), "mode": oct(0o600)}


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def read_manifest(src: Path) -> dict[str, Any]:
    path = Path(src) / MANIFEST
    if not path.is_file():
        raise BackupError(f"{src} is not a bookcounter backup (no {MANIFEST})")
    return json.loads(path.read_text())


def restore(settings: Settings, src: Path) -> dict[str, Any]:
    """Bring the backup ``src`` back into ``settings.state_dir``, which must be empty (or not exist).

    Every file is checked against the manifest's sha256 before anything is written. A PostgreSQL
    dump is loaded with ``pg_restore`` into the database these settings name for it, which must
    be empty (create it first: docs/postgres.md). Returns the manifest.
    """
    src = Path(src)
    manifest = read_manifest(src)
    state = settings.state_dir
    if state.exists() and any(state.iterdir()):
        raise BackupError(
            f"state dir {state} is not empty; restore only into an empty one (or a new BOOKCOUNTER_STATE_DIR)"
        )
    for rel, info in manifest["files"].items():
        path = src / FILES / rel
        if not path.is_file():
            raise BackupError(f"{src}: {rel} is missing from the backup")
        if sha256_file(path) != info["sha256"]:
            raise BackupError(f"{src}: {rel} does not match its sha256 in the manifest; the backup is damaged")
    dumps = {Path(rel).stem: src / FILES / rel for rel, info in manifest["files"].items() if info["kind"] == "pg_dump"}
    databases = _postgres(settings)
    for name in dumps:
        if name not in databases:
            raise BackupError(
                f"{src} holds {name}'s PostgreSQL database: set BOOKCOUNTER_{DATABASES[name].upper()} "
                "to an empty database to restore it into"
            )
        if postgres.table_count(databases[name]):
            raise BackupError(
                f"{name}'s database {postgres.split_password(databases[name])[0]} is not empty; "
                "restore only into an empty one"
            )
    for name, dump in dumps.items():
        postgres.restore(databases[name], dump)
    for rel, info in manifest["files"].items():
        if info["kind"] == "pg_dump":
            continue
        dst = state / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / FILES / rel, dst)
        os.chmod(dst, int(info["mode"], 8))
    return manifest


def dated_backup(settings: Settings, root: Path, keep: int) -> tuple[Path, dict[str, Any], list[Path]]:
    """A backup in ``root/<UTC date-time>``; then only the newest ``keep`` backups there are kept.

    Returns the new folder, its manifest and the folders removed.
    """
    if keep < 1:
        raise BackupError(f"keep must be at least 1 (got {keep})")
    dest = Path(root) / (datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z")
    manifest = backup(settings, dest)
    finished = sorted(p for p in Path(root).iterdir() if p.is_dir() and (p / MANIFEST).is_file())
    removed = finished[:-keep]
    for old in removed:
        shutil.rmtree(old)
    return dest, manifest, removed


def summary(manifest: dict[str, Any]) -> str:
    """One line: how many files, how many bytes, of which parts."""
    parts = sorted({rel.split("/")[0] for rel in manifest["files"]})
    mb = manifest["total_bytes"] / 1e6
    return f"{len(manifest['files'])} files, {mb:.1f} MB ({', '.join(parts) or 'nothing'}) from {manifest['state_dir']}"
