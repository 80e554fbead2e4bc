"""The ML backend's parts that need no server: prompts, config check, training trigger, brush RLE."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from annotator import training_trigger
from annotator.labelstudio.label_config import LABEL_CONFIG
from annotator.labelstudio.mask_codec import brush_rle
from annotator.ml_backend import PromptError, check_label_config, parse_prompt
from bookcounter.errors import UserError


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


def test_annotation_counter_fires_every_n_and_survives_a_restart(settings):
    counter = training_trigger.AnnotationCounter(settings)
    assert [counter.add(1, every=3) for _ in range(2)] == [False, False]
    assert training_trigger.AnnotationCounter(settings).add(1, every=3) is True  # a new backend process
    assert counter.count() == 0
    assert counter.add(5, every=0) is False and counter.count() == 5  # 0 = off


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (64, 64), (700, 400)])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.5, 1.0])
def test_fast_brush_rle_is_the_sdk_encoding_bit_for_bit(shape, density):
    # the ML backend answers every click with it; 700x400 of ones has runs over 2**16 values
    mask = np.random.default_rng(0).random(shape) < density
    assert brush_rle(mask) == brush.mask2rle(mask.astype(np.uint8) * 255)
