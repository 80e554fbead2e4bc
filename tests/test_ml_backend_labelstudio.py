"""The ML backend against the real Label Studio server, both on loopback.

``sam_backend`` is the backend as ``bookcounter ml-backend start`` runs it (its own process,
vit_t with random weights); tests read its embedding count on ``/health``. The no-SAM backend
runs in this process under uvicorn (a thread); ``tests/test_training_trigger.py`` uses it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from bad_images import BOMB_MESSAGE, TINY_MESSAGE, bomb_png, tiny_jpeg
from fixtures_serving import running_server
from label_studio_sdk.converter import brush
from PIL import Image

from annotator.labelstudio.client import client
from annotator.labelstudio.ml_backend_link import connect_ml_backend
from annotator.labelstudio.project import create_task, ensure_project, upload_photo
from bookcounter.images import sha256_bytes
from bookcounter.settings import Settings, get_settings
from bookcounter.testing import free_port
from serving.ml_backend.backend import TITLE
from serving.ml_backend.server import create_app, start_backend, stop_backend
from trainer.registry import load_predictor

pytestmark = pytest.mark.labelstudio


@pytest.fixture(scope="module")
def sam_backend(labelstudio: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("ml-backend"), ml_backend_port=free_port(), sam_random_init=True
    )
    assert settings.ls_port == labelstudio.ls_port
    start_backend(settings)
    try:
        yield settings
    finally:
        stop_backend(settings)


@contextmanager
def backend_in_thread(settings: Settings) -> Iterator[str]:
    """A no-SAM backend served by uvicorn in a thread of this process; yields its URL."""
    with running_server(create_app(settings)) as url:  # no checkpoint in a test state dir: no SAM
        yield url


def add_task(settings: Settings, project: int, path: Path) -> dict:
    data = path.read_bytes()
    url = upload_photo(settings, project, data, path.name)
    sha = sha256_bytes(data)
    task_id = create_task(settings, project, {"image": url, "sha256": sha, "file_name": path.name}, [])
    return {"id": task_id, "data": {"image": url, "sha256": sha}}


def kp(x: float, y: float, positive: bool = True) -> dict:
    return {
        "type": "keypointlabels",
        "from_name": "click",
        "to_name": "image",
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": ["book"]},
    }


def rect(x: float, y: float, w: float, h: float) -> dict:
    return {
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["book"]},
    }


def interactive(settings: Settings, backend_id: int, task_id: int, regions: list[dict]) -> dict:
    """What Label Studio answers the editor (the SDK method returns None, so read the raw body)."""
    raw = client(settings).ml.with_raw_response.predict_interactive(
        id=backend_id, task=task_id, context={"result": regions}
    )
    return raw._response.json()


def encoder_calls(settings: Settings) -> int:
    return httpx.get(f"{settings.ml_backend_url}/health", timeout=5).json()["encoder_calls"]


def photo(sample_dir: Path, i: int) -> Path:
    return sorted((sample_dir / "test").glob("*.jpg"))[i]


def test_click_and_box_get_a_mask_through_label_studio_and_the_embedding_is_computed_once(
    sam_backend: Settings, ls_settings: Settings, sample_dir: Path
):
    project = ensure_project(ls_settings)
    backend_id = connect_ml_backend(ls_settings, project, sam_backend.ml_backend_url, TITLE)
    path = photo(sample_dir, 0)
    width, height = Image.open(path).size
    task = add_task(ls_settings, project, path)
    before = encoder_calls(sam_backend)

    for regions in (
        [kp(40, 55)],
        [rect(30, 20, 15, 60)],
        [kp(40, 55), kp(45, 30, positive=False), rect(30, 20, 15, 60)],
    ):
        answer = interactive(ls_settings, backend_id, task["id"], regions)
        assert "errors" not in answer, answer
        (result,) = answer["data"]["result"]
        assert (result["type"], result["from_name"], result["to_name"]) == ("brushlabels", "mask", "image")
        assert (result["original_width"], result["original_height"]) == (width, height)
        assert result["value"]["brushlabels"] == ["book"]
        pixels = brush.decode_rle(result["value"]["rle"])
        assert pixels.size == width * height * 4  # exactly the image's pixel grid
        area = int((pixels.reshape(height, width, 4)[:, :, 3] > 127).sum())
        assert 0 < area < width * height
        assert answer["data"]["model_version"] == "sam-vit_t-random"
        assert encoder_calls(sam_backend) == before + 1  # computed at the first click only


def test_a_photo_pre_encoded_at_import_needs_no_encoder_run_at_its_first_click(
    sam_backend: Settings, ls_settings: Settings, sample_dir: Path, make_segmenter
):
    # what prelabel does when it imports a task: embed the photo under its sha256 into the shared disk cache
    path = photo(sample_dir, 5)
    make_segmenter(cache_dir=sam_backend.embeddings_dir, max_mb=256).pre_encode(
        [(sha256_bytes(path.read_bytes()), path)]
    )
    project = ensure_project(ls_settings)
    backend_id = connect_ml_backend(ls_settings, project, sam_backend.ml_backend_url, TITLE)
    task = add_task(ls_settings, project, path)
    before = encoder_calls(sam_backend)
    answer = interactive(ls_settings, backend_id, task["id"], [kp(50, 50)])
    assert answer["data"]["result"][0]["type"] == "brushlabels"
    assert encoder_calls(sam_backend) == before


def test_rerunning_setup_leaves_exactly_one_backend_and_removes_a_stale_one(
    sam_backend: Settings, ls_settings: Settings
):
    ls = client(ls_settings)
    project = ensure_project(ls_settings)
    url = sam_backend.ml_backend_url
    first = connect_ml_backend(ls_settings, project, url, TITLE)
    assert connect_ml_backend(ls_settings, project, url, TITLE) == first
    assert [(r.id, r.url, r.is_interactive) for r in ls.ml.list(project=project)] == [(first, url, True)]

    # an earlier setup at another address (same server, so Label Studio accepts it)
    stale_url = f"http://localhost:{sam_backend.ml_backend_port}"
    stale = ls.ml.create(project=project, url=stale_url, title=TITLE, is_interactive=True)
    assert len(ls.ml.list(project=project)) == 2
    assert connect_ml_backend(ls_settings, project, url, TITLE) == first
    assert [r.id for r in ls.ml.list(project=project)] == [first] and stale.id != first
    hooks = [h.url for h in ls.webhooks.list(project=str(project))]
    assert hooks == [f"{url}/webhook"]
    assert not ls.projects.get(id=project).model_version  # pre-label predictions stay visible


def test_bad_input_gets_a_clear_answer_and_the_server_stays_up(
    sam_backend: Settings, ls_settings: Settings, sample_dir: Path, tmp_path: Path
):
    project = ensure_project(ls_settings)
    good = add_task(ls_settings, project, photo(sample_dir, 1))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo(sample_dir, 2).read_bytes()[:3000])
    huge = tmp_path / "huge.png"
    Image.new("L", (9000, 6000), 128).save(huge)  # 54 MP, over the 50 MP limit
    (bomb := tmp_path / "bomb.png").write_bytes(bomb_png())
    (tiny := tmp_path / "tiny.jpg").write_bytes(tiny_jpeg())
    cases = {
        "cannot fetch": ({"id": 1, "data": {"image": "/data/upload/999/missing.jpg"}}, [kp(50, 50)]),
        "not served by Label Studio": ({"id": 1, "data": {"image": "http://example.com/a.jpg"}}, [kp(50, 50)]),
        "corrupt or truncated": (add_task(ls_settings, project, truncated), [kp(50, 50)]),
        "megapixel limit": (add_task(ls_settings, project, huge), [kp(50, 50)]),
        BOMB_MESSAGE: (add_task(ls_settings, project, bomb), [kp(50, 50)]),
        TINY_MESSAGE: (add_task(ls_settings, project, tiny), [kp(50, 50)]),
        "outside the image": (good, [kp(50, 120)]),
        "empty prompt": (good, []),
        "no image URL": ({"id": 1, "data": {}}, [kp(50, 50)]),
    }
    with httpx.Client(base_url=sam_backend.ml_backend_url, timeout=60) as http:
        for message, (task, regions) in cases.items():
            r = http.post("/predict", json={"tasks": [task], "params": {"context": {"result": regions}}})
            assert r.status_code == 200
            (answer,) = r.json()["results"]
            assert answer["result"] == [] and message in answer["error"], (message, answer)
        assert http.post("/predict", json={"tasks": "nope"}).status_code == 422
        assert "not JSON" in http.post("/predict", content=b"{tasks").json()["error"]
        assert http.post("/predict", json={"tasks": [good]}).json()["results"] == []  # no prompt: batch request
        assert http.get("/health").json()["status"] == "UP"


def test_concurrent_clicks_on_different_photos_each_encode_once(
    sam_backend: Settings, ls_settings: Settings, sample_dir: Path
):
    project = ensure_project(ls_settings)
    tasks = [add_task(ls_settings, project, photo(sample_dir, i)) for i in (3, 4)]
    before = encoder_calls(sam_backend)

    def click(task: dict) -> dict:
        body = {"tasks": [task], "params": {"context": {"result": [kp(50, 50)]}}}
        return httpx.post(f"{sam_backend.ml_backend_url}/predict", json=body, timeout=120).json()["results"][0]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(click, tasks * 2))
    for answer in answers:
        assert "error" not in answer and answer["result"][0]["type"] == "brushlabels", answer
    assert encoder_calls(sam_backend) == before + 2


def test_without_sam_or_a_champion_a_prompt_says_what_is_missing(
    labelstudio: Settings, ls_settings: Settings, sample_dir: Path
):
    project = ensure_project(ls_settings)
    task = add_task(ls_settings, project, photo(sample_dir, 0))
    with backend_in_thread(ls_settings) as url:
        backend_id = connect_ml_backend(ls_settings, project, url, TITLE)
        for regions in ([kp(40, 50)], [rect(30, 20, 15, 60)]):
            answer = interactive(ls_settings, backend_id, task["id"], regions)
            assert answer["data"]["result"] == [] and "no SAM checkpoint and no champion" in answer["data"]["error"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def book_under_a_click(instances, books: list[np.ndarray]):
    """A true book the champion found (IoU >= 0.5), a pixel of it inside that detection (the one
    nearest the book's middle), and what a click there must get: the best-scoring detection
    whose mask holds the pixel."""
    pairs = [(iou(i.mask, b), k, i) for k, b in enumerate(books) for i in instances]
    best, k, found = max(pairs, key=lambda p: p[0], default=(0.0, None, None))
    assert best >= 0.5, f"the champion found none of the {len(books)} books (best IoU {best:.2f})"
    ys, xs = np.nonzero(books[k] & found.mask)
    c = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    point = (int(xs[c]), int(ys[c]))
    holding = [i for i in instances if i.mask[point[1], point[0]]]
    return books[k], point, max(holding, key=lambda i: i.score)


def found_book(champion, version) -> tuple[Path, Image.Image, list[np.ndarray], tuple]:
    """A photo of the champion's training split where it found a book (IoU >= 0.5), its true
    masks, and :func:`book_under_a_click` of it: a tiny model finds some books, not all."""
    from bookcounter import masks
    from bookcounter.images import read_image

    coco = version.coco("train")
    for im in coco["images"]:
        image = read_image(version.image_path(im))
        books = [masks.decode(a["segmentation"]) for a in coco["annotations"] if a["image_id"] == im["id"]]
        try:
            return version.image_path(im), image, books, book_under_a_click(champion.predict(image), books)
        except AssertionError:
            continue
    raise AssertionError("the tiny champion finds no book of its own training photos")


def test_without_sam_a_box_and_a_click_are_answered_by_the_champion(
    labelstudio: Settings, tiny_champion, tiny_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # the champion is registered in the session's state dir: a project of our own there
    monkeypatch.setenv("BOOKCOUNTER_LS_PROJECT_TITLE", f"test-champion-{tmp_path.name}")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        champion = load_predictor()  # the registered champion, as the backend loads it
        path, image, books, (book, point, expected) = found_book(champion, tiny_dataset.version)
        project = ensure_project(settings)
        task = add_task(settings, project, path)
        ys, xs = np.nonzero(books[0])
        w, h = image.size
        box = rect(
            100 * xs.min() / w,
            100 * ys.min() / h,
            100 * (xs.max() + 1 - xs.min()) / w,
            100 * (ys.max() + 1 - ys.min()) / h,
        )
        with backend_in_thread(settings) as url:
            backend_id = connect_ml_backend(settings, project, url, TITLE)
            answer = interactive(settings, backend_id, task["id"], [box])
            (result,) = answer["data"]["result"]
            assert answer["data"]["model_version"] == f"maskrcnn-v{tiny_champion.version}"
            mask = brush.decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 127
            inside = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].sum()
            assert mask.sum() > 0 and inside / mask.sum() > 0.8  # the mask head paints inside its box

            # a click: the champion's own mask of the book under it (no SAM anywhere)
            x, y = 100 * (point[0] + 0.5) / w, 100 * (point[1] + 0.5) / h
            click = interactive(settings, backend_id, task["id"], [kp(x, y)])
            assert "error" not in click["data"], click
            (result,) = click["data"]["result"]
            mask = brush.decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 127
            assert np.array_equal(mask, expected.mask) and result["score"] == pytest.approx(expected.score)
            assert iou(mask, book) >= 0.5  # it is the book under the click
            # a negative click inside that book rules its detection out; the photo's detections are reused
            ys, xs = np.nonzero(expected.mask)
            far = np.argmax((xs - point[0]) ** 2 + (ys - point[1]) ** 2)
            nx, ny = int(xs[far]), int(ys[far])
            negative = kp(100 * (nx + 0.5) / w, 100 * (ny + 0.5) / h, positive=False)
            other = interactive(settings, backend_id, task["id"], [kp(x, y), negative])
            assert "error" not in other["data"], other
            (result,) = other["data"]["result"]
            got = brush.decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 127
            assert got.any() and not np.array_equal(got, expected.mask)
            # the answer: the best-scoring other detection holding the click and not the negative
            # point, else the mask head's mask in a typical book's box around the click (score 0)
            instances = champion.predict(image)
            rest = [i for i in instances if i.mask[point[1], point[0]] and not i.mask[ny, nx]]
            if rest:
                best = max(rest, key=lambda i: i.score)
                assert np.array_equal(got, best.mask) and result["score"] == pytest.approx(best.score)
            else:
                assert result["score"] == 0
                bw, bh = np.median([(i.box[2] - i.box[0], i.box[3] - i.box[1]) for i in instances], axis=0)
                gy, gx = np.nonzero(got)  # 2 px: the mask head pastes into a slightly widened, whole-pixel box
                assert point[0] - bw / 2 - 2 <= gx.min() and gx.max() <= point[0] + bw / 2 + 2
                assert point[1] - bh / 2 - 2 <= gy.min() and gy.max() <= point[1] + bh / 2 + 2
            assert httpx.get(f"{url}/health", timeout=5).json()["detector_calls"] == 1
    finally:
        get_settings.cache_clear()
