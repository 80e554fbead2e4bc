"""Load test of ``bookcounter serve``: steady load, an overload burst, or a soak of good and bad photos.

Starts a real server (``bookcounter serve`` in a subprocess, uvicorn) on a free loopback port
with the champion of the state dir (``BOOKCOUNTER_STATE_DIR``, ``var/`` by default), or with
``--model DIR`` registered as champion in a throwaway state dir; waits until ``/readyz``, then:

- ``--mode steady`` (default): N clients post one photo in a loop for ``--seconds``; p50/p95,
  throughput, errors. Targets on CPU for one 640 px photo: p50 <= 1 s, >= 2 photos/s, 0 errors.
- ``--mode overload``: ``--uploads`` (50) concurrent uploads of a ``--photo-mb`` (10) MB JPEG
  (a sample photo scaled up, with noise) at once; the 503 share, how fast a 503 comes, p50/p95
  of the counted ones, errors and the server's peak RSS. With the in-flight bound
  (``BOOKCOUNTER_MAX_IN_FLIGHT``) the peak stays near ready RSS + bound x one photo.
- ``--mode soak``: N clients for ``--minutes`` post a mix of good photos (the 640 px test
  photos, now and then a big one) and bad ones (not an image, truncated, empty, over the
  megapixel limit, wrong content type), honouring Retry-After; per kind statuses and p50/p95,
  errors and the RSS over time (a leak shows as growth).

An error is a transport error, a 5xx other than 503, a good photo refused with a 4xx or a bad one
counted. Peak RSS is the server's ``VmHWM`` from /proc.

    .venv/bin/python -m bench.serving_load --clients 2 --seconds 30
    .venv/bin/python -m bench.serving_load --mode overload --uploads 50 --photo-mb 10 --model DIR
    .venv/bin/python -m bench.serving_load --mode soak --minutes 10 --clients 4 --model DIR
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bookcounter.settings import get_settings
from bookcounter.testing import free_port, wait_until_answers

MB = 1_000_000


def sample_photos() -> list[Path]:
    """The test photos of the open-shelves sample (640x640 JPEGs)."""
    test_dir = get_settings().sample_dir / "test"
    photos = sorted(test_dir.glob("*.jpg"))
    if not photos:
        sys.exit(f"no photo found under {test_dir}; pass --photo")
    return photos


# --- the server under test -------------------------------------------------------------------
def register_champion(model_dir: Path) -> Path:
    """A throwaway state dir whose registry has ``model_dir`` as its champion."""
    state = Path(tempfile.mkdtemp(prefix="serving-load-"))
    os.environ["BOOKCOUNTER_STATE_DIR"] = str(state)
    get_settings.cache_clear()
    from trainer import registry

    registry.set_champion(registry.register(model_dir).version)
    return state


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> dict:
    """The served model's ``/model`` once ``/readyz`` says ready; exits if there is no champion."""

    def no_champion(r: httpx.Response) -> bool:
        return r.status_code == 503 and r.json()["detail"].startswith("No champion")

    r = wait_until_answers(f"{base}/readyz", timeout, proc, accept=lambda r: r.status_code == 200 or no_champion(r))
    if no_champion(r):
        sys.exit(f"no model to serve: {r.json()['detail']}")
    return httpx.get(f"{base}/model", timeout=5).json()


@dataclass
class Server:
    base: str
    model: dict
    pid: int | None  # None for --url
    log: Path | None

    def memory_mb(self) -> dict[str, float]:
        """VmRSS (now) and VmHWM (peak so far) of the server process, in MB (empty for --url)."""
        if self.pid is None:
            return {}
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024 / MB  # the kernel's kB are KiB
        return out


@contextmanager
def server_under_test(url: str | None, ready_timeout: float) -> Iterator[Server]:
    if url:
        base = url.rstrip("/")
        yield Server(base, httpx.get(f"{base}/model", timeout=10).json(), None, None)
        return
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cli = Path(sys.executable).with_name("bookcounter")
    log_path = Path(tempfile.gettempdir()) / f"serving_load-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        try:
            yield Server(base, wait_ready(base, proc, ready_timeout), proc.pid, log_path)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


# --- photos ------------------------------------------------------------------------------------
def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def big_photo(source: Path, target_mb: float, max_megapixels: float) -> bytes:
    """``source`` scaled up, with noise, as a JPEG of at least ``target_mb`` MB (books still visible)."""
    rng = np.random.default_rng(0)
    with Image.open(source) as im:
        base = im.convert("RGB")
    side = 1500
    while True:
        scaled = np.asarray(base.resize((side, side), Image.Resampling.BILINEAR), dtype=np.int16)
        noisy = np.clip(scaled + rng.normal(0, 24, scaled.shape), 0, 255).astype(np.uint8)
        data = jpeg(Image.fromarray(noisy), quality=95)
        if len(data) >= target_mb * MB or (side * 1.08) ** 2 > max_megapixels * 1e6:
            return data
        side = int(side * 1.08)


