"""Counting a whole folder: photos/s of ``bookcounter count``, the ``count-folder`` flow on 1 and 2
Dask workers (1 thread each), and ``POST /count`` from 2 clients, on the sample's photos.

The photos are the open-shelves sample's train+val+test images (149, 640 px; ``--limit`` for the
first N). The model is ``--model-dir`` (registered as the champion of a temporary state dir) or
the champion of ``BOOKCOUNTER_STATE_DIR``. Each mode counts every photo once into its own file;
model loading is not timed. Also runs ``bench.serving_load``'s load (2 clients posting one
photo) on the same server, for the target ratios: the CLI >= 0.9x serving_load's photos/s, and
2 workers >= 1.7x one worker. Peak RSS is VmHWM / ru_maxrss of each process.

    .venv/bin/python -m bench.count_folder --model-dir MODEL_DIR
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.serving_load import Server, steady, wait_ready
from bookcounter.testing import free_port


def load() -> str:
    return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def sample_photos(limit: int | None) -> list[Path]:
    from bookcounter.settings import get_settings

    root = get_settings().sample_dir
    photos = sorted(p for split in ("train", "val", "test") for p in (root / split).glob("*.jpg"))
    if not photos:
        sys.exit(f"no photos under {root}/{{train,val,test}}; set BOOKCOUNTER_SAMPLE_DIR")
    return photos[:limit] if limit else photos


def bench_cli(folder: Path, work: Path) -> tuple[float, float]:
    """photos/s (the command's own summary: counting only) and peak RSS in MB of `bookcounter count`."""
    exe = Path(sys.executable).with_name("bookcounter")
    done = subprocess.run(
        [str(exe), "count", str(folder), "--out", str(work / "cli.csv")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"bookcounter count failed: {done.stderr[-2000:]}")
    rate = float(re.search(r"\(([\d.]+) photos/s\)", done.stdout)[1])
    return rate, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def bench_flow(folder: Path, work: Path, n_workers: int, n_photos: int) -> tuple[float, list[float], list[int]]:
    """photos/s of the count-folder flow on a LocalCluster, peak RSS (MB) and torch threads of each worker."""
    from distributed import Client, LocalCluster

    from flows.count_folder import DASK_ADDRESS_ENV, count_folder_flow, task_runner
    from serving.batch import load_model, resolve_model

    model_dir, info = resolve_model("champion")
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        os.environ[DASK_ADDRESS_ENV] = cluster.scheduler_address
        with Client(cluster) as client:
            client.run(load_model, model_dir, info)  # each worker loads once, untimed (as the CLI's load)
            flow = count_folder_flow.with_options(task_runner=task_runner())
            warm = work / "warm-up"
            warm.mkdir(exist_ok=True)
            if not any(warm.iterdir()):
                (warm / "one.jpg").symlink_to(next(folder.iterdir()).resolve())
            flow(
                paths=[str(warm)], out=str(work / f"warm-up-{n_workers}.csv")
            )  # Prefect's server and client up, untimed
            started = time.monotonic()
            summary = flow(paths=[str(folder)], out=str(work / f"flow-{n_workers}.csv"))
            wall = time.monotonic() - started
            rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            threads = client.run(lambda: __import__("torch").get_num_threads())
        del os.environ[DASK_ADDRESS_ENV]
    if summary["counted"] != n_photos:
        sys.exit(f"the flow counted {summary['counted']} of {n_photos} photos: {summary}")
    return n_photos / wall, list(rss.values()), list(threads.values())


def post_all(base: str, photos: list[Path], clients: int) -> float:
    """photos/s of ``clients`` threads posting every photo once to POST /count."""
    todo: queue.Queue[Path] = queue.Queue()
    for p in photos:
        todo.put(p)
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while True:
                try:
                    path = todo.get_nowait()
                except queue.Empty:
                    return
                r = http.post("/count", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
                if r.status_code != 200:
                    failures.append(f"{path.name}: HTTP {r.status_code}")

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"POST /count failed: {failures[:3]}")
    return len(photos) / (time.monotonic() - started)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, help="model directory to count with (default: the state dir's champion)"
    )
    parser.add_argument("--limit", type=int, default=None, help="count only the first N photos (default all 149)")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="duration of the serving_load comparison (default 20)"
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["cli", "flow1", "flow2", "post"], help="modes to leave out"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-count-folder-"))
    if args.model_dir:
        os.environ["BOOKCOUNTER_STATE_DIR"] = str(work / "state")
        from trainer import registry

        registry.set_champion(registry.register(args.model_dir).version)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from bookcounter.settings import get_settings
    from flows.prefect_server import configure_prefect

    configure_prefect(get_settings())
    from trainer import registry

    champion = registry.champion()
    if champion is None:
        sys.exit("no champion in the state dir: pass --model-dir")
    photos = sample_photos(args.limit)
    folder = work / "photos"
    folder.mkdir()
    for p in photos:
        (folder / f"{p.parent.name}-{p.name}").symlink_to(p)
    print(f"model  : version {champion.version} ({args.model_dir or 'champion of ' + str(get_settings().state_dir)})")
    print(f"photos : {len(photos)} of the sample (640 px JPEG); {os.cpu_count()} CPUs; {load()}")
    results: dict[str, float] = {}

    if "cli" not in args.skip:
        results["cli"], rss = bench_cli(folder, work)
        print(f"bookcounter count, 1 process     : {results['cli']:.2f} photos/s, peak RSS {rss:.0f} MB ({load()})")
    for n in (1, 2):
        if f"flow{n}" in args.skip:
            continue
        results[f"flow{n}"], rss, threads = bench_flow(folder, work, n, len(photos))
        print(
            f"count-folder, {n} Dask worker(s)  : {results[f'flow{n}']:.2f} photos/s, peak RSS per worker "
            f"{', '.join(f'{r:.0f}' for r in rss)} MB, torch threads {threads} ({load()})"
        )
    if "post" not in args.skip:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        exe = Path(sys.executable).with_name("bookcounter")
        with open(work / "serve.log", "w") as log:
            server = subprocess.Popen(
                [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
            )
            try:
                model = wait_ready(base, server, 300)
                results["post"] = post_all(base, photos, 2)
                print(f"POST /count, 2 clients, all photos: {results['post']:.2f} photos/s ({load()})")
                steady_results, wall = steady(
                    Server(base, model, server.pid, None), photos[0].read_bytes(), 2, args.seconds
                )
                results["serving_load"] = len(steady_results.counts) / wall
                print(
                    f"serving_load (2 clients, 1 photo, {args.seconds:g} s): {results['serving_load']:.2f} photos/s, "
                    f"{len(steady_results.errors)} errors; server peak RSS {peak_rss_mb(server.pid):.0f} MB ({load()})"
                )
            finally:
                server.terminate()
                server.wait(timeout=30)
    if "cli" in results and "serving_load" in results:
        ratio = results["cli"] / results["serving_load"]
        print(f"ratio  : CLI / serving_load = {ratio:.2f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    if "flow1" in results and "flow2" in results:
        ratio = results["flow2"] / results["flow1"]
        print(f"ratio  : 2 workers / 1 worker = {ratio:.2f} (target >= 1.7: {'met' if ratio >= 1.7 else 'NOT met'})")
    print(f"work dir: {work}")


if __name__ == "__main__":
    main()
