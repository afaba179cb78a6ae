"""DAVIS contour accuracy F: the earlier measure against the official one, on the same masks.

Earlier (commit 65f4859's ``cpfs/evaluation/davis.py``, read from git history, not copied): boundaries
``mask & ~erode(mask, 3x3)``, matched within OpenCV's ``MORPH_ELLIPSE`` of side 2r+1. Official
(``cpfs.evaluation.davis_measures``, ported from davis2017-evaluation): ``seg2bmap`` boundaries, matched within
skimage's ``disk(r)``. Both use r = ceil(0.008 * diagonal), 8 px at 854 x 480; the ellipse is the larger
(213 pixels against the disk's 197).

    .venv/bin/python bench/davis_f_tolerance.py synthetic [--n 40] [--seed 0]
        40 random ellipses at 480 x 854 and a perturbed copy of each (centre, axes, angle): old F, new F.
    .venv/bin/python bench/davis_f_tolerance.py network [--sequences 4] [--frames 20] [--size 240] [--threads 2]
        label propagation with a random-init half-width network (seed 0, hypercolumns, stride 4) on the first
        ``--frames`` frames of the shared DAVIS sequences (../shared/data/davis; evaluation only, nothing is
        fitted): J, old F and new F per sequence over frames 1..frames-1.
    .venv/bin/python bench/davis_f_tolerance.py first-implementation
        the constants of tests/cpfs/evaluation/test_davis.py: the first implementation's (ac4bc53) masks on
        blackswan and car-shadow, 8 frames at 96 px, scored with the official J and F (one torch thread).

Measured (2 shared cores): see docs/benchmarks.md, "DAVIS contour accuracy F".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DAVIS = REPO.parent / "shared" / "data" / "davis"
SEQUENCES = ("blackswan", "car-shadow", "dog", "libby")
OLD_MEASURE_COMMIT = "65f4859"  # the last commit whose davis.py scores F with the 3x3-erosion boundary and the ellipse
FIRST_IMPLEMENTATION = "ac4bc5323b3f38cf9708d40e0879b2175b1eadc6"  # as bench/davis_speed.py
SHAPE = (480, 854)  # DAVIS 480p


def davis_module_at(commit: str) -> types.ModuleType:
    """``cpfs/evaluation/davis.py`` as it was at ``commit`` (needs a git checkout)."""
    src = subprocess.run(["git", "show", f"{commit}:cpfs/evaluation/davis.py"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    name = f"davis_at_{commit[:7]}"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up by name
    exec(compile(src, f"{commit[:7]}:cpfs/evaluation/davis.py", "exec"), module.__dict__)
    return module


def random_ellipse(rng: np.random.Generator) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Centre (x, y), half-axes and angle (degrees) of an ellipse well inside a 480 x 854 frame."""
    axes = (float(rng.uniform(30, 180)), float(rng.uniform(30, 150)))
    centre = (float(rng.uniform(200, SHAPE[1] - 200)), float(rng.uniform(160, SHAPE[0] - 160)))
    return centre, axes, float(rng.uniform(0, 180))


def draw(centre: tuple[float, float], axes: tuple[float, float], angle: float) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    shift = 4  # cv2 draws at 1/16 px with shift=4
    cv2.ellipse(mask, (round(centre[0] * 16), round(centre[1] * 16)), (round(axes[0] * 16), round(axes[1] * 16)),
                angle, 0, 360, 1, thickness=-1, shift=shift)
    return mask.astype(bool)


def synthetic(n: int, seed: int) -> None:
    from cpfs.evaluation.davis_measures import contour_accuracy_f, region_similarity_j

    old = davis_module_at(OLD_MEASURE_COMMIT)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        centre, axes, angle = random_ellipse(rng)
        gt = draw(centre, axes, angle)
        moved = (centre[0] + rng.normal(0, 6), centre[1] + rng.normal(0, 6))
        scaled = (axes[0] * (1 + rng.normal(0, 0.05)), axes[1] * (1 + rng.normal(0, 0.05)))
        pred = draw(moved, scaled, angle + rng.normal(0, 8))
        rows.append((region_similarity_j(pred, gt), old.contour_accuracy_f(pred, gt), contour_accuracy_f(pred, gt)))
    j, f_old, f_new = (np.array(c) for c in zip(*rows))
    d = f_old - f_new
    print(f"{n} ellipse pairs at {SHAPE[1]}x{SHAPE[0]} (seed {seed}): J mean {j.mean():.4f}")
    print(f"  F old {f_old.mean():.4f}  F new {f_new.mean():.4f}  old - new: mean {d.mean():.4f}, "
          f"max {d.max():.4f}, min {d.min():.4f}  (old > new in {int((d > 0).sum())} of {n})")