@dataclass(frozen=True)
class Upload:
    kind: str
    good: bool  # a photo that should be counted (200, or 503 when busy)
    body: bytes
    content_type: str = "image/jpeg"


def soak_mix(photos: list[Path], max_megapixels: float) -> list[Upload]:
    """Good photos (mostly 640 px, one in ten big) and bad ones, about one in four."""
    good = [Upload("640px photo", True, p.read_bytes()) for p in photos]
    big = Upload("big photo (~3 MB)", True, big_photo(photos[0], 3, max_megapixels))
    side = int((max_megapixels * 1e6) ** 0.5) + 500
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")
    sample = photos[0].read_bytes()
    bad = [
        Upload("not an image", False, b"%PDF-1.4 this is not a photo"),
        Upload("truncated JPEG", False, sample[: len(sample) // 2]),
        Upload("empty body", False, b""),
        Upload("over the megapixel limit", False, buf.getvalue(), "image/png"),
        Upload("wrong content type", False, sample, "text/plain"),
    ]
    return good * 2 + [big] * 3 + bad * 2  # 30 + 3 good, 10 bad


# --- clients -----------------------------------------------------------------------------------
@dataclass
class Results:
    by_kind: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))  # (status, s)
    errors: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(self, http: httpx.Client, upload: Upload) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            r = http.post("/count", content=upload.body, headers={"content-type": upload.content_type})
        except httpx.HTTPError as e:
            with self.lock:
                self.errors.append(f"{upload.kind}: {type(e).__name__}: {e}")
            return None
        elapsed = time.perf_counter() - started
        with self.lock:
            self.by_kind[upload.kind].append((r.status_code, elapsed))
            if r.status_code == 200:
                self.counts.append(r.json()["count"])
            wrong = (
                (r.status_code >= 500 and r.status_code != 503)
                or (upload.good and 400 <= r.status_code < 500)
                or (not upload.good and r.status_code == 200)
            )
            if wrong:
                self.errors.append(f"{upload.kind}: HTTP {r.status_code}: {r.text[:200]}")
        return r

    def all(self) -> list[tuple[int, float]]:
        return [x for rows in self.by_kind.values() for x in rows]


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "-"
    if len(seconds) == 1:
        return f"p50 {seconds[0]:.3f} s"
    q = statistics.quantiles(seconds, n=20, method="inclusive")
    return f"p50 {statistics.median(seconds):.3f} s, p95 {q[18]:.3f} s, max {max(seconds):.3f} s"


def steady(server: Server, photo: bytes, clients: int, seconds: float) -> tuple[Results, float]:
    """One warm-up request, then ``clients`` clients posting ``photo`` for ``seconds``."""
    upload = Upload("photo", True, photo)
    with httpx.Client(base_url=server.base, timeout=120) as http:
        Results().post(http, upload)
    results = Results()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=server.base, timeout=120) as http:
            while time.monotonic() < deadline:
                results.post(http, upload)

    started = time.monotonic()
    run_threads(client, clients)
    return results, time.monotonic() - started


def overload(server: Server, photo: bytes, uploads: int) -> tuple[Results, float]:
    """``uploads`` clients post ``photo`` once, released together."""
    results = Results()
    upload = Upload(f"{len(photo) / MB:.1f} MB photo", True, photo)
    barrier = threading.Barrier(uploads)

    def client() -> None:
        with httpx.Client(base_url=server.base, timeout=300) as http:
            barrier.wait()
            results.post(http, upload)

    started = time.monotonic()
    run_threads(client, uploads)
    return results, time.monotonic() - started


def soak(server: Server, mix: list[Upload], clients: int, minutes: float) -> tuple[Results, float, list[str]]:
    """``clients`` clients post uploads drawn from ``mix`` for ``minutes``; a line of RSS each minute."""
    results = Results()
    started = time.monotonic()
    deadline = started + minutes * 60
    memory: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.base, timeout=120) as http:
            while time.monotonic() < deadline:
                r = results.post(http, rng.choice(mix))
                if r is not None and r.status_code == 503:
                    time.sleep(float(r.headers.get("retry-after", 1)))  # what a polite client does

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for minute in range(1, math.ceil(minutes) + 1):
        for t in threads:
            t.join(timeout=max(0.0, min(started + minute * 60, deadline) - time.monotonic()))
        mem, rows = server.memory_mb(), results.all()
        line = (
            f"minute {minute:>2}: {len(rows)} answers, {sum(s == 503 for s, _ in rows)} busy, "
            f"{len(results.errors)} errors; server RSS {mem.get('VmRSS', 0):.0f} MB, peak {mem.get('VmHWM', 0):.0f} MB"
        )
        memory.append(line)
        print(line, flush=True)
    for t in threads:
        t.join()
    return results, time.monotonic() - started, memory


