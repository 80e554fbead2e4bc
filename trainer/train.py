"""Train a Mask R-CNN on the train split of one dataset version (CPU or CUDA with AMP).

A checkpoint (model, optimizer, history, RNG-free state) is written atomically after every
epoch; ``resume=True`` continues from it. Randomness is re-seeded from ``seed`` and the epoch
at the start of every epoch (shuffle order, augmentation, RoI sampling), and the learning
rate is a pure function of the iteration, so a resumed run reaches the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from tqdm import tqdm

from bookcounter.dataset_store import DatasetError, DatasetStore, DatasetVersion
from bookcounter.errors import UserError
from bookcounter.settings import get_settings
from trainer.config import Config
from trainer.data import BookDataset, collate
from trainer.model import ModelConfig, build_model, freeze_stages, load_init

# Per device, what differs from the TrainConfig / ModelConfig defaults (the CPU recipe, measured:
# docs/recipe.md). The CUDA recipe is a larger pretrained backbone at a larger size; it has not
# been measured here (no GPU).
DEVICE_RECIPES: dict[str, dict[str, Any]] = {
    "cpu": {},
    "cuda": {
        "epochs": 24,
        "model": {"backbone": "efficientnet_lite2_fpn", "image_size": 640, "max_size": 1280, "width": 256},
    },
}


class TrainConfig(Config):
    """One training run, sized in work (epochs), never in minutes (model.json ``train``)."""

    dataset: str  # version name, e.g. v0001
    model: ModelConfig = Field(default_factory=ModelConfig)
    epochs: int = Field(30, ge=1)  # the CPU recipe: the whole sample in about an hour of 2 cores (docs/recipe.md)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(50, ge=0)
    seed: int = 0
    device: str = "cpu"
    init: str = (
        "imagenet"  # none | imagenet | coco | champion (the retrain policy, see retrain_policy) | a checkpoint file
    )
    frozen_stages: int = Field(2, ge=0)  # with pretrained weights: the stem and this many stages stay as loaded
    # shares of training photos that become another view (trainer.data): a crop of another shape
    # (random_view), a sparse scene on a book-free background (sparse_scene), whole books cover-on
    # beside clutter (pile_scene)
    view_p: float = Field(0.25, ge=0, le=1)
    sparse_p: float = Field(0.1, ge=0, le=1)
    pile_p: float = Field(0.0, ge=0, le=1)
    threads: int = Field(0, ge=0)  # 0: every core (see cpu_threads)
    # A safety cap, never the recipe: the run is sized by ``epochs`` (the LR schedule follows
    # the iterations), and stops early, mid-epoch if need be, only when this much wall-clock
    # time is spent (model.json then says ``stopped_by_cap``).
    max_minutes: float | None = Field(None, gt=0)


def default_train_config(
    dataset: str,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    budget_images: int | None = None,
    store: DatasetStore | None = None,
) -> TrainConfig:
    """The one place a training config is made (CLI, flows, benches): the defaults, then the
    device's recipe (:data:`DEVICE_RECIPES`), then ``overrides`` (``model`` merged key by key).

    With ``init: champion``, :func:`retrain_policy` decides between a cold start and a
    fine-tune of the champion, and how many epochs, within ``budget_images``, unless
    ``overrides`` set them (``store``: where ``dataset`` is; default: the settings' store).
    """
    device = device or default_device()
    merged = TrainConfig(dataset=dataset, device=device).to_dict()
    merged["model"].update(image_mean=None, image_std=None)  # resolved from the final backbone, unless given
    overrides = overrides or {}
    for layer in (DEVICE_RECIPES.get(device.split(":")[0], {}), overrides):
        layer = dict(layer)
        merged["model"].update(layer.pop("model", {}))
        merged.update(layer)
    if merged["init"] == CHAMPION_INIT:
        warm = resolve_init(TrainConfig.from_dict(merged), log=lambda _: None)[1].get("init") == CHAMPION_INIT
        photos = len((store or DatasetStore.from_settings(get_settings())).get(dataset).coco("train")["images"])
        policy = retrain_policy(merged["epochs"], photos, warm, budget_images)
        merged.update({k: v for k, v in policy.items() if k == "init" or overrides.get(k) is None})
    return TrainConfig.from_dict(merged)


@dataclass
class TrainResult:
    model: torch.nn.Module
    config: TrainConfig
    version: DatasetVersion
    history: list[dict[str, float]]  # one row per epoch
    iter_losses: list[float]  # total loss per iteration
    init_loaded: dict[str, Any]  # what load_init loaded (weights file and sha256), for model.json
    run_dir: Path
    stopped_by_cap: bool = False  # max_minutes ended the run before its epochs


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_threads() -> int:
    """Threads for CPU training: every core (faster than one, ``bench/train_throughput.py``).

    When the cores are shared, busy-waiting OpenMP threads slow each other down badly; the CLI
    sets ``OMP_WAIT_POLICY=PASSIVE`` so they sleep instead. Numbers: docs/recipe.md.
    """
    return os.cpu_count() or 1


def lr_at(it: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_iters``, then cosine decay to 1% of ``lr`` at iteration ``total``."""
    if it < cfg.warmup_iters:
        return cfg.lr * (0.1 + 0.9 * it / cfg.warmup_iters)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, it / max(1, total)))))


