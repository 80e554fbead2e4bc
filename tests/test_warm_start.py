"""Warm start: ``init: champion`` fine-tunes the registered champion (real training, tiny model)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fixtures_trainer import tiny_train_config


def test_warm_start_begins_below_a_cold_start(tiny_champion, tiny_dataset, tmp_path: Path) -> None:
    from trainer.train import train

    name = tiny_dataset.version.name
    cold = train(
        tiny_train_config(name, epochs=1), tiny_dataset.store, tmp_path / "cold", progress=False, log=lambda _: None
    )
    warm_cfg = dataclasses.replace(tiny_train_config(name, epochs=1), init="champion")
    warm = train(warm_cfg, tiny_dataset.store, tmp_path / "warm", progress=False, log=lambda _: None)
    assert cold.init_loaded == {"init": "none"}
    assert warm.init_loaded["init"] == "champion" and warm.init_loaded["champion_version"] == tiny_champion.version
    # same data, same seed, same first batch: only the starting weights differ
    assert warm.iter_losses[0] < 0.7 * cold.iter_losses[0], (warm.iter_losses[0], cold.iter_losses[0])


def test_champion_of_another_network_means_a_cold_start(tiny_champion, tiny_dataset, tmp_path: Path) -> None:
    from trainer.train import resolve_init, train_and_save

    cfg = tiny_train_config(tiny_dataset.version.name, epochs=1)
    cfg = dataclasses.replace(cfg, init="champion", model=dataclasses.replace(cfg.model, width=16))
    lines: list[str] = []
    init, extra = resolve_init(cfg, lines.append)
    assert init == "imagenet" and "width" in extra["cold_start_reason"]
    assert "starting from the pretrained default" in lines[0]
    out = train_and_save(cfg, tiny_dataset.store, tmp_path / "run", progress=False, log=lambda _: None)
    recorded = json.loads((out / "model.json").read_text())["init_loaded"]
    assert f"champion version {tiny_champion.version} has another network (width)" == recorded["cold_start_reason"]


def test_retrain_flow_config_warm_or_cold_starts_with_its_budget(tiny_champion, tiny_dataset, monkeypatch) -> None:
    from flows.loop import train_config
    from trainer.train import COLD_START, WARM_START, TrainConfig

    monkeypatch.setattr("trainer.train.default_device", lambda: "cpu")
    recipe = {k: v for k, v in tiny_train_config("x").to_dict().items() if k not in ("dataset", "epochs", "init", "lr")}
    cfg = train_config(tiny_dataset.version.name, None, recipe)
    assert cfg.init == "champion" and (cfg.max_minutes, cfg.lr) == (WARM_START["max_minutes"], WARM_START["lr"])
    assert train_config(tiny_dataset.version.name, 2.0, recipe).max_minutes == 2.0
    # no champion whose network fits: a cold start on its own budget, at the recipe's learning rate
    cold = train_config(tiny_dataset.version.name, None, {**recipe, "model": {**recipe["model"], "width": 16}})
    assert (cold.max_minutes, cold.lr) == (COLD_START["max_minutes"], TrainConfig.lr)
