"""The DAVIS foreground probe as a measure that may choose settings: fitted on the ``davis-train`` sequences
that are not held out and scored on the held-out ones, never on ``davis/`` (issue 18, item 3). Not run by CI.

For each checkpoint: its network and the random-init network of its training seed (same architecture), both
with BatchNorm statistics recalibrated on the same seeded crops of the fit frames (as ``bench/foreground.py``);
the probe of the evaluation (``cpfs.evaluation.foreground.foreground_probe``, ``EvalConfig``'s settings:
hypercolumns of conv1..conv5, every ``--step``-th frame, 512 pixels a frame, 50 L-BFGS iterations, classifier
seeds 0..``--seeds``-1) on both; the paired difference of mIoU with its bootstrap CI over test frames
(``foreground_paired``, the evaluation's).

    .venv/bin/python bench/foreground_validation.py --heldout soapbox car-roundabout \\
        --checkpoints RUN0/checkpoints/best.pt RUN1/checkpoints/best.pt ...
    # the probe on other features, e.g. the model's own embedding beside the trunk's conv1..conv5:
    ... --layers embedding conv1 conv2 conv3 conv4 conv5

Two held-out sequences give few test frames (about 12 at step 15): read the CI, and compare runs of several
training seeds rather than one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cpfs.config import EvalConfig
from cpfs.evaluation import baselines
from cpfs.evaluation.features import network_features
from cpfs.evaluation.foreground import foreground_probe, foreground_split
from cpfs.evaluation.protocols.foreground import foreground_paired
from cpfs.training.checkpoint import load_model

from foreground import davis_crops  # bench/foreground.py, beside this script (run as a script: bench/ is on the path)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def split_roots(root: Path, heldout: list[str], into: Path) -> tuple[Path, Path]:
    """Two DAVIS-layout folders of links into ``root``: every sequence but ``heldout`` (fit), and ``heldout`` (test)."""
    names = sorted(p.name for p in (root / "JPEGImages" / "480p").iterdir() if p.is_dir())
    missing = sorted(set(heldout) - set(names))
    if missing:
        raise SystemExit(f"{root}: no sequence(s) {missing}")
    out = []
    for part, seqs in (("fit", [n for n in names if n not in heldout]), ("test", heldout)):
        for kind in ("JPEGImages", "Annotations"):
            (into / part / kind / "480p").mkdir(parents=True)
            for s in seqs:
                (into / part / kind / "480p" / s).symlink_to((root / kind / "480p" / s).resolve())
        out.append(into / part)
    return out[0], out[1]


def main() -> None:
    cfg = EvalConfig(checkpoint="-")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--davis-train", default=str(DATA / "davis-train"))
    ap.add_argument("--heldout", nargs="+", default=["soapbox", "car-roundabout"])
    ap.add_argument("--step", type=int, default=cfg.foreground_frame_step)
    ap.add_argument("--seeds", type=int, default=cfg.seeds)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write every result as JSON here")
    ap.add_argument("--layers", nargs="+", default=cfg.layers,
                    help="the probe's features: trunk layers and/or 'embedding' (the model's own; network_features)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seeds = tuple(range(a.seeds))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fit_root, test_root = split_roots(Path(a.davis_train), a.heldout, Path(tmp))
        fit, test = foreground_split(fit_root, test_root, step=a.step)
        print(f"fit {len(fit)} frames (davis-train without {', '.join(a.heldout)}), test {len(test)} frames; "
              f"step {a.step}, classifier seeds {a.seeds}", flush=True)
        crops = davis_crops(fit.image_paths, 112, cfg.bn_batches, cfg.bn_batch_size, 0)
        kw = dict(size=cfg.foreground_size, pixels_per_image=cfg.pixels_per_image, seeds=seeds, max_iter=cfg.probe_max_iter)
        randoms: dict[int, dict] = {}
        for path in a.checkpoints:
            t0 = time.perf_counter()
            model, record = load_model(path)
            seed = int(record.train_config.get("seed", 0))
            baselines.recalibrate_batchnorm(model, crops, 256, 0)
            trained = foreground_probe(network_features(model, a.layers, stride=cfg.feature_stride, name="cpfs"),
                                       fit, test, **kw)
            if seed not in randoms:
                rnd = baselines.random_init_model(model.config, seed=seed)
                baselines.recalibrate_batchnorm(rnd, crops, 256, 0)
                randoms[seed] = foreground_probe(network_features(rnd, a.layers, stride=cfg.feature_stride,
                                                                  name="random-init"), fit, test, **kw)
            p = foreground_paired(trained, randoms[seed], seed, cfg.ci_level)
            t, r = trained["summary"]["mIoU"]["mean"], randoms[seed]["summary"]["mIoU"]["mean"]
            rows.append({"checkpoint": path, "step": record.step, "seed": seed, "trained": t, "random": r, "paired": p})
            print(f"{path} (step {record.step}, seed {seed}): mIoU {t:.3f} against random init {r:.3f}: "
                  f"{p['mean']:+.3f} ({p['ci_low']:+.3f} .. {p['ci_high']:+.3f}); {time.perf_counter() - t0:.0f} s",
                  flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
