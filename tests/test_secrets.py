"""No shared default secrets: each install generates its own Label Studio password and token,
keeps them private, and they never leak into logs, Prefect, MLflow or a model directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from fixtures_labelstudio import save_photo, shelf_photo
from fixtures_trainer import make_synthetic_store, tiny_train_config

from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.server import server_env
from bookcounter.credentials import PASSWORD_KEY, TOKEN_KEY
from bookcounter.settings import Settings

KEYS = (PASSWORD_KEY, TOKEN_KEY)


@pytest.fixture
def no_secret_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As on a fresh install: neither variable set, no .env in the working directory."""
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


def test_first_use_generates_private_secrets_once_per_install(no_secret_env, tmp_path: Path, capsys) -> None:
    settings = Settings(state_dir=tmp_path / "var")
    assert not settings.secrets_file.exists()  # nothing is written until the secrets are needed
    password = settings.ls_secrets.password.get_secret_value()
    token = settings.ls_secrets.token.get_secret_value()

    assert stat.S_IMODE(settings.secrets_file.stat().st_mode) == 0o600
    assert len(password) >= 32 and len(token) == 40 and int(token, 16) >= 0  # LS legacy tokens: <= 40 chars
    told = capsys.readouterr().err
    assert str(settings.secrets_file) in told and password not in told and token not in told
    # the same install keeps them, and says nothing more
    again = Settings(state_dir=tmp_path / "var").ls_secrets
    assert (again.password.get_secret_value(), again.token.get_secret_value()) == (password, token)
    assert capsys.readouterr().err == ""
    # another install gets others; the old fixed defaults are gone
    other = Settings(state_dir=tmp_path / "other").ls_secrets
    assert other.password.get_secret_value() != password and other.token.get_secret_value() != token
    for value in (password, token):
        assert (
            value not in repr(settings)
            and value not in settings.model_dump_json()
            and value not in str(settings.ls_secrets)
        )
    env = server_env(settings)
    assert (env["LABEL_STUDIO_PASSWORD"], env["LABEL_STUDIO_USER_TOKEN"]) == (password, token)


def test_environment_and_dotenv_override_the_file(
    no_secret_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_KEY, "t" * 40)
    Path(".env").write_text(f"{PASSWORD_KEY}=from-dotenv-password\n")
    settings = Settings(state_dir=tmp_path / "var")
    secrets = settings.ls_secrets
    assert secrets.token.get_secret_value() == "t" * 40
    assert secrets.password.get_secret_value() == "from-dotenv-password"
    # secrets.env is in .env form: a copy of it works as .env
    monkeypatch.delenv(TOKEN_KEY)
    Path(".env").unlink()
    stored = Settings(state_dir=tmp_path / "var2")
    generated = stored.ls_secrets
    Path(".env").write_text(stored.secrets_file.read_text())
    from_dotenv = Settings(state_dir=tmp_path / "var3").ls_secrets
    assert from_dotenv.token.get_secret_value() == generated.token.get_secret_value()
    assert not (tmp_path / "var3" / "secrets.env").exists()  # both given: no file needed


def test_a_token_too_long_for_label_studio_is_refused(
    no_secret_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_KEY, "x" * 41)
    with pytest.raises(ValueError, match="40"):
        Settings(state_dir=tmp_path / "var")


def _files_holding(root: Path, values: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path} holds secret #{i}" for i, v in enumerate(values) if v in data]
    return found


