"""Which hypercolumn layers should DAVIS label propagation read? Chosen on davis-train, never on davis/.

Label propagation (``cpfs.evaluation.davis.davis_protocol``, the evaluation's protocol and official measures)
with hypercolumns of several layer subsets, for a trained checkpoint and the random-init network of its
training seed (both with BatchNorm statistics recalibrated on the same training crops, as the evaluation does),
beside the colour-only (Lab) baseline, on held-out *training* sequences of DAVIS (``--davis``, default
``../shared/data/davis-train`` with ``--sequences``: sequences the checkpoint did not train on). The subset that
wins there is the one to use on the evaluation sequences; choosing it on ``davis/`` would make that score mean
nothing.

    .venv/bin/python bench/davis_layers.py --checkpoint RUN/checkpoints/best.pt --store STORE \\
        --sequences soapbox car-roundabout --size 160

    # the model's own embedding beside trunk layers (cpfs.evaluation.features.network_features):
    .venv/bin/python bench/davis_layers.py --checkpoint RUN/checkpoints/best.pt --store STORE \
        --sequences soapbox car-roundabout --size 160 --max-frames 40 \
        --subsets embedding+conv1 conv1+conv2+conv3+conv4+conv5 embedding+conv1+conv2

Prints one row per layer subset: J&F of the trained network, of random init, and their difference. The
default features of DAVIS label propagation and of training's validation (``cpfs.config.base.PROPAGATION_LAYERS``,
the embedding beside conv1) were chosen with it: on the three ``cpu-hour`` seeds it was the best subset tried on
both counts, the trained network's J&F and its gain over random init (docs/benchmarks.md, "Which features for DAVIS
label propagation").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cpfs.training.checkpoint import load_model
from cpfs.config import StoreConfig
from cpfs.training.data import FlowPairDataset, complete_videos, plan_split
from cpfs.evaluation import baselines
from cpfs.evaluation.davis import davis_protocol
from cpfs.evaluation.features import network_features
from cpfs.training.train import _seed_everything, build_model
from cpfs.config import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SUBSETS = (("conv1",), ("conv1", "conv2"), ("conv1", "conv2", "conv3"), ("conv2", "conv3"),
           ("conv1", "conv2", "conv3", "conv4", "conv5"), ("conv2", "conv3", "conv4", "conv5"), ("conv3", "conv4", "conv5"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--store", required=True, help="the store the checkpoint trained on (BN recalibration crops)")
    ap.add_argument("--davis", default=str(SHARED / "davis-train"))
    ap.add_argument("--sequences", nargs="+", required=True)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--report", action="store_true",
                    help="allow the evaluation set (davis/): to report settings already chosen on davis-train, e.g. "
                         "random init with its own best layers beside the evaluation's paired comparison")
    ap.add_argument("--networks", nargs="+", default=["cpfs", "random-init"], choices=["cpfs", "random-init"])
    ap.add_argument("--no-colour", action="store_true", help="skip the colour baseline")
    ap.add_argument("--subsets", nargs="+", default=None,
                    help="layer subsets to try, each as conv1+conv2 (default: the seven above); 'embedding' is the "
                         "model's own unit embedding (the head's output), 'embedding+conv1+...' that beside hypercolumns")
    args = ap.parse_args()
    if Path(args.davis).resolve() == (SHARED / "davis").resolve() and not args.report:
        raise SystemExit("bench/davis_layers.py chooses settings: never on davis/, the evaluation set (--report: "
                         "score there what was already chosen on davis-train, to report it)")
    if args.report:
        print("--report: scores to report, not to choose (the defaults were chosen on davis-train)", flush=True)
    torch.set_num_threads(1)
    model, info = load_model(args.checkpoint)
    cfg = TrainConfig.model_validate(info.train_config)
    store_cfg = StoreConfig(path=args.store)
    split = plan_split(complete_videos(store_cfg), cfg.holdout_fraction, cfg.seed, cfg.heldout_videos)
    ds = FlowPairDataset(store_cfg, list(split.train), crop=cfg.crop, augment=None, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randint(len(ds), (64,), generator=gen).tolist()
    crops = list(torch.stack([ds[i][0] for i in idx]).split(16))
    _seed_everything(cfg.seed)
    random_same = build_model(cfg)
    nets = {name: net for name, net in {"cpfs": model, "random-init": random_same}.items() if name in args.networks}
    for net in nets.values():
        baselines.recalibrate_batchnorm(net, crops, cfg.points_per_image, cfg.seed)
        net.eval()
    rows = []
    t0 = time.perf_counter()
    colour = None
    if not args.no_colour:
        colour = davis_protocol(baselines.colour_features("lab", 4), args.davis, args.sequences, size=args.size,
                                max_frames=args.max_frames)
        print(f"colour-lab: J&F {colour['JF_mean']:.4f} (J {colour['J_mean']:.4f}, F {colour['F_mean']:.4f})", flush=True)
    subsets = [tuple(s.split("+")) for s in args.subsets] if args.subsets else SUBSETS
    for layers in subsets:
        res = {name: davis_protocol(network_features(net, layers, stride=4, name=name), args.davis, args.sequences, size=args.size,
                                    max_frames=args.max_frames)
               for name, net in nets.items()}
        row = {"layers": list(layers), **{f"{n} J&F": r["JF_mean"] for n, r in res.items()},
               "per_sequence": {n: {k: v["J&F"] for k, v in r["sequences"].items()} for n, r in res.items()}}
        if len(res) == 2:
            row["difference"] = res["cpfs"]["JF_mean"] - res["random-init"]["JF_mean"]
        rows.append(row)
        scores = "  ".join(f"{n.split('-')[0]} {r['JF_mean']:.4f}" for n, r in res.items())
        diff = f"  diff {row['difference']:+.4f}" if "difference" in row else ""
        print(f"{'+'.join(layers):32s} {scores}{diff}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "colour": colour and colour["JF_mean"], "rows": rows},
                                             indent=1))


if __name__ == "__main__":
    main()
