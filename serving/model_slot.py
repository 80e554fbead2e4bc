"""The model that answers requests, swapped for a newly promoted champion without a restart.

A background thread polls the registry's ``champion`` alias. When it names another version, that
version is loaded, warmed up with one prediction and swapped in by a single reference
assignment: a request reads :attr:`ModelSlot.current` once and finishes on that model even when
a swap happens meanwhile. A version that fails to load is logged and counted; the previous model
keeps serving, and the failed version is tried again only after ``retry_failed_after`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from serving.metrics import ServingMetrics

if TYPE_CHECKING:
    from trainer.predictor import Predictor
    from trainer.registry import ModelInfo

log = logging.getLogger(__name__)


class Registry(Protocol):
    """What the slot needs from :mod:`trainer.registry` (the module itself satisfies it)."""

    def champion(self) -> ModelInfo | None: ...

    def load_predictor(self, version: str = "champion", device: str | None = None) -> Predictor | None: ...


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    info: ModelInfo
    loaded_at: float  # time.time()
    load_seconds: float  # to load and warm up

    @property
    def version(self) -> str:
        return self.info.version


def warm_up(predictor: Predictor) -> None:
    """One prediction on a plain grey photo, so the first real request pays no first-call costs."""
    predictor.predict(Image.new("RGB", (320, 240), (128, 128, 128)))


class ModelSlot:
    """Holds the current :class:`LoadedModel` (or ``None``) and keeps it equal to the champion."""

    def __init__(
        self,
        registry: Registry,
        metrics: ServingMetrics,
        poll_seconds: float,
        retry_failed_after: float | None = None,
        device: str | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self.poll_seconds = poll_seconds
        self.retry_failed_after = retry_failed_after if retry_failed_after is not None else max(60.0, 12 * poll_seconds)
        self._device = device
        self.current: LoadedModel | None = None
        self.champion_version: str | None = None  # as of the last successful poll
        self._failed: dict[str, float] = {}  # version -> time.monotonic() of its last failed load
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one poll ---------------------------------------------------------------------------
    def sync(self) -> None:
        """Poll the champion alias once and load, warm up and swap in a new version if it changed."""
        with self._sync_lock:
            try:
                info = self._registry.champion()
            except Exception:
                self._metrics.poll_errors.inc()
                log.exception("polling the registry's champion alias failed; still serving %s", self._version())
                return
            self.champion_version = info.version if info else None
            if info is None or info.version == self._version():
                return
            failed_at = self._failed.get(info.version)
            if failed_at is not None and time.monotonic() - failed_at < self.retry_failed_after:
                return
            self._load(info)

    def _load(self, info: ModelInfo) -> None:
        serving = f"version {self._version()}" if self.current else "nothing"
        log.info("loading champion version %s (serving %s until it is ready)", info.version, serving)
        started = time.monotonic()
        try:
            predictor = self._registry.load_predictor(info.version, device=self._device)
            if predictor is None:
                raise RuntimeError(f"the registry has no model for version {info.version}")
            warm_up(predictor)
        except Exception as e:
            self._failed[info.version] = time.monotonic()
            self._metrics.reload_failures.inc()
            log.error(
                "champion version %s failed to load (%s: %s); still serving %s",
                info.version,
                type(e).__name__,
                e,
                self._version(),
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return
        self._failed.pop(info.version, None)
        seconds = time.monotonic() - started
        self.current = LoadedModel(predictor, info, loaded_at=time.time(), load_seconds=seconds)  # the atomic swap
        self._metrics.reloads.inc()
        self._metrics.set_model_version(info.version)
        log.info("now serving champion version %s (loaded and warmed up in %.1f s)", info.version, seconds)

    def detector(self) -> Predictor | None:
        """The loaded champion's model, or None (a :class:`bookcounter.detector.DetectorProvider`)."""
        current = self.current
        return current.predictor if current else None

    def _version(self) -> str | None:
        current = self.current
        return current.version if current else None

    # --- the poller -------------------------------------------------------------------------
    def start(self) -> None:
        """Load the champion now (blocking), then keep polling in a daemon thread."""
        self.sync()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll_forever, name="champion-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.sync()

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` shows about the loaded model (empty when none is loaded)."""
        current = self.current
        if current is None:
            return {}
        return {
            "model_version": current.version,
            "threshold": current.predictor.threshold,
            "nms_iou": current.predictor.nms_iou,
            "config": current.predictor.config.to_dict(),
            "dataset_version": current.info.dataset_version,
            "run_id": current.info.run_id,
            "metrics": current.info.metrics,
            "loaded_at": current.loaded_at,
            "load_seconds": round(current.load_seconds, 2),
            "champion_version": self.champion_version,
        }
