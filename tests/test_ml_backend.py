"""The ML backend's parts that need no server: prompts, config check, brush RLE, the champion slot."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from annotator.labelstudio.label_config import LABEL_CONFIG
from annotator.labelstudio.mask_codec import brush_rle
from bookcounter.errors import UserError
from serving.ml_backend.backend import PromptError, check_label_config, parse_prompt


def kp(x: float, y: float, positive: bool = True) -> dict:
    return {"type": "keypointlabels", "is_positive": positive, "value": {"x": x, "y": y, "keypointlabels": ["book"]}}


def rect(x: float, y: float, w: float, h: float, rotation: float = 0) -> dict:
    return {"type": "rectanglelabels", "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation}}


def test_all_clicks_and_the_box_become_one_prompt_in_pixels():
    prompt = parse_prompt([kp(50, 25), kp(10, 90, positive=False), rect(20, 10, 30, 40)]).in_pixels(200, 100)
    np.testing.assert_allclose(prompt.points, [[100, 25], [20, 90]])
    assert prompt.labels.tolist() == [1, 0]
    np.testing.assert_allclose(prompt.box, [40, 10, 100, 50])


def test_edge_clicks_stay_on_the_pixel_grid_and_boxes_are_clipped():
    prompt = parse_prompt([kp(100, 100), rect(90, -10, 30, 50)]).in_pixels(640, 480)
    np.testing.assert_allclose(prompt.points, [[639, 479]])
    np.testing.assert_allclose(prompt.box, [576, 0, 640, 192])


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ([], "empty prompt"),
        ([kp(101, 50)], "outside the image"),
        ([kp(50, -0.5)], "outside the image"),
        ([rect(100, 100, 10, 10)], "no area inside the image"),
        ([rect(10, 10, 5, 5, rotation=30)], "rotated"),
        ([{"type": "polygonlabels", "value": {"x": 1, "y": 2}}], "unsupported prompt"),
        ([{"type": "keypointlabels", "value": {"x": "left"}}], "value.x/value.y"),
    ],
)
def test_bad_prompts_are_named(regions, message):
    with pytest.raises(PromptError, match=message):
        parse_prompt(regions)


def test_label_config_must_have_our_brush_tool():
    check_label_config(LABEL_CONFIG)
    with pytest.raises(UserError, match="BrushLabels"):
        check_label_config('<View><Image name="image" value="$image"/></View>')
    with pytest.raises(UserError, match="not valid XML"):
        check_label_config("<View>")


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (64, 64), (700, 400)])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.5, 1.0])
def test_fast_brush_rle_is_the_sdk_encoding_bit_for_bit(shape, density):
    # the ML backend answers every click with it; 700x400 of ones has runs over 2**16 values
    mask = np.random.default_rng(0).random(shape) < density
    assert brush_rle(mask) == brush.mask2rle(mask.astype(np.uint8) * 255)


class FakeDetector:
    def __init__(self, version: str) -> None:
        self.model_version = version

    def predict(self, image) -> list:  # the slot's warm-up
        return []


class FakeRegistry:
    """A registry whose champion the test sets; counts the loads."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.loads: list[str] = []

    def champion(self):
        from types import SimpleNamespace

        return SimpleNamespace(version=self.version) if self.version else None

    def load_predictor(self, version: str = "champion", device: str | None = None) -> FakeDetector:
        self.loads.append(version)
        return FakeDetector(version)


def test_without_sam_the_backend_names_the_slots_champion_and_follows_a_new_one(settings) -> None:
    from fastapi.testclient import TestClient

    from serving.ml_backend.server import create_app

    registry = FakeRegistry()
    registry.version = "3"
    app = create_app(settings, registry=registry)  # no SAM checkpoint in a test state dir
    with TestClient(app) as client:  # startup loads the champion before the first request
        assert client.get("/versions").json() == {"versions": ["maskrcnn-v3"]}
        registry.version = "4"
        app.state.slot.sync()  # what the slot's poller does every CHAMPION_POLL_S
        assert client.post("/setup", json={"schema": LABEL_CONFIG}).json() == {"model_version": "maskrcnn-v4"}
        registry.version = None  # the alias removed: the slot keeps serving the last champion
        app.state.slot.sync()
        assert client.get("/versions").json() == {"versions": ["maskrcnn-v4"]}
    assert registry.loads == ["3", "4"]


def test_the_annotator_imports_nothing_from_the_trainer() -> None:
    import subprocess
    import sys

    code = (
        "import sys, annotator.cli, annotator.prelabel, annotator.training_trigger, serving.ml_backend.server; "
        "print('trainer' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_a_click_off_every_detection_gets_the_mask_head_on_a_book_sized_box(tiny_model_dir) -> None:
    from fixtures_trainer import synthetic_photo

    from bookcounter.detector import TYPICAL_BOOK, mask_under_click
    from trainer.predictor import Predictor

    champion = Predictor(tiny_model_dir, device="cpu")
    image, _ = synthetic_photo(seed=5, n_books=2)
    instances = champion.predict(image)
    assert instances
    free = np.ones((image.height, image.width), bool)
    for i in instances:
        free &= ~i.mask
    ys, xs = np.nonzero(free)
    x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
    mask, score = mask_under_click(champion, image, np.array([[x, y]]), np.array([1]), instances)
    w, h = np.median([(i.box[2] - i.box[0], i.box[3] - i.box[1]) for i in instances], axis=0)
    box = [max(x - w / 2, 0), max(y - h / 2, 0), min(x + w / 2, image.width), min(y + h / 2, image.height)]
    assert score == 0.0 and np.array_equal(mask, champion.masks_for_boxes(image, np.array([box]))[0])
    # no detection at all: a box of a typical book's share of the photo
    mask, _ = mask_under_click(champion, image, np.array([[x, y]]), np.array([1]), [])
    w, h = TYPICAL_BOOK[0] * image.width, TYPICAL_BOOK[1] * image.height
    box = [max(x - w / 2, 0), max(y - h / 2, 0), min(x + w / 2, image.width), min(y + h / 2, image.height)]
    assert np.array_equal(mask, champion.masks_for_boxes(image, np.array([box]))[0])
    # only negative points: nothing
    mask, _ = mask_under_click(champion, image, np.array([[x, y]]), np.array([0]), instances)
    assert not mask.any()
