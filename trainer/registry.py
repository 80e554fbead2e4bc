"""The one module that talks to MLflow: tracking runs and the model registry (SQLite under var/mlflow).

Every finished training is an MLflow run (params, per-epoch metrics, val metrics, plots, the
model directory as artifacts, dataset version and manifest hash as tags) and a version of the
registered model ``settings.registered_model_name``. The champion is the alias ``champion``.
No server is needed: the client opens the SQLite file directly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from bookcounter.errors import UserError
from bookcounter.processes import Server
from bookcounter.settings import Settings, get_settings

CHAMPION = "champion"
_clients: dict[str, Any] = {}


class RegistryError(UserError):
    """A model version that does not exist or whose files are missing."""


@dataclass
class ModelInfo:
    version: str
    run_id: str
    dataset_version: str
    metrics: dict[str, float]
    decision: str = ""  # "promoted" or "rejected" once trainer.promote has judged it, else ""
    champion_since: str = ""  # when the alias first pointed at it (set_champion), else ""


def _client():
    """An MlflowClient on the SQLite store of the current settings (created once per store)."""
    s = get_settings()
    uri = s.mlflow_tracking_uri
    if uri not in _clients:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow import MlflowClient

        s.mlflow_dir.mkdir(parents=True, exist_ok=True)
        _clients[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return _clients[uri]


def _experiment_id(client) -> str:
    s = get_settings()
    exp = client.get_experiment_by_name(s.mlflow_experiment)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(s.mlflow_experiment, artifact_location=(s.mlflow_dir / "artifacts").as_uri())


def _info(mv) -> ModelInfo:
    return ModelInfo(
        version=str(mv.version),
        run_id=mv.run_id or "",
        dataset_version=mv.tags.get("dataset_version", ""),
        metrics=json.loads(mv.tags.get("metrics", "{}")),
        decision=mv.tags.get("promotion.decision", ""),
        champion_since=mv.tags.get("champion.since", ""),
    )


def register(model_dir: Path) -> ModelInfo:
    """Log a finished model directory (and the run's ``plots/`` beside it) as an MLflow run and
    register it as a new model version."""
    from mlflow.entities import Metric, Param

    from trainer.model import DEFAULT_NMS_IOU

    client = _client()
    meta = json.loads((model_dir / "model.json").read_text())
    train_cfg = meta.get("train", {})
    params = {f"model.{k}": v for k, v in meta["model"].items()}
    params.update({k: v for k, v in train_cfg.items() if k not in ("model",)})
    init = meta.get("init_loaded", "none")
    if isinstance(init, dict):  # {"init": "imagenet", "weights": {"package", "version", "sha256", ...}}
        extra = {k: init[k] for k in ("champion_version", "cold_start_reason") if k in init}
        init = " ".join([init["init"], *(f"{k}={v}" for k, v in {**init.get("weights", {}), **extra}.items())])
    params.update(threshold=meta["threshold"], nms_iou=meta.get("nms_iou", DEFAULT_NMS_IOU), init_loaded=init)
    tags = {"dataset_version": meta["dataset_version"], "manifest_hash": meta["manifest_hash"]}
    run = client.create_run(_experiment_id(client), run_name=model_dir.parent.name, tags=tags)
    run_id = run.info.run_id
    metrics = [
        Metric(k, float(v), 0, int(row["epoch"]))
        for row in meta.get("history", [])
        for k, v in row.items()
        if k != "epoch"
    ]
    metrics += [Metric(k, float(v), 0, 0) for k, v in meta.get("metrics", {}).items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    client.log_artifacts(run_id, str(model_dir), "model")
    plots_dir = model_dir.parent / "plots"
    if plots_dir.is_dir():
        client.log_artifacts(run_id, str(plots_dir), "plots")
    client.set_terminated(run_id)
    name = get_settings().registered_model_name
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        client.create_registered_model(name, description="Mask R-CNN book counter (bookcounter train)")
    mv = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/model",
        run_id=run_id,
        tags={**tags, "metrics": json.dumps(meta.get("metrics", {}))},
    )
    return _info(mv)


def champion() -> ModelInfo | None:
    """The version with the alias ``champion``, or None (one SQLite query; cheap to poll)."""
    from mlflow.exceptions import MlflowException

    try:
        return _info(_client().get_model_version_by_alias(get_settings().registered_model_name, CHAMPION))
    except MlflowException:
        return None


def get(version: str) -> ModelInfo:
    """A registered version by number, or ``champion``."""
    from mlflow.exceptions import MlflowException

    if version == CHAMPION:
        info = champion()
        if info is None:
            raise RegistryError("no champion yet (train a model and run 'bookcounter promote')")
        return info
    try:
        return _info(_client().get_model_version(get_settings().registered_model_name, str(version)))
    except MlflowException:
        raise RegistryError(
            f"model version {version!r} is not registered (see 'bookcounter registry history')"
        ) from None


def versions() -> list[ModelInfo]:
    name = get_settings().registered_model_name
    found = _client().search_model_versions(f"name='{name}'")
    return sorted((_info(mv) for mv in found), key=lambda i: int(i.version))


def model_dir(version: str) -> Path:
    """Local directory with model.pt + model.json of a registered version (or ``champion``)."""
    info = get(version)
    mv = _client().get_model_version(get_settings().registered_model_name, info.version)
    parsed = urlparse(mv.source)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    else:
        import mlflow.artifacts

        dst = get_settings().state_dir / "cache" / "models" / info.version
        path = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=str(dst), tracking_uri=_client().tracking_uri
            )
        )
    if not (path / "model.json").is_file():
        raise RegistryError(f"model version {info.version}: files missing at {path}")
    return path


def load_predictor(version: str = CHAMPION, device: str | None = None):
    """A :class:`trainer.predictor.Predictor` for ``version``; None when there is no champion yet."""
    from trainer.predictor import Predictor

    if version == CHAMPION and champion() is None:
        return None
    info = get(version)
    return Predictor(model_dir(info.version), device=device, model_version=info.version)


def set_champion(version: str) -> None:
    """Point the alias ``champion`` at ``version`` (the last step of a promotion); the version's
    ``champion.since`` tag keeps when that first happened."""
    _client().set_registered_model_alias(get_settings().registered_model_name, CHAMPION, str(version))
    if not get(version).champion_since:
        tag_version(version, {"champion.since": datetime.now(UTC).isoformat(timespec="seconds")})


def tag_version(version: str, tags: dict[str, str]) -> None:
    client = _client()
    name = get_settings().registered_model_name
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v[:5000])


# Where MLflow's SQLite schema keeps absolute artifact locations (columns absent in a version are skipped).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


def relocate_artifacts(old_state_dir: Path, settings: Settings) -> int:
    """After a restore into another state dir: point MLflow's artifact locations (absolute
    ``file://`` URIs in its database) at this state dir. Returns how many rows changed."""
    import sqlite3

    old = (Path(old_state_dir) / "mlflow" / "artifacts").as_uri()
    new = (settings.mlflow_dir / "artifacts").as_uri()
    db = settings.mlflow_dir / "mlflow.db"
    if old == new or not db.is_file():
        return 0
    changed = 0
    with sqlite3.connect(db) as con:
        for table, column in _LOCATION_COLUMNS:
            if column not in {row[1] for row in con.execute(f"PRAGMA table_info({table})")}:
                continue
            cur = con.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                (new, len(old) + 1, len(old), old),
            )
            changed += cur.rowcount
    _clients.clear()
    return changed


def ui_server(settings: Settings) -> Server:
    return Server("mlflow-ui", settings.run_dir)


def start_ui(settings: Settings) -> str:
    """Start ``mlflow ui`` on 127.0.0.1 over the SQLite store (unless running); returns its URL.

    One web worker and no job consumers: MLflow's defaults (4 workers, 7 huey consumers for
    GenAI jobs this project does not use) cost about 2.6 GB of RSS for a one-person read-only
    UI; this costs about 0.5 GB in 2 processes (bench/mlflow_ui_rss.py).
    """
    import sys

    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{settings.mlflow_ui_port}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.mlflow_ui_port),
        "--workers",
        "1",
        "--backend-store-uri",
        settings.mlflow_tracking_uri,
        "--default-artifact-root",
        (settings.mlflow_dir / "artifacts").as_uri(),
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    ui_server(settings).start(cmd, url, env=env, timeout=120)
    return url
