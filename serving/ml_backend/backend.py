"""Interactive SAM for Label Studio: an ML backend that answers a click or a box with a mask.

This module answers prompts; :mod:`serving.ml_backend.routes` speaks the protocol and
:mod:`serving.ml_backend.server` runs the process.

Speaks Label Studio's ML backend protocol on FastAPI (the ``label-studio-ml`` package on PyPI
is the old API): ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook`` (and
``POST /train``, what Label Studio sends for "Start training" when its webhook feature flag is
off), ``GET /versions``, ``POST /job_status``.

A click: Label Studio posts the task and ``params.context.result`` = the prompt regions of the
current object (every positive/negative smart keypoint and at most one rectangle, coordinates
in percent of the image). All of them become ONE SAM prompt; the answer is the best of SAM's
multimask outputs by predicted IoU, as one brush (RLE) result. The photo's embedding is
computed once and cached by the Segmenter (disk + in-memory LRU) under the task's ``sha256``
(the key pre-labelling used, so a pre-labelled photo's first click is a cache hit); the photo
itself stays in a small LRU here, so a later click runs only the prompt encoder and the mask
decoder. Without a SAM checkpoint the champion Mask R-CNN answers: a box with its mask head, a
click with the mask of the detection under it (:func:`bookcounter.detector.mask_under_click`;
the photo's detections are kept, as RLE, next to the photo in the LRU).

Training: every annotation webhook checks the count of new annotations, and "Start training"
(``START_TRAINING`` or ``/train``) asks for a loop run; both through :mod:`annotator.training_trigger`
(a Prefect event; the ``loop`` deployment's trigger runs the loop). The job id is the event id;
``/job_status`` reports the state of the flow run it caused, from Prefect.

Problems of one request (photo not fetchable or not decodable, too large, prompt empty or
outside the image, no model at all) are answered with HTTP 200 and a prediction whose
``result`` is empty and whose ``error`` says what is wrong: Label Studio turns any non-2xx
answer into a bare "500 Server Error" and drops the body, so this is how the message reaches
the caller. A malformed request body is a 422; an unexpected failure a 500 with ``error``. The
server stays up either way.
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from annotator.labelstudio.label_config import BRUSH, IMAGE
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import fetch_photo
from bookcounter import masks
from bookcounter.detector import Detector, DetectorProvider, mask_under_click
from bookcounter.errors import UserError
from bookcounter.images import decode_image, sha256_bytes
from bookcounter.settings import Settings

if TYPE_CHECKING:
    from annotator.sam import Segmenter

log = logging.getLogger("bookcounter.ml_backend")

TITLE = "bookcounter-sam"  # the backend's title in Label Studio
PHOTO_LRU_SIZE = 8  # decoded photos kept for later clicks (the embeddings live in the Segmenter)
PHOTO_LRU_PIXELS = 100_000_000  # ... and at most this many pixels (300 MB of RGB) unless one photo is larger


class PromptError(UserError):
    """The prompt cannot be used: empty, outside the image, or of an unknown kind."""


class NeedsSam(UserError):
    """Neither a SAM checkpoint nor a champion: nothing can answer a prompt."""


@dataclass(frozen=True)
class Prompt:
    """One object's prompt; coordinates in percent of the image (Label Studio's), or pixels after :meth:`in_pixels`."""

    points: np.ndarray  # (N, 2) float32 x, y
    labels: np.ndarray  # (N,) int 1 = positive, 0 = negative
    box: np.ndarray | None  # (4,) float32 x0, y0, x1, y1

    def in_pixels(self, width: int, height: int) -> Prompt:
        scale = np.array([width / 100, height / 100], np.float32)
        points = np.minimum(self.points * scale, np.array([width - 1, height - 1], np.float32))
        box = None if self.box is None else self.box * np.tile(scale, 2)
        return Prompt(points, self.labels, box)


@dataclass(frozen=True)
class Photo:
    key: str  # sha256: the embedding cache key
    image: Image.Image


@dataclass(frozen=True)
class Detection:
    """One champion detection kept for later clicks: its mask as RLE (a 50 MP photo's masks
    would take GBs as arrays), decoded only when a click asks for it."""

    score: float
    box: tuple[float, float, float, float]
    rle: masks.RLE

    @property
    def mask(self) -> np.ndarray:
        return masks.decode(self.rle)


def parse_prompt(regions: list[dict[str, Any]]) -> Prompt:
    """Label Studio's smart regions -> one prompt (percent coordinates), validated.

    Keypoints must lie inside the image; a rectangle is clipped to it and must keep some area.
    With several rectangles the last one drawn is used.
    """
    if not regions:
        raise PromptError("empty prompt: context.result holds no keypoint or rectangle")
    points, labels, box = [], [], None
    for r in regions:
        kind, v = (r.get("type"), r.get("value") or {}) if isinstance(r, dict) else (None, {})
        try:
            x, y = float(v["x"]), float(v["y"])
        except (KeyError, TypeError, ValueError):
            raise PromptError(f"{kind or 'prompt region'}: value.x/value.y missing or not numbers") from None
        if kind == "keypointlabels":
            if not (0 <= x <= 100 and 0 <= y <= 100):
                raise PromptError(f"keypoint at x={x:.1f}%, y={y:.1f}% lies outside the image")
            points.append((x, y))
            labels.append(1 if r.get("is_positive", True) else 0)
        elif kind == "rectanglelabels":
            try:
                w, h, rotation = float(v["width"]), float(v["height"]), float(v.get("rotation") or 0)
            except (KeyError, TypeError, ValueError):
                raise PromptError("rectangle: value.width/value.height missing or not numbers") from None
            if rotation % 360:
                raise PromptError("rotated rectangles are not supported as prompts; draw it unrotated")
            x0, y0 = max(min(x, x + w), 0.0), max(min(y, y + h), 0.0)
            x1, y1 = min(max(x, x + w), 100.0), min(max(y, y + h), 100.0)
            if x1 <= x0 or y1 <= y0:
                raise PromptError(f"rectangle at x={x:.1f}%, y={y:.1f}% has no area inside the image")
            box = np.array([x0, y0, x1, y1], np.float32)
        else:
            raise PromptError(f"unsupported prompt region type {kind!r}; use a smart keypoint or rectangle")
    return Prompt(np.array(points, np.float32).reshape(-1, 2), np.array(labels, np.int64), box)


def check_label_config(schema: str) -> None:
    """The project's labelling config must have the brush tool this backend answers with."""
    try:
        root = ET.fromstring(schema)
    except ET.ParseError as e:
        raise UserError(f"labelling config is not valid XML ({e})") from None
    brushes = [el for el in root.iter("BrushLabels") if el.get("name") == BRUSH]
    if not brushes or brushes[0].get("toName") != IMAGE:
        raise UserError(
            f'labelling config has no <BrushLabels name="{BRUSH}" toName="{IMAGE}">; '
            "use bookcounter's project config (annotator/labelstudio/label_config.py)"
        )


