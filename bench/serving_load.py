"""Load test of ``bookcounter serve``: N concurrent clients post one photo for a bounded time.

Starts a real server (``bookcounter serve`` in a subprocess, uvicorn) on a free loopback port
with the champion of the state dir (``BOOKCOUNTER_STATE_DIR``, ``var/`` by default), waits until
``/readyz``, then runs the clients and prints p50/p95 latency, throughput and the error count.
``--url`` loads a server that is already running instead. Targets on CPU for one 640 px photo:
p50 <= 1 s, >= 2 photos/s, 0 errors.

    .venv/bin/python bench/serving_load.py --clients 2 --seconds 30
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bookcounter.settings import get_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_photo() -> Path:
    """The first test photo of the open-shelves sample (640x640 JPEG)."""
    test_dir = get_settings().sample_dir / "test"
    photos = sorted(test_dir.glob("*.jpg"))
    if not photos:
        sys.exit(f"no photo found under {test_dir}; pass --photo")
    return photos[0]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}")
        try:
            r = httpx.get(f"{base}/readyz", timeout=2)
            if r.status_code == 200:
                return httpx.get(f"{base}/model", timeout=5).json()
            if r.status_code == 503 and r.json()["detail"].startswith("No champion"):
                sys.exit(f"no model to serve: {r.json()['detail']}")
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit(f"the server was not ready after {timeout:.0f} s")


def client(base: str, photo: bytes, deadline: float, latencies: list[float], errors: list[str], counts: list[int]) -> None:
    with httpx.Client(base_url=base, timeout=60) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                r = http.post("/count", files={"image": ("photo.jpg", photo, "image/jpeg")})
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            elapsed = time.perf_counter() - started
            if r.status_code != 200:
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                continue
            latencies.append(elapsed)
            counts.append(r.json()["count"])


def run_clients(base: str, photo: bytes, n: int, seconds: float) -> tuple[list[float], list[str], list[int], float]:
    """One warm-up request, then ``n`` clients for ``seconds``: latencies, errors, counts, wall time."""
    httpx.post(f"{base}/count", files={"image": ("photo.jpg", photo, "image/jpeg")}, timeout=60)
    latencies: list[float] = []
    errors: list[str] = []
    counts: list[int] = []
    started = time.monotonic()
    deadline = started + seconds
    threads = [threading.Thread(target=client, args=(base, photo, deadline, latencies, errors, counts)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, counts, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the clients run (default 30)")
    parser.add_argument("--photo", type=Path, default=None, help="photo to post (default: a 640 px sample photo)")
    parser.add_argument("--url", default=None, help="load an already running server instead of starting one")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    args = parser.parse_args()

    photo_path = args.photo or default_photo()
    photo = photo_path.read_bytes()
    log_path = get_settings().run_dir / "serving_load.log"
    if args.url:
        base, log_path = args.url.rstrip("/"), None
        model = httpx.get(f"{base}/model", timeout=10).json()
        latencies, errors, counts, wall = run_clients(base, photo, args.clients, args.seconds)
    else:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cli = Path(sys.executable).with_name("bookcounter")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen([str(cli), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
            try:
                model = wait_ready(base, proc, args.ready_timeout)
                latencies, errors, counts, wall = run_clients(base, photo, args.clients, args.seconds)
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    from PIL import Image

    with Image.open(photo_path) as im:
        size = f"{im.width}x{im.height}"
    print(f"model      : version {model.get('model_version')} {model.get('config') or ''} "
          f"(dataset {model.get('dataset_version')})")
    print(f"photo      : {photo_path} ({size}, {len(photo) / 1e3:.0f} kB); count {statistics.mode(counts) if counts else '-'}")
    print(f"load       : {args.clients} clients for {args.seconds:g} s on loopback ({os.cpu_count()} CPUs)")
    if latencies:
        q = statistics.quantiles(latencies, n=20, method="inclusive")
        print(f"latency    : p50 {statistics.median(latencies):.3f} s, p95 {q[18]:.3f} s, max {max(latencies):.3f} s")
    print(f"throughput : {len(latencies) / wall:.2f} photos/s ({len(latencies)} answered in {wall:.1f} s)")
    print(f"errors     : {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    if log_path is not None:
        print(f"server log : {log_path}")


if __name__ == "__main__":
    main()
