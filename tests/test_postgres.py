"""A team deployment: Label Studio, MLflow (tracking and registry) and the Prefect server all on
PostgreSQL (a throwaway cluster, ``fixtures_postgres.py``), each by its one setting.

The loop runs through it (prelabel, annotate, collect, retrain, promote, a served count), then
``bookcounter backup`` takes the two databases with ``pg_dump`` and ``restore`` loads them into
new empty ones.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fixtures_postgres import Cluster
from fixtures_serving import running_server
from fixtures_trainer import synthetic_photo, tiny_train_config
from pydantic import ValidationError

from annotator.labelstudio.client import client
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import ensure_project, task_shas
from annotator.prelabel import Masker, prelabel
from bookcounter.dataset_store import DatasetStore
from bookcounter.images import sha256_bytes
from bookcounter.settings import REPO_ROOT, Settings, get_settings
from flows.state_backup import read_manifest
from trainer import registry

BOOKCOUNTER = str(Path(sys.executable).parent / "bookcounter")
PHOTOS = 24  # test 40 %, val 20 %: enough test photos for the promotion gate's paired bootstrap to decide
SEED = 100


def test_each_service_has_one_postgresql_setting(tmp_path: Path) -> None:
    url = "postgresql://bc:s%40cret@db.local:5433/{}"
    s = Settings(
        state_dir=tmp_path,
        mlflow_database_url=url.format("mlflow"),
        prefect_database_url="postgres://bc:s%40cret@db.local:5433/prefect",
    )
    assert s.mlflow_tracking_uri == "postgresql+psycopg2://bc:s%40cret@db.local:5433/mlflow"
    assert s.prefect_database_connection_url == "postgresql+asyncpg://bc:s%40cret@db.local:5433/prefect"
    default = Settings(state_dir=tmp_path)  # SQLite stays the default
    assert default.mlflow_tracking_uri.startswith("sqlite:///") and default.prefect_database_connection_url is None
    with pytest.raises(ValidationError, match="postgresql://"):
        Settings(state_dir=tmp_path, prefect_database_url="postgresql://db.local:5432/")  # no database named


@contextmanager
def on_prefect(server: Settings) -> Iterator[None]:
    """Flows and Prefect clients of this process report to ``server``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: f"{server.prefect_url}/api"}):
        yield


@pytest.fixture
def pg_settings(ls_pg_settings: Settings, postgres: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Label Studio on PostgreSQL (the session's server), MLflow on a new PostgreSQL database of its own."""
    monkeypatch.setenv("BOOKCOUNTER_MLFLOW_DATABASE_URL", postgres.create_database("mlflow"))
    monkeypatch.setenv("BOOKCOUNTER_TEST_FRACTION", "0.4")
    monkeypatch.setenv("BOOKCOUNTER_VAL_FRACTION", "0.2")
    get_settings.cache_clear()
    registry._clients.clear()
    yield get_settings()
    registry._clients.clear()


def books_of(seed: int) -> int:
    return 1 + seed % 5


def drop_photos(settings: Settings) -> dict[str, list]:
    """Synthetic shelf photos into the inbox; sha256 -> the masks of their books."""
    truth = {}
    for seed in range(SEED, SEED + PHOTOS):
        img, masks = synthetic_photo(seed, books_of(seed))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        (settings.inbox_dir / f"shelf-{seed}.png").write_bytes(buf.getvalue())
        truth[sha256_bytes(buf.getvalue())] = masks
    return truth


def annotate(settings: Settings, truth: dict[str, list]) -> None:
    """A person paints every book of every task."""
    ls = client(settings)
    for sha, task_id in task_shas(settings, ensure_project(settings)).items():
        ls.annotations.create(id=task_id, result=[brush_result(m) for m in truth[sha]], lead_time=5.0)


def annotations_in(cluster: Cluster, url: str, project: int) -> list[tuple]:
    """(task id, result) of the project's annotations, read from Label Studio's PostgreSQL database."""
    return cluster.query(
        url,
        "SELECT c.task_id, c.result::text FROM task_completion c JOIN task t ON t.id = c.task_id "
        f"WHERE t.project_id = {int(project)} ORDER BY c.id",
    )


@pytest.mark.labelstudio
@pytest.mark.slow
@pytest.mark.postgres
def test_the_loop_with_label_studio_mlflow_and_prefect_on_postgresql(
    pg_settings: Settings, prefect_server_pg: Settings, labelstudio_pg: Settings, postgres: Cluster
) -> None:
    from prefect.client.orchestration import get_client

    from flows.loop import collect_flow, retrain_flow
    from flows.prelabel import prelabel_flow
    from serving.app import create_app

    settings = pg_settings
    truth = drop_photos(settings)
    recipe = tiny_train_config("unused").to_dict()
    recipe.pop("dataset")
    with on_prefect(prefect_server_pg):
        assert prelabel_flow() == {"imported": PHOTOS, "already_there": 0, "rejected": 0}
        annotate(settings, truth)
        assert collect_flow() == "v0001"
        assert collect_flow() is None
        decision = retrain_flow(recipe=recipe)
        with get_client(sync_client=True) as prefect:
            runs = prefect.read_flow_runs()
    # each service kept its records in its PostgreSQL database, and nothing in a SQLite file
    assert {r.name for r in runs} and {r.flow_id for r in runs}
    assert sorted(r.state.type.value for r in runs).count("COMPLETED") >= 4  # prelabel, collect twice, retrain
    prefect_db = prefect_server_pg.prefect_database_url
    assert {str(r.id) for r in runs} <= {row[0] for row in postgres.query(prefect_db, "SELECT id::text FROM flow_run")}
    project = ensure_project(settings)
    assert len(annotations_in(postgres, labelstudio_pg.ls_database_url, project)) == PHOTOS
    model_rows = postgres.query(settings.mlflow_database_url, "SELECT version FROM model_versions")
    assert [str(v) for (v,) in model_rows] == [decision["candidate"]]
    assert not (settings.mlflow_dir / "mlflow.db").exists()
    assert not list(prefect_server_pg.prefect_home.glob("*.db"))

    # promoted: the candidate beat the median baseline on the test split; the served count is the champion's
    version = DatasetStore.from_settings(pg_settings).get("v0001")
    assert decision["decision"] == "promoted", decision
    assert registry.champion().version == decision["candidate"]
    test_photos = version.coco("test")["images"]
    assert test_photos
    errors = []
    with running_server(create_app(settings)) as url:
        for image in test_photos:
            data = version.image_path(image).read_bytes()
            answer = httpx.post(f"{url}/count", files={"photo": ("p.png", data, "image/png")}, timeout=120).json()
            assert answer["model_version"] == decision["candidate"]
            errors.append(abs(answer["count"] - len(truth[sha256_bytes(data)])))
    assert sum(errors) / len(errors) == pytest.approx(decision["candidate_metrics"]["count_mae"])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BOOKCOUNTER, *args], capture_output=True, text=True, cwd=REPO_ROOT, check=False, timeout=600)