@pytest.mark.slow
@pytest.mark.labelstudio
def test_no_secret_in_logs_prefect_mlflow_or_model_json_after_the_flows(
    ls_settings: Settings, labelstudio: Settings
) -> None:
    """Train, register and promote (retrain flow), then pre-label, annotate and collect against the
    real Label Studio; then look for the password and the token everywhere they could land."""
    from mlflow.tracking import MlflowClient
    from prefect import get_client
    from prefect.logging.handlers import APILogHandler

    from annotator.labelstudio.client import client
    from annotator.labelstudio.project import ensure_project, task_shas
    from flows.loop import collect_flow, retrain_flow
    from flows.prelabel import prelabel_flow

    secrets = [ls_settings.ls_secrets.password.get_secret_value(), ls_settings.ls_secrets.token.get_secret_value()]
    assert all(len(s) >= 32 for s in secrets)  # a real secret, so finding it means a leak
    make_synthetic_store(ls_settings.datasets_dir, {"train": 6, "val": 2, "test": 2})
    recipe = tiny_train_config("unused", epochs=1).to_dict()
    recipe.pop("dataset")
    assert retrain_flow(recipe=recipe) is not None
    for seed in (41, 42):
        save_photo(shelf_photo(seed=seed), ls_settings.inbox_dir / f"shelf-{seed}.jpg")
    assert prelabel_flow()["imported"] == 2
    book = np.zeros((120, 160), bool)
    book[20:100, 30:50] = True
    for task_id in task_shas(ls_settings, ensure_project(ls_settings)).values():
        client(ls_settings).annotations.create(id=task_id, result=[brush_result(book)], lead_time=12.0)
    assert collect_flow() == "v0002"

    # MLflow: every run's params and tags, every model version's tags
    mlflow = MlflowClient(ls_settings.mlflow_tracking_uri)
    runs = mlflow.search_runs([e.experiment_id for e in mlflow.search_experiments()])
    assert runs and all(run.data.params for run in runs)
    logged = json.dumps([[run.data.params, run.data.tags] for run in runs])
    logged += json.dumps([mv.tags for mv in mlflow.search_model_versions()])
    # Prefect: every artifact and every log line
    APILogHandler().flush()  # send the queued log lines now
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts()
        logs, page = [], True
        while page:
            page = prefect.read_logs(limit=200, offset=len(logs))
            logs += page
    assert {a.key for a in artifacts} >= {"promotion-decision", "prelabel", "collect"}
    # (conftest keeps Prefect at WARNING, so in tests these are its warnings and errors only;
    # the flows' INFO lines are checked where they also land, in every file of the state dir)
    logged += json.dumps([[a.key, a.description, str(a.data)] for a in artifacts])
    logged += "\n".join(log.message for log in logs)
    # every model.json
    model_jsons = list(ls_settings.state_dir.rglob("model.json"))
    assert model_jsons
    logged += "".join(p.read_text() for p in model_jsons)
    for i, secret in enumerate(secrets):
        assert secret not in logged, f"secret #{i} is in MLflow, Prefect or a model.json"

    # and byte for byte: every file of the state dir (logs, decision log, MLflow's database,
    # datasets), Prefect's home (its database) and Label Studio's own log; not Label Studio's
    # database, which must hold the token to check it
    raw = [s.encode() for s in secrets]
    prefect_home = Path(os.environ["PREFECT_HOME"])  # the ephemeral server's, set by flows/__init__
    assert list(prefect_home.glob("*.db"))
    leaks = _files_holding(ls_settings.state_dir, raw) + _files_holding(labelstudio.run_dir, raw)
    leaks += _files_holding(prefect_home, raw)
    assert not leaks, leaks
    assert os.environ[TOKEN_KEY] == secrets[1]  # the session's own, generated in conftest


@pytest.mark.labelstudio
def test_a_token_label_studio_does_not_know_is_one_line_naming_the_fix(
    labelstudio: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install from before per-install secrets: its Label Studio database holds another token."""
    from annotator.labelstudio.errors import LabelStudioError
    from annotator.labelstudio.project import ensure_project

    monkeypatch.setenv(TOKEN_KEY, "0" * 40)
    stranger = Settings(state_dir=tmp_path / "var", ls_port=labelstudio.ls_port)
    with pytest.raises(LabelStudioError, match="answered 401.*token is refused.*BOOKCOUNTER_LS_TOKEN.*secrets.env"):
        ensure_project(stranger)
