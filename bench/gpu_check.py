"""The GPU measurements of issue 12 that are not a benchmark of their own; ``bench/gpu_check.sh`` runs them.

- ``ingest``: the sample videos ingested with ``--backend auto`` by the library (``cpfs.ingest.steps.ingest_video``,
  no Prefect server: its start-up is not what is measured), one fresh store: which backend "auto" picked,
  frames/s per video and overall, beside decoding alone (ffmpeg into memory, same videos, same size) in the
  same run. Goal on a GPU: ingest bounded by decode, i.e. ``ingest_fps / decode_fps`` near 1.
- ``train``: a training preset (``cpu-hour``, ``paper``) for a few hundred steps on that store with the real
  DataLoader: images/s (median over the steps after the first tenth), the share of step time spent waiting
  for the loader (``data_wait_s / step time``: near 0 means the loader keeps the GPU busy), and the peak GPU
  memory ``torch.cuda.max_memory_allocated``.

- ``env``: Python, torch and CUDA, OpenCV (with or without the contrib ``optflow`` module), and which flow
  backends can run here.

Each prints one JSON line (and writes it to ``--json``). Plain numbers, reporting is the shell script's.

    python bench/gpu_check.py env
    python bench/gpu_check.py ingest --store /tmp/s.zarr [--size 256] [--max-frames N] [--json out.json]
    python bench/gpu_check.py train --store /tmp/s.zarr --preset paper --steps 300 [--device cuda] [--json ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def env() -> dict:
    """What this machine offers the flow and training code."""
    import os
    import sys

    import cv2
    import torch

    from cpfs.flow import available_backends

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "opencv": cv2.__version__,
           "opencv_optflow": hasattr(cv2, "optflow"), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / 2**30, 1))
    out["backends"] = {name: ("yes: " if ok else "no: ") + why for name, (ok, why) in available_backends().items()}
    return out


def ingest(store: str, size: int, max_frames: int | None) -> dict:
    """Ingest the sample videos with backend auto into a fresh ``store``; decode alone beside it."""
    from cpfs.config import IngestConfig
    from cpfs.ingest.discovery import sample_videos
    from cpfs.flow import resolve_backend
    from cpfs.ingest.steps import ingest_video
    from cpfs.records import VideoSource
    from cpfs.ingest.video import decode

    shutil.rmtree(store, ignore_errors=True)
    cfg = IngestConfig.model_validate({"store": {"path": store}, "flow": {"backend": "auto"},
                                       "decode": {"short_side": size, "max_frames": max_frames}})
    out: dict = {"resolved_backend": resolve_backend(cfg.flow), "size": size, "videos": []}
    t_dec = n_dec = 0.0
    t_ing = n_ing = 0.0
    for path in sample_videos():
        src = VideoSource(str(path), "file")
        t0 = time.perf_counter()
        n = sum(1 for _ in decode(src, cfg.decode))
        dec_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = ingest_video(src, cfg)
        ing_s = time.perf_counter() - t0
        if res.status != "stored":
            raise SystemExit(f"ingest of {path} failed: {res.error}")
        out["videos"].append({"video": path.name, "frames": res.n_frames, "backend": res.backend,
                              "decode_fps": round(n / dec_s, 1), "ingest_fps": round(res.n_frames / ing_s, 1),
                              "ingest_over_decode": round((res.n_frames / ing_s) / (n / dec_s), 3)})
        t_dec, n_dec, t_ing, n_ing = t_dec + dec_s, n_dec + n, t_ing + ing_s, n_ing + res.n_frames
    out.update(decode_fps=round(n_dec / t_dec, 1), ingest_fps=round(n_ing / t_ing, 1),
               ingest_over_decode=round((n_ing / t_ing) / (n_dec / t_dec), 3),
               backends=sorted({v["backend"] for v in out["videos"]}))
    return out


def train(store: str, preset: str, steps: int, device: str | None, batch_size: int | None,
          num_workers: int | None) -> dict:
    """``steps`` steps of ``preset`` on ``store``: images/s, loader wait share, peak GPU memory."""
    import torch

    from cpfs.config import StoreConfig, TrainConfig
    from cpfs.training.train import train as run_training

    over: dict = {"preset": preset, "steps": steps, "checkpoint_every": steps, "log_every": 1,
                  "schedule": {"warmup_steps": min(20, steps // 4)}}
    if device is not None:
        over["device"] = device
    if batch_size is not None:
        over["batch_size"] = batch_size
    if num_workers is not None:
        over["num_workers"] = num_workers
    cfg = TrainConfig.model_validate(over)
    rows: list[dict] = []
    cuda = torch.cuda.is_available() and (cfg.device is None or str(cfg.device).startswith("cuda"))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run_dir = Path(tempfile.mkdtemp(prefix=f"cpfs-gpu-train-{preset}-"))
    t0 = time.perf_counter()
    try:
        run_training(cfg, StoreConfig(path=store), run_dir, progress=lambda step, total, m: rows.append(dict(m)))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    seconds = time.perf_counter() - t0
    steady = rows[max(1, len(rows) // 10):] or rows
    ips = [r["images_per_s"] for r in steady if "images_per_s" in r]
    waits = [r["data_wait_s"] * r["images_per_s"] / cfg.batch_size for r in steady
             if "data_wait_s" in r and "images_per_s" in r]  # wait / step time
    return {"preset": preset, "steps": len(rows), "batch_size": cfg.batch_size, "crop": cfg.crop,
            "device": cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"), "amp": cfg.amp,
            "num_workers": cfg.num_workers, "seconds": round(seconds, 1),
            "images_per_s_median": round(statistics.median(ips), 1) if ips else None,
            "loader_wait_share_median": round(statistics.median(waits), 3) if waits else None,
            "gpu_peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "final_loss": rows[-1].get("loss") if rows else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="python, torch, CUDA, OpenCV and the flow backends that can run")
    e.add_argument("--json", type=Path)
    a = sub.add_parser("ingest", help="sample videos with backend auto, beside decode alone")
    a.add_argument("--store", required=True)
    a.add_argument("--size", type=int, default=256, help="short side of decoded frames, px")
    a.add_argument("--max-frames", type=int, default=None, help="frames per video (default: all)")
    a.add_argument("--json", type=Path)
    t = sub.add_parser("train", help="a training preset for a few hundred steps")
    t.add_argument("--store", required=True)
    t.add_argument("--preset", required=True, choices=["demo", "cpu-hour", "paper"])
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--device", default=None, help="torch device (default: the preset's)")
    t.add_argument("--batch-size", type=int, default=None, help="override the preset's (dry runs)")
    t.add_argument("--num-workers", type=int, default=None, help="override the preset's loader workers")
    t.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.cmd == "env":
        out = env()
    elif args.cmd == "ingest":
        out = ingest(args.store, args.size, args.max_frames)
    else:
        out = train(args.store, args.preset, args.steps, args.device, args.batch_size, args.num_workers)
    line = json.dumps(out)
    print(line, flush=True)
    if args.json:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