def run_threads(target, n: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- report --------------------------------------------------------------------------------------
def report(results: Results, wall: float, server: Server, ready_mem: dict[str, float]) -> None:
    rows = results.all()
    for kind, kind_rows in sorted(results.by_kind.items()):
        statuses = Counter(s for s, _ in kind_rows)
        counted = [t for s, t in kind_rows if s == 200]
        busy = [t for s, t in kind_rows if s == 503]
        line = f"  {kind:<26}: {len(kind_rows):>5} answered, status {dict(sorted(statuses.items()))}"
        if counted:
            line += f"; counted {percentiles(counted)}"
        if busy:
            line += f"; 503 in {percentiles(busy)}"
        print(line)
    busy_share = sum(s == 503 for s, _ in rows) / len(rows) if rows else 0.0
    counted_n = sum(s == 200 for s, _ in rows)
    print(f"503 share  : {busy_share:.1%} ({sum(s == 503 for s, _ in rows)} of {len(rows)})")
    print(f"throughput : {counted_n / wall:.2f} photos/s counted ({counted_n} in {wall:.1f} s)")
    print(f"errors     : {len(results.errors)}" + (f" (first: {results.errors[0]})" if results.errors else ""))
    mem = server.memory_mb()
    if mem:
        print(
            f"server RSS : ready {ready_mem['VmRSS']:.0f} MB (peak so far {ready_mem['VmHWM']:.0f}), "
            f"end {mem['VmRSS']:.0f} MB, peak {mem['VmHWM']:.0f} MB"
        )
    if server.log is not None:
        print(f"server log : {server.log}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument(
        "--mode",
        choices=("steady", "overload", "soak"),
        default="steady",
        help="steady (default): one photo in a loop; overload: one burst of big uploads; soak: a mix",
    )
    parser.add_argument("--clients", type=int, default=4, help="steady/soak: concurrent clients (default 4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady: how long the clients run (default 30)")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak: how long it runs (default 10)")
    parser.add_argument("--uploads", type=int, default=50, help="overload: concurrent uploads (default 50)")
    parser.add_argument("--photo-mb", type=float, default=10.0, help="overload: size of each upload (default 10)")
    parser.add_argument("--photo", type=Path, default=None, help="photo to post (default: a 640 px sample photo)")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model dir (model.pt + model.json) to serve, registered in a throwaway state dir",
    )
    parser.add_argument("--url", default=None, help="load an already running server instead of starting one")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    args = parser.parse_args()

    photos = [args.photo] if args.photo else sample_photos()
    if args.model:
        print(f"registering {args.model} as champion in {register_champion(args.model)}", flush=True)
    settings = get_settings()
    if args.mode == "overload":
        print(f"making a {args.photo_mb:g} MB photo ...", flush=True)
        photo = big_photo(photos[0], args.photo_mb, settings.max_megapixels)
        with Image.open(io.BytesIO(photo)) as im:
            what = f"{len(photo) / MB:.1f} MB JPEG {im.width}x{im.height} x {args.uploads} concurrent uploads"
    elif args.mode == "soak":
        mix = soak_mix(photos, settings.max_megapixels)
        what = f"{args.clients} clients for {args.minutes:g} min, {len(mix)} uploads in the mix"
    else:
        photo = photos[0].read_bytes()
        what = f"{photos[0]} ({len(photo) / 1e3:.0f} kB) x {args.clients} clients for {args.seconds:g} s"

    with server_under_test(args.url, args.ready_timeout) as server:
        ready_mem = server.memory_mb()
        print(
            f"model      : version {server.model.get('model_version')} {server.model.get('config') or ''} "
            f"(dataset {server.model.get('dataset_version')})"
        )
        print(
            f"load       : {args.mode}: {what} on loopback ({os.cpu_count()} CPUs); "
            f"max in flight {settings.max_in_flight}",
            flush=True,
        )
        if args.mode == "overload":
            results, wall = overload(server, photo, args.uploads)
        elif args.mode == "soak":
            results, wall, _ = soak(server, mix, args.clients, args.minutes)
        else:
            results, wall = steady(server, photo, args.clients, args.seconds)
        if results.counts:
            print(f"count      : {statistics.mode(results.counts)} books (most common answer)")
        report(results, wall, server, ready_mem)


if __name__ == "__main__":
    main()
