"""Does CPFS training learn anything that holds on held-out video? Held-out centered flow alignment against
training steps, for each loss, beside random init and the trivial baselines (project issue 3, "Measure
honestly"). Not run by CI: it trains for tens of CPU minutes.

1. Store: every real video at hand, the three sample videos (``cpfs.ingest.discovery.sample_videos``) and the DAVIS
   frame folders (``--davis``, default ``../shared/data/davis-train/JPEGImages/480p``; never ``davis/``, the DAVIS evaluation), ingested with
   ``cpfs.ingest.steps.ingest_video`` (DIS flow, short side ``--short-side`` 128). A video already complete in
   ``--store`` is skipped, so a store is reused across runs.
2. Split: ``cpfs.training.data.plan_split`` with the demo preset's seed and fraction (whole videos; ``plan_split`` cannot
   hold out part of one video when the store holds several, so the "last fifth of bikes" is not available);
   ``--heldout`` names explicit held-out video ids instead.
3. Training: for each loss of ``--losses``, the ``demo`` preset (half-width AlexNet, 112 px crops, batch 16,
   256 pixels per image, AdamW weight decay 0.05, colour jitter 0.2, random-scale crops 0.7-1.3, sigma the
   per-frame median pairwise flow distance) through ``cpfs.training.train.train``, in segments of ``--eval-every``
   steps (``stop_after`` + exact resume). Every loss gets the same number of steps (so the cosine schedule is
   the same), set from a measured throughput to fill ``--minutes-per-loss`` of training time (evaluation not
   counted); a loss that runs 25% past its budget is stopped early and says so.
4. Evaluation at every segment end: the evaluation library's flow-alignment protocol
   (``cpfs.evaluation.flow_alignment``: held-out pairs, ``--points`` pixels, centered and raw alignment of
   the embedding kernel with the Gaussian flow kernel), seeds 0..2 for the sampled pixels. Baselines from the
   evaluation stage itself (``cpfs.evaluation.context.prepare`` + ``run_protocol("flow_alignment", ...)`` on the first checkpoint):
   random init (3 seeds, BatchNorm statistics recalibrated on training crops), position only, colour only
   (Lab) and the flow oracle.

    .venv/bin/python bench/validity.py --store runs/validity/store.zarr --minutes-per-loss 8 \
        --losses kta kta-centered ce ce-rev --eval-every 100 --out runs/validity

Writes ``validity.json`` (every number, the settings, the machine) and ``validity.md`` (the tables) to ``--out``
and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cpfs.config import DecodeConfig, FlowConfig, IngestConfig, StoreConfig
from cpfs.training.data import complete_videos, plan_split
from cpfs.config import EvalConfig
from cpfs.evaluation.features import model_embedding_features
from cpfs.evaluation.flow_alignment import flow_alignment
from cpfs.evaluation.context import memoize_features, prepare
from cpfs.evaluation.heldout import PairSubset
from cpfs.evaluation.paired import combine_seeds
from cpfs.evaluation.run import run_protocol
from cpfs.ingest.steps import ingest_video
from cpfs.training.model import CPFSModel
from cpfs.records import IngestResult
from cpfs.training.run_folder import RunFolder
from cpfs.training.train import train
from cpfs.config import TrainConfig
from cpfs.ingest.discovery import discover, sample_videos

REPO = Path(__file__).resolve().parents[1]
# Training frames only: ../shared/data/davis/ is the DAVIS evaluation and is never trained on.
DAVIS = REPO.parent / "shared" / "data" / "davis-train" / "JPEGImages" / "480p"
LOSSES = ("kta", "kta-centered", "ce", "ce-rev")
METRICS = ("alignment_centered", "alignment")


# -----------------------------------------------------------------------------------------------------------
# 1. The store


def build_store(store_cfg: StoreConfig, davis: Path | None, short_side: int = 128) -> list[IngestResult]:
    """Ingest the sample videos and every frame folder under ``davis`` into ``store_cfg`` (DIS flow, frames
    scaled to ``short_side`` px); complete videos are skipped. Raises RuntimeError naming a failed source."""
    inputs: list[str | Path] = list(sample_videos())
    if davis is not None:
        if not davis.is_dir():
            raise FileNotFoundError(f"{davis}: DAVIS frame-folder root is missing (pass --davis '' to skip it)")
        inputs += sorted(p for p in davis.iterdir() if p.is_dir())
    sources, errors = discover(inputs)
    if errors:
        raise RuntimeError("cannot read inputs: " + "; ".join(str(e) for e in errors))
    cfg = IngestConfig(store=store_cfg, decode=DecodeConfig(short_side=short_side), flow=FlowConfig(backend="opencv-dis"))
    results = []
    for src in sources:
        res = ingest_video(src, cfg)
        if res.status == "failed":
            raise RuntimeError(f"ingest failed: {res.error}")
        print(f"  {res.status:8s} {res.video_id} {res.n_frames:4d} frames  {Path(src.path).name}  ({res.seconds:.1f} s)", flush=True)
        results.append(res)
    return results


# -----------------------------------------------------------------------------------------------------------
# 2. Evaluation of one network on the held-out pairs


@dataclass(frozen=True)
class EvalSettings:
    """The flow-alignment protocol's settings, identical for every source."""

    seeds: tuple[int, ...]  # seed s draws the sampled pixels (and builds random-init network s)
    pairs_per_video: int
    points: int
    stride: int  # feature-grid stride of the embeddings


