"""Simulated annotators working at once through Label Studio's API, with SAM clicks in between.

Each annotator (a thread) takes its share of the tasks; per task it clicks a book (Label Studio
asks the ML backend: ``predict_interactive``), submits an annotation that misses one book,
clicks again, then corrects the annotation to every book. Every request goes through a client
with no retries, so a 5xx is seen, not retried away. Used by ``tests/test_annotators_concurrent.py``
and ``bench/annotators_concurrent.py``.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from fixtures_trainer import synthetic_photo
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import create_task, upload_photo
from bookcounter.images import sha256_bytes
from bookcounter.settings import Settings


@dataclass
class ShelfTask:
    id: int
    sha256: str
    masks: list[np.ndarray]  # the books, the ground truth


@dataclass
class Tally:
    """What the annotators did and met; filled by every thread (under ``lock``)."""

    submitted: list[int] = field(default_factory=list)  # annotation ids
    corrected: int = 0
    first_click_ms: list[float] = field(default_factory=list)  # a task's first click: the photo is encoded
    later_click_ms: list[float] = field(default_factory=list)  # its second: the embedding is cached
    empty_clicks: int = 0  # a click answered without a mask
    server_errors: list[str] = field(default_factory=list)  # 5xx answers
    other_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def add_shelf_tasks(settings: Settings, project: int, n: int, seed: int = 0) -> list[ShelfTask]:
    """``n`` synthetic shelf photos (2-5 books each) uploaded as tasks."""
    tasks = []
    for i in range(n):
        img, masks = synthetic_photo(seed + i, 2 + (seed + i) % 4)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, name = buf.getvalue(), f"shelf-{seed + i}.png"
        url = upload_photo(settings, project, data, name)
        sha = sha256_bytes(data)
        task_id = create_task(settings, project, {"image": url, "sha256": sha, "file_name": name}, [])
        tasks.append(ShelfTask(task_id, sha, masks))
    return tasks


def click_on(mask: np.ndarray) -> dict[str, Any]:
    """A positive keypoint at the book's centre, in Label Studio's percent coordinates."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return {
        "type": "keypointlabels",
        "from_name": "click",
        "to_name": "image",
        "is_positive": True,
        "value": {"x": 100 * xs.mean() / w, "y": 100 * ys.mean() / h, "width": 0.6, "keypointlabels": ["book"]},
    }


def _call(tally: Tally, what: str, fn):
    """Run one API call; a failure is tallied (5xx apart) and None returned."""
    try:
        return fn()
    except ApiError as e:
        bucket = tally.server_errors if (e.status_code or 0) >= 500 else tally.other_errors
        with tally.lock:
            bucket.append(f"{what}: HTTP {e.status_code} {str(e.body)[:200]}")
    except Exception as e:  # noqa: BLE001  a dropped connection, a timeout: every failure counts
        with tally.lock:
            tally.other_errors.append(f"{what}: {type(e).__name__}: {e}"[:300])
    return None


def _click(ls: LabelStudio, tally: Tally, backend_id: int, task: ShelfTask, book: int, times: list[float]) -> None:
    started = time.perf_counter()
    raw = _call(
        tally,
        f"click task {task.id}",
        lambda: ls.ml.with_raw_response.predict_interactive(
            id=backend_id, task=task.id, context={"result": [click_on(task.masks[book])]}
        ),
    )
    if raw is None:
        return
    elapsed = (time.perf_counter() - started) * 1000
    answer = raw._response.json()
    with tally.lock:
        times.append(elapsed)
        if "errors" in answer or not (answer.get("data") or {}).get("result"):
            tally.empty_clicks += 1


def annotator(settings: Settings, backend_id: int, tasks: list[ShelfTask], tally: Tally) -> None:
    """One person's work on ``tasks``: click, submit (one book missing), click, correct."""
    ls = LabelStudio(
        base_url=settings.ls_url, api_key=settings.ls_secrets.token.get_secret_value(), timeout=120, max_retries=0
    )
    for task in tasks:
        _click(ls, tally, backend_id, task, 0, tally.first_click_ms)
        first = [brush_result(m) for m in task.masks[:-1]]
        made = _call(
            tally, f"submit task {task.id}", partial(ls.annotations.create, id=task.id, result=first, lead_time=4.0)
        )
        if made is None:
            continue
        with tally.lock:
            tally.submitted.append(made.id)
        _click(ls, tally, backend_id, task, len(task.masks) - 1, tally.later_click_ms)
        every = [brush_result(m) for m in task.masks]
        if _call(tally, f"correct annotation {made.id}", partial(ls.annotations.update, id=made.id, result=every)):
            with tally.lock:
                tally.corrected += 1


def annotate_concurrently(settings: Settings, backend_id: int, tasks: list[ShelfTask], annotators: int) -> Tally:
    """``annotators`` threads share ``tasks`` round-robin and work at once; returns the tally."""
    tally = Tally()
    shares = [tasks[i::annotators] for i in range(annotators)]
    with ThreadPoolExecutor(annotators) as pool:
        for done in [pool.submit(annotator, settings, backend_id, share, tally) for share in shares]:
            done.result()
    return tally


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def click_line(tally: Tally) -> str:
    """Click latency p50/p95 (ms), first clicks (encoder) and later clicks (cached embedding)."""
    parts = []
    for name, ms in (("first", tally.first_click_ms), ("later", tally.later_click_ms)):
        parts.append(f"{name} clicks {len(ms)}: p50 {percentile(ms, 50):.0f} ms, p95 {percentile(ms, 95):.0f} ms")
    return "; ".join(parts)
