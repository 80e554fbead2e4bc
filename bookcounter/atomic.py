"""Writing a file or a folder so that a reader (or a crash) sees all of it or nothing.

The one way bookcounter writes what others read: a temp name next to the target, written,
fsynced, then moved over the target in one rename, and the folder fsynced. A failure or a kill
leaves no half-written target; a kill can leave a temp, named ``.tmp-<target name>-<random>``
(:data:`TMP_PREFIX`), which the owners of a folder remove or skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_write(
    target: Path, *, directory: bool = False, mode: int | None = None, exclusive: bool = False
) -> Iterator[Path]:
    """Yield a temp path next to ``target`` to write; when the block ends cleanly, move it there.

    The temp is a file path (created empty, mode 0600) or, with ``directory=True``, an empty
    folder (mode 0700) to fill. Before the move every file is fsynced and ``mode`` applied (to
    the file, or to the folder). ``exclusive=True`` (files only) never replaces a ``target``
    that exists: :class:`FileExistsError` then, and the temp is removed. The temp is removed
    on any failure.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{TMP_PREFIX}{target.name}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    else:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=prefix)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        for path in [p for p in tmp.rglob("*") if p.is_file()] if directory else [tmp]:
            fsync(path)
        if mode is not None:
            os.chmod(tmp, mode)
        if exclusive:
            os.link(tmp, target)  # fails if the target exists
        elif directory:
            os.rename(tmp, target)
        else:
            os.replace(tmp, target)
        fsync(target.parent)
    finally:
        _remove(tmp)


def fsync(path: Path) -> None:
    """Make file ``path``'s content, or folder ``path``'s entries (a rename into it), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    """Remove the temp if it is still there (after a failure, or the link of an exclusive write)."""
    if tmp.is_dir():
        os.chmod(tmp, 0o700)  # a folder made read-only by ``mode``
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
