"""bookcounter.atomic.atomic_write: a reader sees the whole new file or folder, or the old one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bookcounter.atomic import TMP_PREFIX, atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half of the new")
        assert target.read_text() == "old"  # nothing visible before the block ends
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_a_finished_write_replaces_the_file_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    target.write_text("old")
    with atomic_write(target, mode=0o444) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f"{TMP_PREFIX}blob-")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o444
    assert [p.name for p in tmp_path.iterdir()] == ["blob"]


def test_an_exclusive_write_never_replaces_a_file_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "secrets.env"
    with pytest.raises(FileExistsError), atomic_write(target, exclusive=True) as tmp:
        tmp.write_text("mine")
        target.write_text("theirs")  # another process won the race
    assert target.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.env"]


def test_a_folder_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "v0001"
    with pytest.raises(RuntimeError), atomic_write(target, directory=True, mode=0o555) as tmp:
        (tmp / "annotations.json").write_text("{}")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target, directory=True, mode=0o555) as tmp:
        (tmp / "annotations.json").write_text("{}")
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["annotations.json", "manifest.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o555
    assert [p.name for p in tmp_path.iterdir()] == ["v0001"]
    target.chmod(0o755)  # let pytest clean up
