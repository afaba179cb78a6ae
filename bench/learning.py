"""Does CPFS training beat random init on held-out video? Paired, with bootstrap confidence intervals
(project issue 10). Not run by CI: it trains for CPU minutes to an hour.

1. Store: ``--store`` must hold the videos (``--build`` ingests the three sample videos, every video of
   ``../shared/data/videos`` and every sequence of ``../shared/data/davis-train``, DIS flow, short side
   ``--short-side``; never ``../shared/data/davis``, the DAVIS evaluation). Complete videos are skipped.
2. Split: ``--heldout`` names held-out videos by file or folder name (e.g. ``cup.mp4 soapbox``); every other
   video trains.
3. Training: ``cpfs.training.train.train`` with the preset ``--preset`` and ``--set key=json`` overrides, in segments of
   ``--eval-every`` steps (``stop_after`` + exact resume).
4. Evaluation after every segment, with the evaluation library (``cpfs.evaluation.flow_alignment``): up to
   ``--pairs`` pairs per held-out video in which at least ``--min-moving`` of the pixels move on their own
   (``cpfs.motion``), ``--points`` pixels each, pixel seeds 0..``--seeds``-1. Sources: the trained network,
   the random-init network of the *same* initialisation seed (the weights the run started from), both with
   BatchNorm statistics recalibrated on the same training crops; at the end also random init of other seeds,
   position only and the flow oracle. The headline is the paired difference trained - random (same seed) of
   centered alignment with a 95 % bootstrap interval over pairs (stratified by video) and pixel seeds
   (``cpfs.evaluation.stats.paired_bootstrap``), overall and per video.

5. Optionally (``--validate-davis``, ``--validate-sequences``): validation during training on held-out
   ``davis-train`` sequences (``cpfs.training.validation``), and the final measurements of the best validated checkpoint
   (``final`` in the JSON) rather than the last; ``--davis`` with ``--davis-sequences`` scores DAVIS label
   propagation at the end (``--davis-colour``: the colour-only baseline beside it).

    .venv/bin/python bench/learning.py --store runs/learn/store.zarr --build --out runs/learn/cpu-hour \\
        --preset cpu-hour --heldout cup.mp4 soapbox car-roundabout --eval-every 500 \\
        --validate-davis ../shared/data/davis-train --validate-sequences soapbox car-roundabout --validate-every 500

Writes ``learning.json`` (every number, the settings) to ``--out`` and prints a table per evaluation.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cpfs.config import DecodeConfig, FlowConfig, IngestConfig, StoreConfig
from cpfs.training.data import FlowPairDataset, complete_videos, plan_split
from cpfs.evaluation import baselines
from cpfs.evaluation.davis import davis_protocol
from cpfs.evaluation.features import hypercolumn_features, model_embedding_features
from cpfs.evaluation.flow_alignment import flow_alignment
from cpfs.evaluation.baselines import recalibrate_batchnorm
from cpfs.evaluation.context import memoize_features
from cpfs.evaluation.heldout import PairSubset
from cpfs.evaluation.protocols.davis import davis_paired
from cpfs.evaluation.stats import paired_bootstrap, per_group_bootstrap, verdict
from cpfs.ingest.steps import ingest_video
from cpfs.training.model import CPFSModel
from cpfs.training.checkpoint import latest_checkpoint, load_checkpoint
from cpfs.training.run_folder import RunFolder
from cpfs.training.train import _seed_everything, build_model, train
from cpfs.config import TrainConfig
from cpfs.ingest.discovery import discover, sample_videos
from storage import VideoStore

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_store(store_cfg: StoreConfig, short_side: int) -> None:
    """Ingest the sample videos, ../shared/data/videos and ../shared/data/davis-train (never davis/)."""
    inputs = list(sample_videos()) + sorted((SHARED / "videos").iterdir())
    inputs += sorted(p for p in (SHARED / "davis-train" / "JPEGImages" / "480p").iterdir() if p.is_dir())
    sources, errors = discover(inputs)
    for e in errors:
        print(f"  cannot read: {e}", flush=True)
    cfg = IngestConfig(store=store_cfg, decode=DecodeConfig(short_side=short_side), flow=FlowConfig(backend="opencv-dis"))
    for src in sources:
        r = ingest_video(src, cfg)
        print(f"  {r.status:8s} {Path(src.path).name:24s} {r.n_frames:4d} frames {r.error or ''}", flush=True)


def video_names(store: VideoStore) -> dict[str, str]:
    """``{file or folder name: video id}`` of the complete videos."""
    return {Path(store.video_attrs(v)["source_path"]).name: v for v in store.complete_ids()}


def bn_crops(store_cfg: StoreConfig, train_ranges, crop: int, n: int = 64, batch: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """Centre crops of ``n`` seeded training pairs, in batches: the BatchNorm recalibration set of every source."""
    ds = FlowPairDataset(store_cfg, list(train_ranges), crop=crop, augment=None, seed=seed)
    idx = np.random.default_rng([seed, 7919]).choice(len(ds), size=n, replace=len(ds) < n)
    return list(torch.stack([ds[int(i)][0] for i in idx]).split(batch))


def scores(model: CPFSModel, name: str, heldout: PairSubset, args) -> list[dict]:
    fn = memoize_features(model_embedding_features(model, stride=args.stride, name=name))
    return [flow_alignment(fn, heldout, heldout.video_ids, pairs_per_video=args.pairs, points=args.points, seed=s)
            for s in range(args.seeds)]


def matrix(per_seed: list[dict], metric: str = "alignment_centered") -> tuple[np.ndarray, list[str]]:
    """``(n_pairs, n_seeds)`` scores and the video id of each row."""
    cols = [np.asarray(r["per_pair"][metric]) for r in per_seed]
    return np.stack(cols, axis=1), list(per_seed[0]["per_pair"]["video_id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--build", action="store_true", help="ingest the training and held-out videos first")
    ap.add_argument("--short-side", type=int, default=160)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="cpu-hour")
    ap.add_argument("--set", action="append", default=[], help="TrainConfig override key=json (nested: a.b=json)")
    ap.add_argument("--heldout", nargs="+", default=["cup.mp4", "soapbox", "car-roundabout"])
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--points", type=int, default=512)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--min-moving", type=float, default=0.1)
    ap.add_argument("--motion-floor", type=float, default=0.01, help="per-video threshold floor (EvalConfig.motion_floor)")
    ap.add_argument("--random-seeds", type=int, default=3, help="random-init networks of other seeds, at the end")
    ap.add_argument("--davis", default=None, help="DAVIS root for the J&F headline at the end (../shared/data/davis)")
    ap.add_argument("--davis-sequences", nargs="+", default=None,
                    help="DAVIS sequences to score (None: every one under --davis); with davis-train, the held-out ones")
    ap.add_argument("--davis-size", type=int, default=240)
    ap.add_argument("--davis-frames", type=int, default=None, help="first frames per sequence (None: all)")
    ap.add_argument("--davis-colour", action="store_true", help="also the colour-only (Lab) baseline on DAVIS")
    ap.add_argument("--validate-davis", default=None,
                    help="DAVIS-layout root to validate on during training (TrainConfig.validation; never davis/)")
    ap.add_argument("--validate-sequences", nargs="+", default=None, help="its held-out sequences (None: all not trained on)")
    ap.add_argument("--validate-every", type=int, default=None, help="validate every this many steps (None: at checkpoints)")
    ap.add_argument("--only-final", action="store_true", help="no training: evaluate the run's latest checkpoint")
    args = ap.parse_args()

    store_cfg = StoreConfig(path=args.store)
    if args.build:
        build_store(store_cfg, args.short_side)
    store = VideoStore.open(store_cfg, create=False)
    names = video_names(store)
    missing = [h for h in args.heldout if h not in names]
    if missing:
        raise SystemExit(f"held-out videos {missing} are not in {args.store} (have: {sorted(names)})")
    overrides: dict = {"heldout_videos": [names[h] for h in args.heldout]}
    for item in args.set:
        key, _, value = item.partition("=")
        node = overrides
        *path, leaf = key.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[leaf] = json.loads(value)
    if args.validate_davis:
        # Merged with any --set validation.*=... (e.g. validation.size=240).
        overrides["validation"] = {**overrides.get("validation", {}), "davis": args.validate_davis,
                                   "sequences": args.validate_sequences, "every": args.validate_every}
    cfg = TrainConfig.from_preset(args.preset, **overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = plan_split(complete_videos(store_cfg), cfg.holdout_fraction, cfg.seed, cfg.heldout_videos)
    heldout = PairSubset.from_ranges(store, split.heldout, min_moving_fraction=args.min_moving,
                                     pairs_per_video=args.pairs, motion_floor=min(args.motion_floor, args.min_moving))
    ids_to_name = {v: k for k, v in names.items()}
    crops = bn_crops(store_cfg, split.train, cfg.crop, seed=cfg.seed)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())

    # The random-init network of the run's own seed: exactly the weights training starts from (train() seeds
    # everything with cfg.seed and then builds the model), BN recalibrated like the trained one.
    _seed_everything(cfg.seed)
    random_same = recalibrate_batchnorm(build_model(cfg), crops, cfg.points_per_image, cfg.seed)
    base = scores(random_same, "random-init", heldout, args)
    base_m, groups = matrix(base)

    curve = []
    t_train = 0.0
    step = 0
    while step < cfg.steps:
        t0 = time.perf_counter()
        if args.only_final:
            step = int(latest_checkpoint(out / "run").stem.split("-")[1])
        else:
            res = train(cfg, store_cfg, out / "run", resume=True, stop_after=args.eval_every)
            t_train += time.perf_counter() - t0
            step = res.steps
        model = build_model(cfg)
        load_checkpoint(latest_checkpoint(out / "run"), model)
        recalibrate_batchnorm(model, crops, cfg.points_per_image, cfg.seed)
        trained = scores(model, "cpfs", heldout, args)
        m, _ = matrix(trained)
        diff = paired_bootstrap(m - base_m, groups)
        per = {ids_to_name[k]: v for k, v in per_group_bootstrap(m - base_m, groups).items()}
        last = RunFolder(out / "run").read_metrics()[-1]
        row = {"step": step, "train_seconds": round(t_train, 1), "cpfs": float(m.mean()), "random_same_seed": float(base_m.mean()),
               "diff": diff, "per_video": per, "train_alignment_last": last.get("alignment"), "loss_last": last.get("loss")}
        curve.append(row)
        print(f"step {step:5d} ({t_train / 60:.1f} min): cpfs {m.mean():.3f}  random(same seed) {base_m.mean():.3f}  "
              f"diff {diff['mean']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]  "
              + "  ".join(f"{k} {v['mean']:+.3f} [{v['ci_low']:+.3f},{v['ci_high']:+.3f}]" for k, v in per.items()), flush=True)
        if args.only_final:
            break

    # With validation (--validate-davis), the final measurements are of the best validated checkpoint, the one
    # the run keeps as its product (cpfs.training.validation), not of the last.
    best_ckpt = RunFolder(out / "run").best_checkpoint
    final = {"checkpoint": "last", "step": step}
    if cfg.validation.davis is not None and best_ckpt.is_file():
        model = build_model(cfg)
        payload = load_checkpoint(best_ckpt, model)
        recalibrate_batchnorm(model, crops, cfg.points_per_image, cfg.seed)
        m, _ = matrix(scores(model, "cpfs", heldout, args))
        diff = paired_bootstrap(m - base_m, groups)
        per = {ids_to_name[k]: v for k, v in per_group_bootstrap(m - base_m, groups).items()}
        final = {"checkpoint": "best", "step": int(payload["step"]), "cpfs": float(m.mean()), "diff": diff, "per_video": per,
                 "validation": [json.loads(x) for x in RunFolder(out / "run").validation.read_text().splitlines() if x.strip()]}
        print(f"best validated checkpoint: step {final['step']}: diff {diff['mean']:+.3f} [{diff['ci_low']:+.3f}, "
              f"{diff['ci_high']:+.3f}]  " + "  ".join(f"{k} {v['mean']:+.3f}" for k, v in per.items()), flush=True)
    # Context at the end: random init of other seeds (spread over seeds), position only, the flow oracle.
    others = {}
    for s in range(1, args.random_seeds):
        torch.manual_seed(s)
        net = recalibrate_batchnorm(baselines.random_init_model(model.config, seed=s), crops, cfg.points_per_image, s)
        others[f"random-init seed {s}"] = float(matrix(scores(net, "random-init", heldout, args))[0].mean())
    for fn in (baselines.position_features(args.stride), baselines.colour_features("lab", args.stride),
               baselines.flow_oracle_features(1)):
        rows = [flow_alignment(fn, heldout, heldout.video_ids, pairs_per_video=args.pairs, points=args.points, seed=s)
                for s in range(args.seeds)]
        mm, _ = matrix(rows)
        others[fn.name] = float(mm.mean())
        others[f"{fn.name} per video"] = {ids_to_name[v]: float(mm[np.asarray(groups) == v].mean()) for v in dict.fromkeys(groups)}
        if fn.name == "position":
            others["cpfs - position"] = paired_bootstrap(m - mm, groups)
        others[f"{fn.name} sigma_at_floor"] = float(np.mean(rows[0]["per_pair"]["sigma_at_floor"]))
    if args.davis:
        # DAVIS J&F on the shared evaluation sequences (never trained on), paired like the evaluation stage does
        # (cpfs.evaluation.protocols.davis.davis_paired): hypercolumns conv1..conv5, the same propagation settings.
        feats = lambda net, name: hypercolumn_features(net.trunk, ["conv1", "conv2", "conv3", "conv4", "conv5"],  # noqa: E731
                                                       stride=args.stride, name=name)
        t0 = time.perf_counter()
        rows = {name: davis_protocol(feats(net, name), args.davis, args.davis_sequences, size=args.davis_size,
                                     max_frames=args.davis_frames)
                for name, net in (("cpfs", model), ("random-init", random_same))}
        if args.davis_colour:
            rows["colour"] = davis_protocol(baselines.colour_features("lab", args.stride), args.davis, args.davis_sequences,
                                            size=args.davis_size, max_frames=args.davis_frames)
        paired = davis_paired(rows["cpfs"], rows["random-init"], cfg.seed, 0.95)
        others["davis"] = {"paired": paired, "seconds": time.perf_counter() - t0,
                           "per_sequence": {n: {k: r["sequences"][k]["J&F"] for k in r["sequences"]} for n, r in rows.items()},
                           "J": {n: r["J_mean"] for n, r in rows.items()}, "F": {n: r["F_mean"] for n, r in rows.items()},
                           "size": args.davis_size, "max_frames": args.davis_frames}
        print("DAVIS:", paired["verdict"], {n: round(r["JF_mean"], 4) for n, r in rows.items()}, flush=True)
    result = {
        "command": "bench/learning.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "config": cfg.model_dump(mode="json"), "heldout": args.heldout,
        "n_pairs_per_video": {ids_to_name[v]: int(sum(1 for g in groups if g == v)) for v in dict.fromkeys(groups)},
        "curve": curve, "final": final, "baselines": others, "machine": f"{platform.node()} {platform.processor()} {torch.get_num_threads()} threads",
        "verdict": verdict(final.get("diff", curve[-1]["diff"]), "held-out centered flow alignment"),
    }
    (out / ("learning-final.json" if args.only_final else "learning.json")).write_text(json.dumps(result, indent=2))
    print(json.dumps(others, indent=1))
    print(result["verdict"])


if __name__ == "__main__":
    main()
