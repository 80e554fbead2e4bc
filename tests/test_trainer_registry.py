"""MLflow registry and champion/challenger promotion (real SQLite MLflow store in the session state dir)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bookcounter.dataset_store import DatasetStore
from bookcounter.settings import get_settings


@pytest.fixture
def own_model_name(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, tiny_dataset) -> Iterator[str]:
    """A registered-model name of this test's own (same MLflow store), the tiny dataset as the store."""
    name = f"test-{request.node.name}"
    monkeypatch.setenv("BOOKCOUNTER_REGISTERED_MODEL_NAME", name)
    monkeypatch.setattr(DatasetStore, "from_settings", classmethod(lambda cls, settings: tiny_dataset.store))
    get_settings.cache_clear()
    yield name
    get_settings.cache_clear()


def _variant(
    src: Path, dst: Path, threshold: float | None = None, corrupt: bool = False, no_masks: bool = False
) -> Path:
    """A copy of a model directory: counting at another threshold, unreadable, or (``no_masks``)
    with the same boxes and scores, hence the same counts, but an empty mask for every book."""
    shutil.copytree(src, dst)
    if no_masks:
        import torch

        state = torch.load(dst / "model.pt", weights_only=True)
        state["roi_heads.mask_predictor.mask_fcn_logits.weight"].zero_()
        state["roi_heads.mask_predictor.mask_fcn_logits.bias"].fill_(-20.0)
        torch.save(state, dst / "model.pt")
    if threshold is not None:
        meta = json.loads((dst / "model.json").read_text())
        meta["threshold"] = threshold
        (dst / "model.json").write_text(json.dumps(meta))
    if corrupt:
        (dst / "model.pt").write_bytes(b"\x00garbage")
    return dst


def test_tiny_champion_loads_as_predictor(tiny_champion, tiny_model_dir: Path) -> None:
    from trainer import registry

    assert registry.champion().version == tiny_champion.version
    predictor = registry.load_predictor()
    assert predictor.model_version == tiny_champion.version
    assert (registry.model_dir(tiny_champion.version) / "model.pt").is_file()
    # the registry carries the validation metrics that training measured, on the version and its run
    trained = json.loads((tiny_model_dir / "model.json").read_text())["metrics"]
    assert set(trained) >= {"val_count_mae", "val_segm_AP"}
    assert tiny_champion.metrics == trained
    logged = registry._client().get_run(tiny_champion.run_id).data.metrics
    assert {k: logged[k] for k in trained} == pytest.approx(trained)


def test_promotion_rules_and_history(
    own_model_name: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import registry
    from trainer.promote import history, promote

    # "blind": the same network counting nothing (threshold above every score): count MAE = mean count
    blind = registry.register(_variant(tiny_model_dir, tmp_path / "blind" / "model", threshold=1.01))
    first = promote(blind.version, progress=False)
    assert first["decision"] == "rejected" and "baseline" in first["reason"]
    assert registry.champion() is None

    registry.set_champion(blind.version)  # a weak champion to challenge
    good = registry.register(tiny_model_dir)
    better = promote(good.version, progress=False)
    assert better["decision"] == "promoted", better["reason"]
    assert better["candidate_metrics"]["count_mae"] < better["champion_metrics"]["count_mae"]
    assert registry.champion().version == good.version

    tie = promote(registry.register(tiny_model_dir).version, progress=False)
    assert (
        tie["decision"] == "rejected" and tie["candidate_metrics"]["count_mae"] == tie["champion_metrics"]["count_mae"]
    )
    worse = promote(
        registry.register(_variant(tiny_model_dir, tmp_path / "worse" / "model", threshold=1.01)).version,
        progress=False,
    )
    assert worse["decision"] == "rejected"
    corrupt = registry.register(_variant(tiny_model_dir, tmp_path / "corrupt" / "model", corrupt=True))
    broken = promote(corrupt.version, progress=False)
    assert broken["decision"] == "rejected" and "evaluation failed" in broken["reason"]
    assert registry.champion().version == good.version

    log = history()
    assert [e["decision"] for e in log] == ["rejected", "promoted", "rejected", "rejected", "rejected"]
    assert all(e["dataset_version"] == "v0001" and e["split"] == "test" for e in log)
    tags = registry._client().get_model_version(own_model_name, corrupt.version).tags
    assert tags["promotion.decision"] == "rejected" and "evaluation failed" in tags["promotion.reason"]

    from flows.main import app

    monkeypatch.setenv("COLUMNS", "400")
    out = CliRunner().invoke(app, ["registry", "history"])
    assert out.exit_code == 0, out.output
    assert out.output.count("rejected") == 4 and "promoted" in out.output


def test_a_candidate_that_counts_better_but_loses_its_masks_is_rejected(
    own_model_name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from trainer import registry
    from trainer.promote import promote

    # the champion counts nothing but ranks the same boxes (its mask AP is the good model's)
    registry.set_champion(
        registry.register(_variant(tiny_model_dir, tmp_path / "blind" / "model", threshold=1.01)).version
    )
    maskless = registry.register(_variant(tiny_model_dir, tmp_path / "maskless" / "model", no_masks=True))
    d = promote(maskless.version, progress=False)
    assert d["verdict"] == "better", d["reason"]  # it counts better ...
    assert d["candidate_metrics"]["segm_AP"] < d["champion_metrics"]["segm_AP"] - d["rule"]["ap_tolerance"]
    assert d["decision"] == "rejected" and "falls more than tolerance" in d["reason"]  # ... but its masks are gone


def test_a_champion_that_cannot_be_evaluated_leaves_the_candidate_judged_against_the_baseline(
    own_model_name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from trainer import registry
    from trainer.promote import promote

    registry.set_champion(
        registry.register(_variant(tiny_model_dir, tmp_path / "corrupt" / "model", corrupt=True)).version
    )
    good = registry.register(tiny_model_dir)
    d = promote(good.version, progress=False)
    assert "could not be evaluated" in d["reason"] and d["comparison"]["against"] == "baseline"
    assert d["champion_metrics"] is None and d["decision"] == "promoted", d["reason"]
    assert registry.champion().version == good.version


def test_a_promotion_stopped_before_the_alias_switch_is_finished_once(
    own_model_name: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import promote, registry

    blind = registry.register(_variant(tiny_model_dir, tmp_path / "blind" / "model", threshold=1.01))
    registry.set_champion(blind.version)
    good = registry.register(tiny_model_dir)
    assert promote.finish_switch(good.version) is None  # not decided yet: nothing to finish

    class Killed(Exception):
        pass

    def killed(version: str) -> None:
        raise Killed  # the process dies after the decision is logged, before the alias moves

    with monkeypatch.context() as m:
        m.setattr(registry, "set_champion", killed)
        with pytest.raises(Killed):
            promote.promote(good.version, progress=False)
    assert promote.history()[-1]["decision"] == "promoted" and registry.champion().version == blind.version

    assert promote.finish_switch(good.version) == promote.history()[-1]
    assert registry.champion().version == good.version
    registry.set_champion(blind.version)  # an operator's rollback afterwards is not undone
    assert promote.finish_switch(good.version) is None and registry.champion().version == blind.version
