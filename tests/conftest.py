"""Shared fixtures. Each area keeps its heavier fixtures in ``tests/fixtures_<area>.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bookcounter.settings import REPO_ROOT, Settings, get_settings

pytest_plugins: list[str] = ["fixtures_labelstudio", "fixtures_sam", "fixtures_trainer", "fixtures_serving"]

SAMPLE_DIR = Path(os.environ.get("BOOKCOUNTER_SAMPLE_DIR", REPO_ROOT.parent / "shared" / "data" / "open-shelves"))


@pytest.fixture(autouse=True, scope="session")
def _session_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point all state at a temp dir for the whole session: tests never touch ./var."""
    state = tmp_path_factory.mktemp("state")
    old = os.environ.get("BOOKCOUNTER_STATE_DIR")
    os.environ["BOOKCOUNTER_STATE_DIR"] = str(state)
    get_settings.cache_clear()
    yield state
    if old is None:
        os.environ.pop("BOOKCOUNTER_STATE_DIR", None)
    else:
        os.environ["BOOKCOUNTER_STATE_DIR"] = old
    get_settings.cache_clear()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Fresh settings with their own state dir, for tests that must start from nothing."""
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert (SAMPLE_DIR / "test.json").is_file(), f"open-shelves sample not found at {SAMPLE_DIR}"
    return SAMPLE_DIR