def model_alignment(model: CPFSModel, heldout: PairSubset, settings: EvalSettings) -> dict:
    """Flow alignment of a network's embeddings on the held-out pairs, combined over seeds exactly as the
    evaluation stage does (``run_protocol("flow_alignment", ...)``: features memoised, ``combine_seeds``)."""
    model.eval()
    fn = memoize_features(model_embedding_features(model, stride=settings.stride, name="cpfs"))
    rows = [flow_alignment(fn, heldout, heldout.video_ids, pairs_per_video=settings.pairs_per_video,  # type: ignore[arg-type]
                           points=settings.points, seed=s) for s in settings.seeds]
    return combine_seeds(rows)


def eval_config(run_dir: Path, store_cfg: StoreConfig, settings: EvalSettings, threads: int) -> EvalConfig:
    return EvalConfig(checkpoint=str(run_dir), store=store_cfg, seeds=len(settings.seeds),
                      pairs_per_video=settings.pairs_per_video, points=settings.points,
                      feature_stride=settings.stride, threads=threads, qualitative_frames=0)


# -----------------------------------------------------------------------------------------------------------
# 3. Training in segments


def measure_throughput(cfg: TrainConfig, store_cfg: StoreConfig, scratch: Path, steps: int) -> float:
    """Seconds per training step of ``cfg`` (median over the last ``steps - 3`` logged steps of a short run)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    train(cfg.model_copy(update={"steps": steps, "checkpoint_every": steps}), store_cfg, scratch)
    per_step = [cfg.batch_size / m["images_per_s"] for m in RunFolder(scratch).read_metrics()[3:]]
    shutil.rmtree(scratch)
    return float(np.median(per_step))


def train_and_track(cfg: TrainConfig, store_cfg: StoreConfig, run_dir: Path, eval_every: int, budget_s: float,
                    heldout: PairSubset, settings: EvalSettings, on_first_checkpoint=None) -> dict:
    """Train ``cfg`` in segments of ``eval_every`` steps, evaluating after each; stop early past 1.25 x budget."""
    curve, train_s, step, stopped_early = [], 0.0, 0, False
    while step < cfg.steps:
        t0 = time.perf_counter()
        res = train(cfg, store_cfg, run_dir, resume=step > 0, stop_after=min(eval_every, cfg.steps - step))
        train_s += time.perf_counter() - t0
        step = res.steps
        if on_first_checkpoint is not None:
            on_first_checkpoint(run_dir)
            on_first_checkpoint = None
        t1 = time.perf_counter()
        scores = model_alignment(res.model, heldout, settings)
        row = {"step": step, "train_s": train_s, "eval_s": time.perf_counter() - t1,
               "train_loss": res.metrics.get("loss"), "train_alignment_centered": res.metrics.get("alignment"),
               **{m: scores["summary"][m] for m in scores["summary"]}}
        curve.append(row)
        print(f"  {cfg.loss:13s} step {step:5d}  held-out centered {row['alignment_centered']['mean']:.3f} "
              f"± {row['alignment_centered']['std']:.3f}  raw {row['alignment']['mean']:.3f}  "
              f"(train loss {row['train_loss']:.4f}, {train_s:.0f} s training)", flush=True)
        if train_s > 1.25 * budget_s and step < cfg.steps:
            stopped_early = True
            break
    metrics = RunFolder(run_dir).read_metrics()
    tail = metrics[-50:]
    return {"loss": cfg.loss, "steps_planned": cfg.steps, "steps_done": step, "stopped_early": stopped_early,
            "train_seconds": train_s, "curve": curve,
            "train_images_per_s": float(np.median([m["images_per_s"] for m in tail])) if tail else None,
            "final_train_stats": {k: float(np.mean([m[k] for m in tail])) for k in
                                  ("loss", "alignment", "sigma", "cos_offdiag", "dim_std_mean")} if tail else {}}


# -----------------------------------------------------------------------------------------------------------
# 4. Reporting


def _fmt(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def markdown(result: dict) -> str:
    """The tables of ``result``: held-out centered (then raw) alignment against steps per loss, and baselines."""
    runs, base, meta = result["runs"], result["baselines"], result["meta"]
    losses = list(runs)
    steps = sorted({r["step"] for run in runs.values() for r in run["curve"]})
    lines = [f"# CPFS validity benchmark", "",
             f"Held-out videos: {', '.join(meta['heldout_names'])} ({meta['heldout_pairs']} pairs x {meta['eval']['points']} "
             f"pixels, seeds {meta['eval']['seeds']}); trained on {', '.join(meta['train_names'])}.",
             f"Demo preset, {meta['steps_per_loss']} steps per loss planned ({meta['minutes_per_loss']} min budget at "
             f"{meta['seconds_per_step']:.2f} s/step measured), torch threads {meta['threads']}, "
             f"{meta['machine']['cpus']} CPUs ({meta['machine']['processor']}).", ""]
    for metric, title in (("alignment_centered", "Held-out centered alignment (mean ± std over pixel-sampling seeds)"),
                          ("alignment", "Held-out raw alignment (the paper's KTA; near 0.9 even for a constant embedding)")):
        lines += [f"## {title}", "", "| step | " + " | ".join(losses) + " |", "|---:|" + "---:|" * len(losses)]
        for st in steps:
            cells = []
            for loss in losses:
                row = next((r for r in runs[loss]["curve"] if r["step"] == st), None)
                cells.append(_fmt(row[metric]) if row else "")
            lines.append(f"| {st} | " + " | ".join(cells) + " |")
        lines += ["", "| baseline | " + metric + " |", "|---|---:|"]
        for name, res in base.items():
            lines.append(f"| {name} | {_fmt(res['summary'][metric])} |")
        lines.append("")
    lines += ["## Training", "", "| loss | steps | train s | images/s | final train loss | train centered align. | sigma px | cos off-diag |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for loss, run in runs.items():
        s = run["final_train_stats"]
        lines.append(f"| {loss} | {run['steps_done']}{' (stopped early)' if run['stopped_early'] else ''} | "
                     f"{run['train_seconds']:.0f} | {run['train_images_per_s']:.1f} | {s.get('loss', float('nan')):.4f} | "
                     f"{s.get('alignment', float('nan')):.3f} | {s.get('sigma', float('nan')):.2f} | {s.get('cos_offdiag', float('nan')):.3f} |")
    lines += ["", "random-init: seeds 0..2, BatchNorm statistics recalibrated on training crops; std over seeds. "
              "Other baselines: std over pixel-sampling seeds."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="runs/validity/store.zarr", help="Zarr store (built, or reused when complete)")
    ap.add_argument("--davis", default=str(DAVIS), help="folder of DAVIS frame folders ('' to skip)")
    ap.add_argument("--short-side", type=int, default=128, help="decoded frames' shorter side, px")
    ap.add_argument("--minutes-per-loss", type=float, default=8.0, help="training wall-clock budget per loss")
    ap.add_argument("--steps", type=int, default=None, help="steps per loss (default: from measured throughput and budget)")
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    ap.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    ap.add_argument("--out", default="runs/validity", help="output folder: validity.json, validity.md, runs/<loss>")
    ap.add_argument("--threads", default="auto", help="torch threads: 1, 2, or auto (measure 1 and 2, keep the faster)")
    ap.add_argument("--heldout", nargs="*", default=None, help="explicit held-out video ids (default: plan_split by seed)")
    ap.add_argument("--pairs-per-video", type=int, default=16)
    ap.add_argument("--points", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0, help="training seed (split, init, sampling, augmentation)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for loss in args.losses:
        if (out / "runs" / loss).exists():
            raise FileExistsError(f"{out / 'runs' / loss}: a previous run is there; choose another --out or remove it")
    store_cfg = StoreConfig(path=str(Path(args.store).resolve()))

    print(f"[1/4] store {store_cfg.path}", flush=True)
    t0 = time.perf_counter()
    ingested = build_store(store_cfg, Path(args.davis) if args.davis else None, args.short_side)
    ingest_s = time.perf_counter() - t0
    names = {r.video_id: Path(r.source).name for r in ingested}

    base_cfg = TrainConfig.from_preset("demo", seed=args.seed, heldout_videos=args.heldout, log_every=1,
                                       checkpoint_every=10**6, keep_checkpoints=1)
    videos = complete_videos(store_cfg)
    split = plan_split(videos, base_cfg.holdout_fraction, base_cfg.seed, base_cfg.heldout_videos)
    from storage import VideoStore

    heldout = PairSubset.from_ranges(VideoStore.open(store_cfg, create=False), split.heldout)
    settings = EvalSettings(seeds=(0, 1, 2), pairs_per_video=args.pairs_per_video, points=args.points, stride=4)

    print("[2/4] throughput", flush=True)
    candidates = [1, 2] if args.threads == "auto" else [int(args.threads)]
    timing = {}
    for th in candidates:
        timing[th] = measure_throughput(base_cfg.model_copy(update={"threads": th}), store_cfg, out / "scratch", 14)
        print(f"  threads {th}: {timing[th]:.3f} s/step", flush=True)
    threads = min(timing, key=timing.get)
    torch.set_num_threads(threads)
    sec_per_step = timing[threads]
    budget_s = args.minutes_per_loss * 60.0
    steps = args.steps or max(args.eval_every, int(budget_s / sec_per_step) // args.eval_every * args.eval_every)
    print(f"  -> threads {threads}, {steps} steps per loss", flush=True)

    baselines: dict = {}

    def baselines_from(run_dir: Path) -> None:
        ctx = prepare(eval_config(run_dir, store_cfg, settings, threads))
        res = run_protocol("flow_alignment", ctx)
        baselines.update({k: v for k, v in res.items() if k != "cpfs"})
        for name, r in baselines.items():
            print(f"  baseline {name:12s} centered {_fmt(r['summary']['alignment_centered'])}  raw {_fmt(r['summary']['alignment'])}", flush=True)

    print("[3/4] training", flush=True)
    runs = {}
    for loss in args.losses:
        cfg = base_cfg.model_copy(update={"loss": loss, "steps": steps, "threads": threads})
        TrainConfig.model_validate(cfg.model_dump())  # the copy is still a valid config
        runs[loss] = train_and_track(cfg, store_cfg, out / "runs" / loss, args.eval_every, budget_s, heldout, settings,
                                     on_first_checkpoint=baselines_from if not baselines else None)

    result = {
        "meta": {
            "command": "bench/validity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "store": store_cfg.path, "ingest_seconds": ingest_s,
            "videos": {v: {"name": names.get(v, v), "frames": n} for v, n in videos.items()},
            "train_names": [names.get(r.video_id, r.video_id) for r in split.train],
            "heldout_names": [names.get(r.video_id, r.video_id) for r in split.heldout],
            "train_config": base_cfg.model_copy(update={"steps": steps, "threads": threads}).model_dump(mode="json"),
            "eval": {"seeds": list(settings.seeds), "pairs_per_video": settings.pairs_per_video,
                     "points": settings.points, "stride": settings.stride},
            "minutes_per_loss": args.minutes_per_loss, "steps_per_loss": steps, "eval_every": args.eval_every,
            "seconds_per_step": sec_per_step, "threads_timing_s_per_step": timing, "threads": threads,
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "load_avg_at_end": os.getloadavg(), "torch": torch.__version__},
            "total_seconds": time.perf_counter() - t_start,
        },
        "baselines": baselines,
        "runs": runs,
    }
    # Pairs scored per seed (the same for every source: the protocol picks them deterministically).
    result["meta"]["heldout_pairs"] = baselines["position"]["per_seed"][0]["n_pairs"]
    print("[4/4] report", flush=True)
    (out / "validity.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result)
    (out / "validity.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
