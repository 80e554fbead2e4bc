"""Shared fixtures. Each area keeps its heavier fixtures in ``tests/fixtures_<area>.py``."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before any test module is imported (some import Prefect): all state goes to a
# temp dir for the whole session, so tests never touch ./var. It is removed when the process
# exits, after Prefect's temporary server (started later, so stopped earlier by atexit) is gone.
SESSION_STATE_DIR = Path(tempfile.mkdtemp(prefix="bookcounter-tests-"))
atexit.register(shutil.rmtree, SESSION_STATE_DIR, ignore_errors=True)
os.environ["BOOKCOUNTER_STATE_DIR"] = str(SESSION_STATE_DIR)
# The session's own Label Studio password and token (no install shares them), in the
# environment so that every state dir of the session, and every process it starts, uses them.
from bookcounter.credentials import generate  # noqa: E402

os.environ.update(generate())
# Prefect's INFO lines add nothing to test output, and its last one ("Stopping temporary
# server", logged at exit to pytest's already closed stream) would end the run with a traceback.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from bookcounter.settings import REPO_ROOT, Settings, get_settings  # noqa: E402
from flows.prefect_server import configure_prefect  # noqa: E402

configure_prefect(get_settings())  # as bookcounter's entry point does, before Prefect is imported

pytest_plugins: list[str] = [
    "fixtures_labelstudio",
    "fixtures_sam",
    "fixtures_trainer",
    "fixtures_serving",
    "fixtures_postgres",
    "fixtures_prefect",
]

SAMPLE_DIR = Path(os.environ.get("BOOKCOUNTER_SAMPLE_DIR", REPO_ROOT.parent / "shared" / "data" / "open-shelves"))


@pytest.fixture(scope="session")
def session_state_dir() -> Path:
    return SESSION_STATE_DIR


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers that follow from the fixtures a test uses, so that ``make test-fast``
    (``-m "not labelstudio and not slow"``) starts no server and trains no model:
    ``labelstudio`` for the session's Label Studio (``ls_settings`` included), ``slow`` for the
    trained tiny model (``tiny_champion``, ``counted_photo``, ``served_champion`` included)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "labelstudio" in fixtures:
            item.add_marker(pytest.mark.labelstudio)
        if "tiny_model_dir" in fixtures:
            item.add_marker(pytest.mark.slow)
