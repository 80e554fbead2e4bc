"""Warm start: ``init: champion`` fine-tunes the registered champion (real training, tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures_trainer import tiny_train_config


def test_warm_start_begins_below_a_cold_start(tiny_champion, tiny_dataset, tmp_path: Path) -> None:
    from trainer.train import train

    name = tiny_dataset.version.name
    cold = train(
        tiny_train_config(name, epochs=1), tiny_dataset.store, tmp_path / "cold", progress=False, log=lambda _: None
    )
    warm_cfg = tiny_train_config(name, epochs=1).model_copy(update={"init": "champion"})
    warm = train(warm_cfg, tiny_dataset.store, tmp_path / "warm", progress=False, log=lambda _: None)
    assert cold.init_loaded == {"init": "none"}
    assert warm.init_loaded["init"] == "champion" and warm.init_loaded["champion_version"] == tiny_champion.version
    # same data, same seed, same first batch: only the starting weights differ
    assert warm.iter_losses[0] < 0.7 * cold.iter_losses[0], (warm.iter_losses[0], cold.iter_losses[0])


def test_champion_of_another_network_means_a_cold_start(tiny_champion, tiny_dataset, tmp_path: Path) -> None:
    from trainer.train import resolve_init, train_and_save

    cfg = tiny_train_config(tiny_dataset.version.name, epochs=1)
    cfg = cfg.model_copy(update={"init": "champion", "model": cfg.model.model_copy(update={"width": 16})})
    lines: list[str] = []
    init, extra = resolve_init(cfg, lines.append)
    assert init == "imagenet" and "width" in extra["cold_start_reason"]
    assert "starting from the pretrained default" in lines[0]
    out = train_and_save(cfg, tiny_dataset.store, tmp_path / "run", progress=False, log=lambda _: None)
    recorded = json.loads((out / "model.json").read_text())["init_loaded"]
    assert f"champion version {tiny_champion.version} has another network (width)" == recorded["cold_start_reason"]


def test_the_retrain_policy_spends_a_budget_of_images_on_a_cold_start_or_a_fine_tune(
    tiny_champion, tiny_dataset
) -> None:
    """10 train photos and the recipe's 30 epochs: a cold start costs 300 images seen."""
    from trainer.train import WARM_START, TrainConfig, default_train_config

    recipe = tiny_train_config("x").to_dict()
    for key in ("dataset", "epochs", "lr", "warmup_iters"):
        del recipe[key]
    defaults = TrainConfig.model_fields

    def config(budget: int, **model) -> TrainConfig:
        over = {**recipe, "init": "champion", "model": {**recipe["model"], **model}}
        return default_train_config(
            tiny_dataset.version.name, "cpu", over, budget_images=budget, store=tiny_dataset.store
        )

    cold = config(400)  # affordable: the cold start with the recipe's epochs and learning rate
    assert (cold.init, cold.epochs, cold.lr) == ("imagenet", defaults["epochs"].default, defaults["lr"].default)
    warm = config(150)  # a cold start would see 300 > 150 images: fine-tune the champion for 15 epochs
    assert (warm.init, warm.epochs, warm.lr, warm.warmup_iters) == (
        "champion",
        15,
        WARM_START["lr"],
        WARM_START["warmup_iters"],
    )
    other = config(150, width=16)  # no champion of this network: a cold start cut to the budget
    assert (other.init, other.epochs) == ("imagenet", 15)
    assert config(5).epochs == 1  # at least one pass