def network(n_sequences: int, frames: int, size: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from cpfs.evaluation.baselines import random_init_model
    from cpfs.evaluation.datasets import read_davis_sequence
    from cpfs.evaluation.davis import iter_segment_sequence
    from cpfs.evaluation.davis_measures import contour_accuracy_f, object_ids, region_similarity_j
    from cpfs.evaluation.features import hypercolumn_features

    old = davis_module_at(OLD_MEASURE_COMMIT)
    fn = hypercolumn_features(random_init_model(seed=0, width=0.5).trunk, stride=4, name="random-init")
    print(f"random-init half-width hypercolumns (seed 0), {size} px, frames 1..{frames - 1} scored")
    print(f"{'sequence':12} {'J':>7} {'F old':>7} {'F new':>7} {'old-new':>8} {'s':>6}")
    means = []
    for name in SEQUENCES[:n_sequences]:
        t0 = time.perf_counter()
        seq = read_davis_sequence(DAVIS, name)
        js, fo, fn_ = [], [], []
        objects: list[int] = []
        with torch.no_grad():
            for t, pred, gt in iter_segment_sequence(fn, seq.frame_paths[:frames], seq.mask_paths[:frames], size):
                if t == 0:
                    objects = object_ids(gt)
                    continue
                for k in objects:
                    js.append(region_similarity_j(pred == k, gt == k))
                    fo.append(old.contour_accuracy_f(pred == k, gt == k))
                    fn_.append(contour_accuracy_f(pred == k, gt == k))
        row = (float(np.mean(js)), float(np.mean(fo)), float(np.mean(fn_)))
        means.append(row)
        print(f"{name:12} {row[0]:7.4f} {row[1]:7.4f} {row[2]:7.4f} {row[1] - row[2]:8.4f} {time.perf_counter() - t0:6.1f}",
              flush=True)
    j, f_old, f_new = np.mean(means, axis=0)
    print(f"{'mean':12} {j:7.4f} {f_old:7.4f} {f_new:7.4f} {f_old - f_new:8.4f}")


def first_implementation() -> None:
    import torch

    torch.set_num_threads(1)
    from cpfs.evaluation.baselines import colour_features, random_init_model
    from cpfs.evaluation.datasets import read_davis_sequence
    from cpfs.evaluation.davis_measures import contour_accuracy_f, object_ids, region_similarity_j, sequence_scores
    from cpfs.evaluation.features import hypercolumn_features

    first = davis_module_at(FIRST_IMPLEMENTATION)
    features = {"hypercolumns": hypercolumn_features(random_init_model(seed=0, width=0.5).trunk, stride=4, name="random-init"),
                "colour-lab": colour_features("lab", stride=4)}
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for kind, fn in features.items():
        out[kind] = {}
        for name in ("blackswan", "car-shadow"):
            seq = read_davis_sequence(DAVIS, name)
            pred, gt = first.segment_sequence(fn, seq.frame_paths[:8], seq.mask_paths[:8], 96)
            objects = object_ids(gt[0])
            # Frames 1..7, as the protocol with max_frames=8 scores them (the sequences are longer).
            j = [[region_similarity_j(pred[t] == k, gt[t] == k) for t in range(1, 8)] for k in objects]
            f = [[contour_accuracy_f(pred[t] == k, gt[t] == k) for t in range(1, 8)] for k in objects]
            s = sequence_scores(np.array(j), np.array(f), objects)
            out[kind][name] = (s["J"], s["F"])
    print(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--n", type=int, default=40)
    s.add_argument("--seed", type=int, default=0)
    n = sub.add_parser("network")
    n.add_argument("--sequences", type=int, default=4)
    n.add_argument("--frames", type=int, default=20)
    n.add_argument("--size", type=int, default=240)
    n.add_argument("--threads", type=int, default=2)
    sub.add_parser("first-implementation")
    args = p.parse_args()
    if args.what == "synthetic":
        synthetic(args.n, args.seed)
    elif args.what == "network":
        network(args.sequences, args.frames, args.size, args.threads)
    else:
        first_implementation()


if __name__ == "__main__":
    main()