def open_version(store: DatasetStore, name: str) -> DatasetVersion:
    """The dataset version, checked: intact (``verify``) and with a non-empty train split."""
    version = store.get(name)
    problems = store.verify(version.name)
    if problems:
        raise DatasetError(
            f"{version.name} fails verify: {problems[0]}"
            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    if not version.coco("train")["images"]:
        raise DatasetError(f"{version.name}: the train split is empty")
    return version


CHAMPION_INIT = "champion"
COLD_INIT = "imagenet"  # what ``--init champion`` falls back to: the pretrained default
# A fine-tune of the champion (docs/recipe.md "Retrain policy"): a lower peak learning rate and
# a short warmup (5 iterations beat 50 on val), so that the run trains at its peak rate.
WARM_START: dict[str, Any] = {"lr": 3e-4, "warmup_iters": 5}


def retrain_policy(epochs: int, photos: int, warm_possible: bool, budget_images: int | None) -> dict[str, Any]:
    """What a retrain (``init: champion``) trains: a cold start or a fine-tune, and for how many epochs.

    The work is counted in images seen, never minutes. A cold start on the whole version
    (``photos`` train photos) with the recipe's ``epochs`` is the default: it is the run that
    improves as the data grows. When that would see more than ``budget_images`` (what the
    nightly job affords), the champion is fine-tuned on the whole version instead, for as many
    epochs as the budget pays for (at least one). Without a champion whose network fits, the
    cold start is cut to the budget.
    """
    affordable = max(1, budget_images // max(1, photos)) if budget_images else epochs
    if epochs <= affordable or not warm_possible:
        return {"init": COLD_INIT, "epochs": min(epochs, affordable)}
    return {**WARM_START, "init": CHAMPION_INIT, "epochs": affordable}


def resolve_init(cfg: TrainConfig, log: Callable[[str], None] = print) -> tuple[str, dict[str, Any]]:
    """``cfg.init``, with ``champion`` resolved: the registered champion's ``model.pt`` when its
    network config equals ``cfg.model`` (a warm start), else the pretrained default.

    Returns (what :func:`load_init` loads, what to add to ``init_loaded``: the champion's
    version, or why there was no warm start).
    """
    if cfg.init != CHAMPION_INIT:
        return cfg.init, {}
    from trainer import registry

    info = registry.champion()
    if info is None:
        why = "no champion yet"
    else:
        model_dir = registry.model_dir(info.version)
        theirs = ModelConfig.from_dict(json.loads((model_dir / "model.json").read_text())["model"]).to_dict()
        if theirs == cfg.model.to_dict():
            log(f"--init champion: fine-tuning champion version {info.version}")
            return str(model_dir / "model.pt"), {"init": CHAMPION_INIT, "champion_version": info.version}
        differ = sorted(k for k in theirs if theirs[k] != cfg.model.to_dict()[k])
        why = f"champion version {info.version} has another network ({', '.join(differ)})"
    log(f"--init champion: {why}; starting from the pretrained default ({COLD_INIT})")
    return COLD_INIT, {"cold_start_reason": why}


def train(
    cfg: TrainConfig,
    store: DatasetStore,
    run_dir: Path,
    resume: bool = False,
    hub_dir: Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train per ``cfg``; checkpoints go to ``run_dir/checkpoint.pt``. ``on_epoch`` runs after each checkpoint."""
    version = open_version(store, cfg.dataset)
    device = torch.device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or cpu_threads())
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    ckpt_path = run_dir / "checkpoint.pt"
    start_epoch, history, iter_losses = 0, [], []
    init_loaded: dict[str, Any] = {"init": "none"}
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = json.loads(ckpt["config"])
        if saved != json.loads(json.dumps(cfg.to_dict())):
            raise UserError(f"{run_dir}: the checkpoint was made with other settings; start without --resume")
        model.load_state_dict(ckpt["model"])
        start_epoch, history, iter_losses = ckpt["epoch"] + 1, json.loads(ckpt["history"]), ckpt["iter_losses"].tolist()
        init_loaded = json.loads(ckpt["init_loaded"])
        log(f"resuming {run_dir.name} after epoch {start_epoch}/{cfg.epochs}")
    else:
        if resume:
            log(f"no checkpoint in {run_dir}: starting from the beginning")
        init, warm = resolve_init(cfg, log)
        init_loaded = {**load_init(model, cfg.model, init, hub_dir or Path(torch.hub.get_dir())), **warm}
        if init_loaded["init"] == "":
            log(
                f"--init {cfg.init}: weights not in the torch hub cache (run 'bookcounter setup-models' "
                "online); training from scratch"
            )
            init_loaded = {**warm, "init": "none"}
    if init_loaded["init"] != "none":
        init_loaded["frozen_parameters"] = freeze_stages(model, cfg.frozen_stages)
    # channels-last convolutions: 1.25x less CPU per training image here (bench/train_profile.py), and faster on CUDA
    model.to(device).to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    if resume and ckpt_path.is_file():
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])

    dataset = BookDataset(
        version,
        "train",
        cfg.model,
        train=True,
        seed=cfg.seed,
        view_p=cfg.view_p,
        sparse_p=cfg.sparse_p,
        pile_p=cfg.pile_p,
    )
    iters_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    total = iters_per_epoch * cfg.epochs
    log(plan(cfg, len(dataset), total, run_dir.parent / THROUGHPUT_FILE))
    started = time.monotonic()
    deadline = started + cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    run_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=total,
        initial=start_epoch * iters_per_epoch,
        desc=f"training {cfg.dataset}",
        unit="it",
        disable=not progress,
    )
    stopped_by_cap = False
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
        )
        bar.set_description(f"training {cfg.dataset}, epoch {epoch + 1}/{cfg.epochs}")

        def lr_for(it: int) -> float | None:
            return None if time.monotonic() > deadline else lr_at(it, total, cfg)

        row, losses = train_one_epoch(model, optimizer, scaler, loader, device, epoch * iters_per_epoch, lr_for, bar)
        stopped_by_cap = len(losses) < len(loader)
        if not losses:
            break
        iter_losses.extend(losses)
        row["epoch"] = epoch + 1
        history.append(row)
        _save_checkpoint(ckpt_path, model, optimizer, scaler, epoch, history, iter_losses, cfg, init_loaded)
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.3f} ({row['seconds']:.0f} s, "
            f"{row['images_per_s']:.2f} images/s)"
        )
        if on_epoch is not None:
            on_epoch(epoch, row)
        if stopped_by_cap:
            break
    bar.close()
    if stopped_by_cap:
        log(
            f"stopped by the {cfg.max_minutes:g}-minute safety cap after {len(iter_losses)} of {total} "
            "iterations: the schedule did not finish"
        )
    elif history:
        _record_throughput(run_dir.parent / THROUGHPUT_FILE, cfg, history)
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return TrainResult(model, cfg, version, history, iter_losses, init_loaded, run_dir, stopped_by_cap)


THROUGHPUT_FILE = "throughput.json"  # beside the runs: the last measured images/s per device and network


def _throughput_key(cfg: TrainConfig) -> str:
    threads = cfg.threads or cpu_threads()
    return f"{cfg.device}/{threads} threads/{cfg.model.backbone}/{cfg.model.image_size}px/batch {cfg.batch_size}"


def plan(cfg: TrainConfig, photos: int, iterations: int, throughput_file: Path) -> str:
    """One line: the work planned, and the time it should take at the last measured speed."""
    images = iterations * cfg.batch_size
    line = f"plan: {cfg.epochs} epoch(s) of {photos} photos = {iterations} iterations, {images} images seen"
    try:
        ips = json.loads(throughput_file.read_text())[_throughput_key(cfg)]
        line += f"; about {images / ips / 60:.0f} min at the last measured {ips:.2f} images/s"
    except (OSError, KeyError, ValueError):
        line += "; the progress bar shows the time left once it runs"
    return line + (f" (safety cap {cfg.max_minutes:g} min)" if cfg.max_minutes is not None else "")


def _record_throughput(path: Path, cfg: TrainConfig, history: list[dict[str, float]]) -> None:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    images = sum(r["images_per_s"] * r["seconds"] for r in history)
    known[_throughput_key(cfg)] = round(images / max(1e-9, sum(r["seconds"] for r in history)), 3)
    path.write_text(json.dumps(known, indent=2))


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    first_iter: int,
    lr_for: Callable[[int], float | None],
    bar: tqdm,
) -> tuple[dict[str, float], list[float]]:
    """One pass over ``loader``, as torchvision's ``engine.train_one_epoch`` (AMP on CUDA).

    ``lr_for(it)`` is the learning rate of global iteration ``it``, or None when the safety cap
    is reached, which ends the epoch there. ``bar`` is the whole run's progress bar. Returns the
    epoch's mean losses (with ``lr``, ``seconds`` and ``images_per_s``) and every iteration's total loss.
    """
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    iter_losses: list[float] = []
    images_seen = 0
    t0 = time.monotonic()
    for i, (images, targets) in enumerate(loader):
        lr = lr_for(first_iter + i)
        if lr is None:
            break
        for g in optimizer.param_groups:
            g["lr"] = lr
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at iteration {first_iter + i}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        scaler.step(optimizer)
        scaler.update()
        iter_losses.append(loss.item())
        images_seen += len(images)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        bar.update(1)
        bar.set_postfix({k.removeprefix("loss_"): f"{v / (i + 1):.3f}" for k, v in sums.items()})
    seconds = time.monotonic() - t0
    row = {k: v / max(1, len(iter_losses)) for k, v in sums.items()}
    row.update(lr=optimizer.param_groups[0]["lr"], seconds=seconds, images_per_s=images_seen / max(seconds, 1e-9))
    return row, iter_losses


def _save_checkpoint(path: Path, model, optimizer, scaler, epoch, history, iter_losses, cfg, init_loaded) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "history": json.dumps(history),
            "iter_losses": torch.tensor(iter_losses, dtype=torch.float64),
            "config": json.dumps(cfg.to_dict()),
            "init_loaded": json.dumps(init_loaded),
        },
        tmp,
    )
    os.replace(tmp, path)


def train_and_save(
    cfg: TrainConfig,
    store: DatasetStore,
    run_dir: Path,
    resume: bool = False,
    hub_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train, write ``run_dir/model`` (model.pt + model.json) and ``run_dir/plots/loss_curves.png``,
    choose the counting operating point on val and sparse scenes made from it.

    model.json holds the network config, the operating point (score threshold and NMS IoU), the
    dataset version and its manifest content hash, the training config and history, and the val
    metrics at that operating point.
    """
    from trainer.evaluate import choose_operating_point, choose_whole_books, detect, metrics, operating_point_set
    from trainer.model import DEFAULT_NMS_IOU, save_model_dir
    from trainer.predictor import Predictor

    result = train(cfg, store, run_dir, resume=resume, hub_dir=hub_dir, progress=progress, log=log)
    manifest = result.version.manifest()
    meta: dict[str, Any] = {
        "model": cfg.model.to_dict(),
        "threshold": 0.5,
        "nms_iou": DEFAULT_NMS_IOU,
        "dataset_version": result.version.name,
        "manifest_hash": manifest["content_hash"],
        "train": cfg.to_dict(),
        "init_loaded": result.init_loaded,
        "epochs_done": len(result.history),
        "iterations_done": len(result.iter_losses),
        "stopped_by_cap": result.stopped_by_cap,
        "history": result.history,
        "iter_losses": result.iter_losses,
        "metrics": {},
    }
    out = save_model_dir(result.model, meta, run_dir / "model")
    val = result.version.coco("val")
    if val["images"]:
        predictor = Predictor(out, device="cpu")
        meta["threshold"], meta["nms_iou"] = choose_operating_point(
            *operating_point_set(predictor, result.version, progress)
        )
        predictor.set_nms_iou(meta["nms_iou"])
        detections = detect(predictor, result.version, "val", progress)
        predictor.threshold = meta["threshold"]
        level = get_settings().promote_confidence
        meta["whole_books"] = predictor.whole_books = choose_whole_books(predictor, result.version, detections, level)
        meta["metrics"] = {
            f"val_{k}": v for k, v in metrics(val, detections, meta["threshold"], meta["whole_books"]).items()
        }
        log(
            f"val: threshold {meta['threshold']:.2f}, NMS IoU {meta['nms_iou']:.1f}, "
            f"whole books {'on' if meta['whole_books'] else 'off'}, count MAE {meta['metrics']['val_count_mae']:.2f}, "
            f"mask AP {meta['metrics']['val_segm_AP']:.3f}, AP50 {meta['metrics']['val_segm_AP50']:.3f}"
        )
    else:
        log("no val photos: counting threshold and NMS IoU left at 0.5")
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    from trainer import plots

    (run_dir / "plots").mkdir(exist_ok=True)
    plots.loss_curves(result.history, result.iter_losses, run_dir / "plots" / "loss_curves.png")
    return out
