"""Pre-label throughput of the SAM adapter on this machine, with random-init weights.

Compute does not depend on the weight values, so random init measures the real cost. For
each model type: encoder seconds per photo, decoder seconds per photo for ``--boxes`` box
prompts (one batched decoder call, masks at low resolution until the final resize), photos
per minute run one after the other and pipelined (a background worker pre-encodes while the
main thread decodes), and the latency of a click on a cached embedding.

    .venv/bin/python -m bench.prelabel_throughput                       # vit_t and vit_b
    .venv/bin/python -m bench.prelabel_throughput --model-types vit_t --photos 8
    .venv/bin/python -m bench.prelabel_throughput --model-types vit_t --prompt-runtime torch   # before ONNX

The prompt path (box prompts, clicks) runs on ONNX Runtime by default, as in the ML backend and
pre-labelling (exported into a temp dir first); ``--prompt-runtime torch`` measures PyTorch.

Photos are the open-shelves sample (640 px) when present, else synthetic 640 px images.
Timings on a shared machine are noisy: run it when the machine is quiet and compare medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def photos(n: int, size: int) -> list[Image.Image]:
    from bookcounter.images import read_image
    from bookcounter.settings import get_settings

    found = sorted((get_settings().sample_dir / "train").glob("*.jpg"))[:n]
    out = [read_image(p) for p in found]
    rng = np.random.default_rng(0)
    while len(out) < n:
        out.append(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
    return [im if max(im.size) == size else im.resize((size, size)) for im in out]


def boxes_for(image: Image.Image, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` spine-like boxes (narrow, tall) inside the photo."""
    w, h = image.size
    x0 = rng.uniform(0, w * 0.9, n)
    y0 = rng.uniform(0, h * 0.5, n)
    return np.stack(
        [x0, y0, np.minimum(x0 + rng.uniform(15, 60, n), w), np.minimum(y0 + rng.uniform(100, 300, n), h)], 1
    )


def run(
    model_type: str, n_photos: int, n_boxes: int, n_clicks: int, size: int, runtime: str, onnx_threads: int
) -> None:
    from annotator.sam.build_sam import build_sam
    from annotator.sam.onnx_decoder import load_onnx_decoder
    from annotator.sam.segmenter import Segmenter

    rng = np.random.default_rng(1)
    images = photos(n_photos, size)
    prompts = [boxes_for(im, n_boxes, rng) for im in images]
    sam = build_sam(model_type)
    decoder = None
    if runtime == "onnx":
        with tempfile.TemporaryDirectory() as tmp:  # the session keeps the model in memory
            decoder = load_onnx_decoder(sam, Path(tmp), f"{model_type}-random", onnx_threads)
        if decoder is None:
            raise SystemExit("ONNX export failed (see the log line above); --prompt-runtime torch measures PyTorch")

    # one after the other: encoder, then decoder, per photo (no cache: every photo is new)
    seg = Segmenter(sam, model_type, "random", cache=None, memory_items=n_photos, onnx_decoder=decoder)
    seg.predict_boxes(seg.embed(images[0], "warmup"), prompts[0])  # first-call allocations
    enc, dec, enc_cpu, dec_cpu = [], [], [], []
    for i, (im, bx) in enumerate(zip(images, prompts)):
        t0, c0 = time.perf_counter(), time.process_time()
        emb = seg.embed(im, f"seq{i}")
        t1, c1 = time.perf_counter(), time.process_time()
        masks, _ = seg.predict_boxes(emb, bx)
        t2, c2 = time.perf_counter(), time.process_time()
        assert masks.shape == (n_boxes, im.height, im.width)
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        enc_cpu.append(c1 - c0)
        dec_cpu.append(c2 - c1)

    # pipelined: a background worker pre-encodes all photos while this thread decodes
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, im in enumerate(images):
            paths.append(Path(tmp) / f"{i}.png")
            im.save(paths[-1])
        seg = Segmenter(sam, model_type, "random", cache=None, memory_items=n_photos, onnx_decoder=decoder)
        t0 = time.perf_counter()
        worker = ThreadPoolExecutor(max_workers=1)
        done = worker.submit(seg.pre_encode, [(f"pipe{i}", p) for i, p in enumerate(paths)])
        for i, (im, bx) in enumerate(zip(images, prompts)):
            while not seg.is_cached(f"pipe{i}"):
                time.sleep(0.005)
            seg.predict_boxes(seg.embed(im, f"pipe{i}"), bx)
        done.result()
        worker.shutdown()
        pipelined = time.perf_counter() - t0

    # clicks on a cached embedding (the ML backend's hot path)
    emb = seg.embed(images[0], "pipe0")
    w, h = images[0].size
    clicks = []
    for _ in range(n_clicks):
        pts = rng.uniform([0, 0], [w, h], (int(rng.integers(1, 4)), 2))
        t0 = time.perf_counter()
        seg.predict_points(emb, pts, np.r_[1, np.zeros(len(pts) - 1, int)])
        clicks.append(time.perf_counter() - t0)

    e, d = statistics.median(enc), statistics.median(dec)
    ec, dc = statistics.median(enc_cpu), statistics.median(dec_cpu)
    p50, p95 = np.percentile(clicks, [50, 95]) * 1000
    prompt_path = f"ONNX Runtime, {onnx_threads} threads" if decoder is not None else "PyTorch"
    print(
        f"{model_type} ({'bf16' if seg.bf16 else 'fp32'} encoder; prompt path on {prompt_path}): "
        f"encoder {e:.2f} s/photo ({ec:.2f} CPU-s), "
        f"decoder {d:.2f} s/photo ({dc:.2f} CPU-s; {n_boxes} boxes in batches of {seg.decoder_batch}) | "
        f"sequential {60 / (e + d):.1f} photos/min, pipelined {60 * n_photos / pipelined:.1f} photos/min "
        f"({n_photos} photos) | cached click p50 {p50:.0f} ms, p95 {p95:.0f} ms ({n_clicks} clicks)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-types", default="vit_t,vit_b")
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--boxes", type=int, default=20)
    ap.add_argument("--clicks", type=int, default=30)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument(
        "--prompt-runtime", choices=("onnx", "torch"), default="onnx", help="SAM prompt path (default onnx)"
    )
    ap.add_argument("--onnx-threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px photos, random-init weights; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times grow with it; CPU-s much less)"
    )
    for model_type in args.model_types.split(","):
        run(model_type, args.photos, args.boxes, args.clicks, args.size, args.prompt_runtime, args.onnx_threads)


if __name__ == "__main__":
    main()
