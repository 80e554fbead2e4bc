"""On-disk cache of SAM image embeddings, bounded in size with least-recently-used eviction.

One file per (weights, image): ``<root>/<namespace>/<image sha256>.pt`` where the namespace
names the model type and its weights (``vit_t-6dbb90523a35`` or ``vit_t-random``), so a new
checkpoint never reuses stale embeddings. Writes are atomic (temp file + rename); a read
touches the file's mtime, and eviction removes the oldest files across all namespaces until
the total is under the bound. Several processes (pre-label, ML backend) may share the
directory: a half-evicted or unreadable entry is a cache miss, never an error.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch

from bookcounter.atomic import atomic_write

log = logging.getLogger(__name__)


class EmbeddingCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def _path(self, namespace: str, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"cache key must be alphanumeric (an image sha256), got {key!r}")
        return self.root / namespace / f"{key}.pt"

    def get(self, namespace: str, key: str) -> dict | None:
        """The stored record (tensors and ints) or None; a hit counts as a use for LRU."""
        path = self._path(namespace, key)
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            os.utime(path)
        except FileNotFoundError:
            return None
        except Exception as e:  # torn or foreign file: drop it and recompute
            log.warning("dropping unreadable cached embedding %s (%s)", path, e)
            path.unlink(missing_ok=True)
            return None
        return record

    def put(self, namespace: str, key: str, record: dict) -> None:
        """Store ``record`` atomically, then evict least-recently-used files over the bound."""
        if self.max_bytes <= 0:
            return
        path = self._path(namespace, key)
        with atomic_write(path) as tmp:
            torch.save(record, tmp)
        self.evict()

    def contains(self, namespace: str, key: str) -> bool:
        return self._path(namespace, key).is_file()

    def total_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    def evict(self) -> list[Path]:
        """Remove the least recently used entries until the cache fits; returns what was removed."""
        removed: list[Path] = []
        with self._lock:
            entries = sorted(self._entries())  # oldest mtime first
            total = sum(size for _, _, size in entries)
            for _, path, size in entries:
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
                removed.append(path)
        return removed

    def _entries(self) -> list[tuple[int, Path, int]]:
        out = []
        for path in self.root.glob("*/*.pt"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime_ns, path, st.st_size))
        return out