@pytest.mark.labelstudio
@pytest.mark.postgres
def test_backup_dumps_the_postgresql_databases_and_restore_loads_them_into_empty_ones(
    pg_settings: Settings,
    labelstudio_pg: Settings,
    postgres: Cluster,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = pg_settings
    champion = registry.register(tiny_model_dir).version
    registry.set_champion(champion)
    project = ensure_project(settings)
    img, masks = synthetic_photo(7, 3)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    (settings.inbox_dir / "shelf.png").write_bytes(buf.getvalue())
    prelabel(settings, masker=Masker(None, None))
    (task_id,) = task_shas(settings, project).values()
    client(settings).annotations.create(id=task_id, result=[brush_result(m) for m in masks], lead_time=3.0)
    before = {
        "annotations": annotations_in(postgres, labelstudio_pg.ls_database_url, project),
        "models": registry.versions(),
        "champion": registry.champion(),
    }
    assert len(before["annotations"]) == 1

    done = cli("backup", str(tmp_path / "backup"))
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(tmp_path / "backup")
    kinds = {rel: f["kind"] for rel, f in manifest["files"].items()}
    assert kinds["postgres/label-studio.dump"] == kinds["postgres/mlflow.dump"] == "pg_dump"
    assert not [rel for rel, kind in kinds.items() if kind == "sqlite"]
    assert manifest["databases"] == {
        "label-studio": "postgresql",
        "mlflow": "postgresql",
        "prefect": "left out (flow-run history)",
    }

    registry._clients.clear()
    shutil.rmtree(settings.state_dir)
    # into the database it came from (not empty): refused in one line, and nothing is written
    refused = cli("restore", str(tmp_path / "backup"))
    assert (
        refused.returncode == 1 and "is not empty" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    )
    assert not settings.state_dir.exists()
    ls_db, mlflow_db = postgres.create_database("ls_restored"), postgres.create_database("mlflow_restored")
    monkeypatch.setenv("BOOKCOUNTER_LS_DATABASE_URL", ls_db)
    monkeypatch.setenv("BOOKCOUNTER_MLFLOW_DATABASE_URL", mlflow_db)
    get_settings.cache_clear()
    done = cli("restore", str(tmp_path / "backup"))
    assert done.returncode == 0, done.stderr
    assert annotations_in(postgres, ls_db, project) == before["annotations"]
    assert registry.versions() == before["models"] and registry.champion() == before["champion"]
    assert registry.load_predictor() is not None  # the model files came back under the state dir
