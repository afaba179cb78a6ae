"""The DAVIS foreground/background probe on the shared data: random init (half-width AlexNet, BN recalibrated) and
the trivial baselines, fitted on ``davis-train`` and scored on ``davis``; mIoU per layer and wall time.

    python bench/foreground.py [--step 15] [--size 128] [--seeds 3] [--threads 2]

Settings not given are ``EvalConfig``'s defaults (the protocol's). The random-init network's BatchNorm statistics
are recalibrated by the evaluation's own function (``baselines.recalibrate_batchnorm``, ``bn_batches`` x
``bn_batch_size`` crops, 256 pixels each) on seeded 112-px crops of ``davis-train`` frames (the fit set, never
``davis``), since no store is needed here; ``cpfs evaluate`` uses its store's training crops instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cpfs.config import EvalConfig
from cpfs.evaluation import baselines
from cpfs.evaluation.datasets import load_image
from cpfs.evaluation.features import hypercolumn_features
from cpfs.evaluation.foreground import foreground_probe, foreground_split, layer_channels

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def davis_crops(frames, crop: int, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Seeded random ``crop``-px crops of frames resized to short side 240 (the recalibration batches)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        batch = []
        for i in rng.choice(len(frames), batch_size):
            img = load_image(frames[int(i)], (240, 427))
            y, x = int(rng.integers(0, img.shape[1] - crop)), int(rng.integers(0, img.shape[2] - crop))
            batch.append(torch.from_numpy(img[:, y : y + crop, x : x + crop]))
        out.append(torch.stack(batch))
    return out


def main() -> None:
    defaults = EvalConfig(checkpoint="-")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fit", default=str(DATA / "davis-train"))
    ap.add_argument("--test", default=str(DATA / "davis"))
    ap.add_argument("--step", type=int, default=defaults.foreground_frame_step)
    ap.add_argument("--size", type=int, default=defaults.foreground_size)
    ap.add_argument("--seeds", type=int, default=defaults.seeds)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = defaults
    fit, test = foreground_split(args.fit, args.test, step=args.step)
    print(f"fit {len(fit)} frames of {args.fit}, test {len(test)} frames of {args.test}; step {args.step}, "
          f"short side {args.size}, seeds {args.seeds}, {cfg.pixels_per_image} px/frame, L-BFGS {cfg.probe_max_iter}, "
          f"stride {cfg.feature_stride}, threads {args.threads}")
    t0 = time.perf_counter()
    model = baselines.random_init_model(seed=0, width=0.5)
    baselines.recalibrate_batchnorm(model, davis_crops(fit.image_paths, 112, cfg.bn_batches, cfg.bn_batch_size, 0), 256, 0)
    print(f"random init + BN recalibration: {time.perf_counter() - t0:.1f} s")
    sources = [(hypercolumn_features(model.trunk, cfg.layers, stride=cfg.feature_stride, name="random-init seed 0"),
                layer_channels(model.trunk.channels, cfg.layers)),
               (baselines.colour_features("lab", cfg.feature_stride), None),
               (baselines.position_features(cfg.feature_stride), None)]
    kw = dict(size=args.size, pixels_per_image=cfg.pixels_per_image, seeds=tuple(range(args.seeds)), max_iter=cfg.probe_max_iter)
    print(f"{'source':<20} {'mIoU':>13} {'IoU_fg':>13} " + " ".join(f"{'mIoU ' + l:>11}" for l in cfg.layers) + "  wall s   CPU s")
    for fn, channels in sources:
        t0, c0 = time.perf_counter(), time.process_time()
        res = foreground_probe(fn, fit, test, channels=channels, **kw)
        s = res["summary"]
        cells = " ".join(f"{s[f'mIoU_{l}']['mean']:>11.3f}" if f"mIoU_{l}" in s else f"{'-':>11}" for l in cfg.layers)
        print(f"{fn.name:<20} {s['mIoU']['mean']:.3f} ± {s['mIoU']['std']:.3f} {s['IoU_fg']['mean']:.3f} ± "
              f"{s['IoU_fg']['std']:.3f} {cells}  {time.perf_counter() - t0:6.1f}  {time.process_time() - c0:6.1f}", flush=True)
    print(f"foreground fraction of the test pixels: {res['foreground_fraction']:.3f} "
          f"(all background: mIoU {(1 - res['foreground_fraction']) / 2:.3f})")


if __name__ == "__main__":
    main()
