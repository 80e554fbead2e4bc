"""The HTTP API on the tiny trained champion, served by real uvicorn, talked to over loopback."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from bad_images import BOMB_MESSAGE, TINY_MESSAGE, bomb_png, tiny_jpeg
from fixtures_serving import Served, running_server, serving_settings
from fixtures_trainer import synthetic_photo
from PIL import Image

from bookcounter import masks as rle

pytestmark = pytest.mark.slow


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path):
    """The champion's model run directly, to compare the API against."""
    from trainer.predictor import Predictor

    return Predictor(tiny_model_dir)


def test_count_is_what_the_model_finds_with_masks_in_original_pixels(
    served_champion: Served, predictor, known_photo
) -> None:
    photo, books = known_photo
    r = httpx.post(
        f"{served_champion.url}/count", files={"image": ("shelf.png", encode(photo), "image/png")}, timeout=60
    )
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predictor.predict(photo)

    assert body["count"] == len(body["instances"]) == len(expected) > 0
    assert body["model_version"] == served_champion.app.state.slot.current.version
    assert body["threshold"] == pytest.approx(predictor.threshold)
    assert (body["width"], body["height"]) == photo.size
    for got, want in zip(body["instances"], expected):
        assert got["score"] == pytest.approx(want.score, abs=1e-4)
        x0, y0, x1, y1 = want.box
        assert got["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.1)
        assert got["mask"]["size"] == [photo.height, photo.width]
        np.testing.assert_array_equal(rle.decode(got["mask"]), want.mask)
    # the answer is about the drawn books
    found = np.any([rle.decode(i["mask"]) for i in body["instances"]], axis=0)
    assert any(found[b].mean() > 0.5 for b in books)


def test_the_api_counts_held_out_photos_close_to_their_true_counts(served_champion: Served, tiny_dataset) -> None:
    """What a user gets: counts through the whole serving path against the true counts of the
    12 test photos (the model alone: test_trainer.py, same bound)."""
    from trainer.evaluate import true_counts

    version = tiny_dataset.version
    gt = version.coco("test")
    truth = true_counts(gt)
    errors = []
    for im in gt["images"]:
        r = httpx.post(
            f"{served_champion.url}/count",
            content=version.image_path(im).read_bytes(),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        errors.append(abs(r.json()["count"] - truth[im["id"]]))
    assert sum(errors) / len(errors) <= 0.75, errors


def test_overlay_is_a_png_with_every_counted_book_drawn(served_champion: Served, known_photo) -> None:
    photo, _ = known_photo
    big = photo.resize((288, 288), Image.Resampling.NEAREST)  # larger than the model's 96 px
    data = encode(big)
    counted = httpx.post(
        f"{served_champion.url}/count", content=data, headers={"content-type": "image/png"}, timeout=60
    ).json()
    r = httpx.post(
        f"{served_champion.url}/count?overlay=1", content=data, headers={"content-type": "image/png"}, timeout=60
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(r.content))
    assert overlay.format == "PNG" and overlay.size == big.size
    assert int(r.headers["x-count"]) == counted["count"] > 0
    changed = np.abs(np.asarray(overlay.convert("RGB"), int) - np.asarray(big, int)).sum(axis=2) > 30
    drawn = sum(changed[rle.decode(i["mask"])].mean() > 0.9 for i in counted["instances"])
    assert drawn == counted["count"]  # every instance is tinted on the PNG


def test_exif_rotated_large_photo_is_counted_upright_in_original_pixels(served_champion: Served, predictor) -> None:
    photo, _ = synthetic_photo(11, 3)
    wide = Image.new("RGB", (128, 96), (40, 40, 40))
    wide.paste(photo, (16, 0))  # landscape, the books unstretched
    upright = wide.resize((384, 288), Image.Resampling.BICUBIC)  # 3x the model's size
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": store the pixels turned the other way
    stored = encode(upright.rotate(90, expand=True), "JPEG", quality=95, exif=exif.tobytes())
    r = httpx.post(f"{served_champion.url}/count", content=stored, headers={"content-type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (384, 288)

    from bookcounter.images import decode_image

    upright_seen = decode_image(stored)
    assert predictor.input_size(upright_seen.size) == (128, 96)  # what the model sees: upright, shorter side 96
    expected = predictor.predict(upright_seen, mask_size=(128, 96))
    assert body["count"] == len(expected) > 0
    for got, want in zip(body["instances"], expected):
        x0, y0, x1, y1 = want.box
        assert got["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.1)
        assert got["mask"]["size"] == [288, 384]
        assert rle.area(got["mask"]) == 9 * int(want.mask.sum())  # each model pixel is a 3x3 block


@pytest.fixture(scope="module")
def strict_server(tiny_champion) -> Iterator[Served]:
    """The app with small limits: 0.05 MB uploads, 0.02 megapixels."""
    from serving.app import create_app

    app = create_app(serving_settings(max_upload_mb=0.05, max_megapixels=0.02))
    with running_server(app) as url:
        yield Served(url, app)


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 8192):
        yield data[i : i + 8192]


GOOD = encode(synthetic_photo(3, 2)[0])  # 96x96 PNG, well under both limits
JPEG = encode(Image.new("RGB", (120, 100), (200, 30, 30)), "JPEG")
NOISE = np.random.default_rng(0).integers(0, 256, 80_000, dtype=np.uint8).tobytes()  # over 0.05 MB
HUGE = NOISE * 3  # over the limit plus multipart allowance: refused by Content-Length before reading

BAD_INPUTS = {
    "not an image": (400, dict(content=b"%PDF-1.4 this is not a photo", headers={"content-type": "image/jpeg"})),
    "truncated JPEG": (400, dict(content=JPEG[: len(JPEG) // 2], headers={"content-type": "image/jpeg"})),
    "zero-byte body": (400, dict(content=b"", headers={"content-type": "image/png"})),
    "zero-byte file": (400, dict(files={"image": ("empty.jpg", b"", "image/jpeg")})),
    "over the size limit": (413, dict(content=NOISE, headers={"content-type": "image/jpeg"})),
    "far over the size limit": (413, dict(content=HUGE, headers={"content-type": "image/jpeg"})),
    "over the size limit, streamed": (413, dict(content=_chunks(NOISE), headers={"content-type": "image/jpeg"})),
    "over the size limit, multipart": (413, dict(files={"image": ("big.jpg", NOISE, "image/jpeg")})),
    "over the megapixel limit": (
        413,
        dict(content=encode(Image.new("L", (200, 200))), headers={"content-type": "image/png"}),
    ),
    "decompression bomb": (413, dict(content=bomb_png(), headers={"content-type": "image/png"})),
    "too small to count": (422, dict(content=tiny_jpeg(), headers={"content-type": "image/jpeg"})),
    "too small to count, multipart": (422, dict(files={"image": ("tiny.jpg", tiny_jpeg(), "image/jpeg")})),
    "wrong content type": (415, dict(content=GOOD, headers={"content-type": "text/plain"})),
    "form without a file": (400, dict(files={"note": (None, "hello")})),
    "bad overlay flag": (422, dict(content=GOOD, headers={"content-type": "image/png"}, params={"overlay": "maybe"})),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_4xx_with_a_message(strict_server: Served, case: str) -> None:
    status, request = BAD_INPUTS[case]
    if "content" in request and not isinstance(request["content"], bytes):  # a generator is used up once
        request = {**request, "content": _chunks(NOISE)}
    r = httpx.post(f"{strict_server.url}/count", timeout=60, **request)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail and (isinstance(detail, list) or len(detail.splitlines()) == 1)
    # the server stays up and still counts
    ok = httpx.post(f"{strict_server.url}/count", content=GOOD, headers={"content-type": "image/png"}, timeout=60)
    assert ok.status_code == 200 and httpx.get(f"{strict_server.url}/healthz").status_code == 200


def test_bomb_and_tiny_photo_are_refused_with_the_limit_they_break(served_champion: Served) -> None:
    """Default limits: a 40000x40000 PNG header is a 413 naming the megapixel limit (not "corrupt"),
    an 8x8 photo a 422 naming the minimum size; a photo of exactly the minimum is counted."""
    post = lambda data, kind: httpx.post(  # noqa: E731
        f"{served_champion.url}/count", content=data, headers={"content-type": kind}, timeout=60
    )
    bomb = post(bomb_png(), "image/png")
    assert bomb.status_code == 413 and BOMB_MESSAGE in bomb.json()["detail"], bomb.text
    assert "corrupt" not in bomb.json()["detail"] and "1600.0 megapixels" in bomb.json()["detail"]
    tiny = post(tiny_jpeg(), "image/jpeg")
    assert tiny.status_code == 422 and TINY_MESSAGE in tiny.json()["detail"] and "8x8" in tiny.json()["detail"], (
        tiny.text
    )
    assert post(tiny_jpeg(63), "image/jpeg").status_code == 422
    smallest = post(encode(synthetic_photo(3, 2)[0].resize((64, 64))), "image/png")
    assert smallest.status_code == 200 and smallest.json()["width"] == 64


def test_metrics_count_requests_by_status(strict_server: Served) -> None:
    httpx.post(f"{strict_server.url}/count", content=b"nope", headers={"content-type": "image/png"}, timeout=60)
    text = httpx.get(f"{strict_server.url}/metrics").text
    assert 'bookcounter_requests_total{route="/count",status="400"}' in text
    assert 'bookcounter_request_seconds_bucket{le="1.0",route="/count"}' in text
    version = strict_server.app.state.slot.current.version
    assert f'bookcounter_model_loaded{{version="{version}"}} 1.0' in text
    assert strict_server.metric("bookcounter_model_reloads_total") == 1


def test_ready_model_and_health(served_champion: Served, tiny_champion) -> None:
    assert httpx.get(f"{served_champion.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{served_champion.url}/readyz").status_code == 200
    model = httpx.get(f"{served_champion.url}/model").json()
    assert model["dataset_version"] == tiny_champion.dataset_version
    assert model["config"]["image_size"] == 96
    assert httpx.get(f"{served_champion.url}/openapi.json").json()["paths"]["/count"]["post"]


def test_without_a_champion_count_and_ready_say_how_to_train(settings) -> None:
    from serving.app import create_app

    with running_server(create_app(settings)) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and "bookcounter train" in ready.json()["detail"]
        r = httpx.post(f"{url}/count", content=GOOD, headers={"content-type": "image/png"})
        assert r.status_code == 503 and "bookcounter train" in r.json()["detail"]
        assert httpx.get(f"{url}/model").status_code == 503