class Backend:
    """The models and the photo LRU behind the endpoints; thread-safe for concurrent requests."""

    def __init__(self, settings: Settings, segmenter: Segmenter | None, champion: DetectorProvider):
        self.settings = settings
        self.segmenter = segmenter
        self.champion = champion  # answers boxes when there is no SAM
        self._photos: OrderedDict[str, Photo] = OrderedDict()
        self._detections: OrderedDict[tuple[str, str], list[Detection]] = OrderedDict()  # (photo, model version)
        self.detector_calls = 0  # champion runs on whole photos (clicks without SAM)
        self._lock = threading.Lock()
        self._url_locks: dict[str, threading.Lock] = {}

    # --- models -------------------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        if self.segmenter is not None:
            return f"sam-{self.segmenter.namespace}"  # type and weights, e.g. sam-vit_t-6dbb90523a35
        detector = self.champion()
        return f"maskrcnn-v{detector.model_version}" if detector is not None else "none"

    # --- photos -------------------------------------------------------------------------------

    def photo(self, task: dict[str, Any]) -> Photo:
        """The task's photo, decoded once and kept in a small LRU (fetched from Label Studio)."""
        url = (task.get("data") or {}).get(IMAGE)
        if not isinstance(url, str) or not url:
            raise UserError(f"task {task.get('id')}: data.{IMAGE} holds no image URL")
        with self._lock:
            if url in self._photos:
                self._photos.move_to_end(url)
                return self._photos[url]
            url_lock = self._url_locks.setdefault(url, threading.Lock())
        with url_lock:  # concurrent first clicks on one photo fetch it once
            try:
                with self._lock:
                    if url in self._photos:
                        return self._photos[url]
                data = fetch_photo(self.settings, self._checked_url(url))
                image = decode_image(data, url, self.settings.max_megapixels, self.settings.min_photo_side)
                sha = (task.get("data") or {}).get("sha256")
                key = sha if isinstance(sha, str) and len(sha) == 64 and sha.isalnum() else sha256_bytes(data)
                photo = Photo(key, image)
                with self._lock:
                    self._photos[url] = photo
                    while len(self._photos) > 1 and (
                        len(self._photos) > PHOTO_LRU_SIZE
                        or sum(p.image.width * p.image.height for p in self._photos.values()) > PHOTO_LRU_PIXELS
                    ):
                        self._photos.popitem(last=False)
                return photo
            finally:
                with self._lock:
                    self._url_locks.pop(url, None)

    def detections(self, detector: Detector, photo: Photo) -> list[Detection]:
        """The champion's detections of ``photo``, computed once per photo and model version."""
        key = (photo.key, detector.model_version)
        with self._lock:
            if key in self._detections:
                self._detections.move_to_end(key)
                return self._detections[key]
        found = [
            Detection(i.score, tuple(i.box), masks.encode(np.asarray(i.mask))) for i in detector.predict(photo.image)
        ]
        with self._lock:
            self.detector_calls += 1
            self._detections[key] = found
            while len(self._detections) > PHOTO_LRU_SIZE:
                self._detections.popitem(last=False)
        return found

    def _checked_url(self, url: str) -> str:
        """Only Label Studio's own URLs: our token never goes anywhere else."""
        u, ls = urlparse(url), urlparse(self.settings.ls_url)
        if not u.scheme and not u.netloc and url.startswith("/data/"):
            return url
        same_port = (u.port or 80) == (ls.port or 80)
        if u.scheme in ("http", "https") and same_port and u.hostname in (ls.hostname, "localhost", "127.0.0.1"):
            return u.path + (f"?{u.query}" if u.query else "")
        raise UserError(f"image URL {url[:200]} is not served by Label Studio at {self.settings.ls_url}")

    # --- the answer ---------------------------------------------------------------------------

    def answer(self, task: dict[str, Any], regions: list[dict[str, Any]]) -> dict[str, Any]:
        """One prediction (brush result of the best mask) for the prompt ``regions`` on ``task``."""
        t0 = time.perf_counter()
        prompt = parse_prompt(regions)  # before fetching anything: a bad prompt costs nothing
        photo = self.photo(task)
        prompt = prompt.in_pixels(photo.image.width, photo.image.height)
        if self.segmenter is not None:
            calls = self.segmenter.encoder_calls
            emb = self.segmenter.embed(photo.image, photo.key)
            embedding = "computed" if self.segmenter.encoder_calls > calls else "cached"
            if len(prompt.points):
                mask, score = self.segmenter.predict_points(emb, prompt.points, prompt.labels, prompt.box)
            else:
                got, scores = self.segmenter.predict_boxes(emb, prompt.box[None])
                mask, score = got[0], float(scores[0])
            version = self.model_version
        else:
            detector = self.champion()
            if detector is None:
                raise NeedsSam(
                    "no SAM checkpoint and no champion Mask R-CNN yet: a prompt needs one of them "
                    "(run `bookcounter setup-models` or set BOOKCOUNTER_SAM_CHECKPOINT)"
                )
            if prompt.box is not None:  # a box, with or without points: the mask head inside it
                mask, score = detector.masks_for_boxes(photo.image, prompt.box[None])[0], 1.0
                embedding = "none"
            else:
                calls = self.detector_calls
                found = self.detections(detector, photo)
                mask, score = mask_under_click(detector, photo.image, prompt.points, prompt.labels, found)
                embedding = "none, detections " + ("computed" if self.detector_calls > calls else "cached")
            version = f"maskrcnn-v{detector.model_version}"
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            raise PromptError("no object found for this prompt; click inside the object or draw a box around it")
        log.info(
            "task %s: %d point(s)%s -> mask of %d px (score %.2f), embedding %s, %.0f ms",
            task.get("id"),
            len(prompt.points),
            " + box" if prompt.box is not None else "",
            int(mask.sum()),
            score,
            embedding,
            1000 * (time.perf_counter() - t0),
        )
        return {"result": [brush_result(mask, score)], "score": float(score), "model_version": version}


def load_backend(settings: Settings, champion: DetectorProvider) -> Backend:
    """The backend with SAM when a checkpoint is found (or random weights when allowed for tests).

    ``champion`` gives the current champion; it must answer quickly, since Label Studio calls
    ``/setup`` (which names the model version) with a 3 s timeout.
    """
    from annotator.sam import load_segmenter

    segmenter = load_segmenter(settings, checkpoint=settings.sam_checkpoint)
    if segmenter is None and settings.sam_random_init:
        log.warning("BOOKCOUNTER_SAM_RANDOM_INIT: using random SAM weights (tests and benchmarks only)")
        segmenter = load_segmenter(settings, random_init=True)
    if segmenter is None:
        log.warning("no SAM checkpoint: clicks and boxes are answered by the champion Mask R-CNN")
    return Backend(settings, segmenter, champion)
