"""How unsure the champion is of a photo's count: what ``least-sure`` annotation order ranks by.

Candidates, measured (``bench/least_sure_score.py``; results in bench/README.md):
- ``flip``: the counts of the photo and of its mirror image differ by this many books. A
  model that is sure of each book finds it in both;
- ``near``: the detections whose score lies within :data:`NEAR` of the counting threshold
  (each could tip the count either way);
- each of them per counted book (raw counts mostly grow with the number of books on the shelf).

:func:`uncertainty` is the score the loop uses: ``near`` per counted book, the one that ranked
the count error best for both a weak and a stronger model; :func:`confidence` maps it to (0, 1], the
``score`` of a Label Studio prediction (higher = surer, so ascending order is least sure first).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageOps

from bookcounter.detector import Detector, Instance

NEAR = 0.15  # score distance from the threshold that counts as "near"


def flip_disagreement(detector: Detector, image: Image.Image, found: Sequence[Instance] | None = None) -> int:
    """|count(photo) - count(mirrored photo)| at the detector's own threshold (``found``: the photo's, if known)."""
    n = len(found if found is not None else detector.predict(image))
    return abs(n - len(detector.predict(ImageOps.mirror(image))))


def near_threshold(scores: Sequence[float], threshold: float) -> int:
    """How many detection scores lie within :data:`NEAR` of ``threshold``."""
    return sum(abs(s - threshold) < NEAR for s in scores)


def uncertainty(detector: Detector, image: Image.Image) -> float:
    """The loop's least-sure score of ``image``: detections near the threshold per counted book
    (one prediction, down to ``threshold - NEAR``)."""
    found = detector.predict(image, threshold=max(0.01, detector.threshold - NEAR))
    return uncertainty_of([i.score for i in found], detector.threshold)


def uncertainty_of(scores: Sequence[float], threshold: float) -> float:
    """``near / (count + 1)`` from the detection scores of one prediction down to ``threshold - NEAR``."""
    count = sum(s >= threshold for s in scores)
    return near_threshold(scores, threshold) / (count + 1)


def confidence(unsure: float) -> float:
    """A Label Studio prediction ``score`` in (0, 1]: 1 / (1 + uncertainty)."""
    return 1.0 / (1.0 + unsure)
