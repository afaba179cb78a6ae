"""The highest ingest/bare ratio the work an ingest must do allows on this machine, measured in one run.

``bench/ingest.py`` compares the whole Prefect ingest flow with a *bare* loop of the same OpenCV flow over
frames already decoded in memory (goal: ratio >= 0.9). Whatever the orchestration, the ingest cannot take
less wall time than the CPU work it must do divided by the cores that do it, so

    ratio <= cores * bare_wall / (CPU seconds of the work an ingest cannot skip)

This benchmark measures that work step by step with the library's own functions on the sample videos, one
step at a time, with no Prefect, no Dask and no overlap (each step's CPU time is the process's, its threads
and, for decoding, its ffmpeg children):

- ``decode``: ``cpfs.ingest.video.decode`` (ffmpeg pipe, scaled to ``--size``);
- ``gray``: RGB -> luma once per frame, as ``cpfs.ingest.steps.process_range`` does for pairwise backends;
- ``flow``: the backend's ``flow_gray`` on each consecutive pair (what the ingest runs);
- ``warp error``: ``cpfs.flow.metrics.photometric_error`` per pair (the shot-cut detector needs it);
- ``write frames`` / ``write flow``: ``VideoStore.write_frames`` / ``write_flow`` per shard block into a real
  store in a temporary folder (fixed-point flow encoding, per-pair motion statistics, Blosc/zstd, files);
- ``finalize``: ``cpfs.ingest.steps.finalize_video`` (cut detection from stored warp errors and colour histograms).

and the bare loop itself (``bench/ingest.py``'s ``bare_loop``: ``backend.compute`` over shard blocks), in the
same run, and prints the ceiling. Nothing of the orchestration (Prefect, Dask, task scheduling) is counted:
the ceiling is what a perfect pipeline with free orchestration would reach.

    .venv/bin/python bench/ingest_ceiling.py [--backends opencv-dis,opencv-farneback] [--size 256]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path

import numpy as np



def _bare_loop():  # noqa: ANN202
    """``bench/ingest.py``'s bare loop, the very one the ingest ratio is measured against."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ingest", Path(__file__).resolve().parent / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.bare_loop


def cpu_now() -> float:
    """CPU seconds of this process (all threads) and of its reaped children (ffmpeg)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Steps:
    """CPU seconds per named step, summed over calls."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def run(self, name: str, fn, *args):  # noqa: ANN001, ANN201
        c0 = cpu_now()
        out = fn(*args)
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu_now() - c0
        return out


def measure(backend_name: str, size: int, work: Path) -> dict:
    import cv2

    from cpfs.config import IngestConfig
    from cpfs.ingest.discovery import discover, sample_videos
    from cpfs.flow import make_backend
    from cpfs.flow.metrics import photometric_error
    from cpfs.ingest.steps import finalize_video, prepare_video
    from cpfs.ingest.video import decode
    from storage import VideoStore

    cfg = IngestConfig.model_validate({"decode": {"short_side": size}, "flow": {"backend": backend_name},
                                       "store": {"path": str(work / f"{backend_name}.zarr")}})
    sources, _ = discover([str(p) for p in sample_videos()])
    backend = make_backend(cfg.flow)
    shard = cfg.store.shard_frames
    steps = Steps()
    videos, n_frames = [], 0
    for source in sources:
        plan = prepare_video(source, cfg)
        frames = steps.run("decode", lambda: np.stack(list(decode(source, cfg.decode, plan.record.meta))))
        if frames.shape[0] != plan.record.n_frames:
            raise RuntimeError(f"{source.path}: decoded {frames.shape[0]} frames, the plan says {plan.record.n_frames}")
        videos.append(frames)
        n_frames += frames.shape[0]
        gray = steps.run("gray", lambda: [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        backend.flow_gray(gray[0], gray[1])  # warm-up: builds the algorithm object
        flow = steps.run("flow", lambda: np.stack([backend.flow_gray(a, b) for a, b in zip(gray[:-1], gray[1:])]))
        err = steps.run("warp error", lambda: np.array(
            [photometric_error(frames[i], frames[i + 1], flow[i]) for i in range(flow.shape[0])], np.float32))
        store = VideoStore.open(cfg.store, create=False)
        for a in range(0, frames.shape[0], shard):
            b = min(a + shard, frames.shape[0])
            steps.run("write frames", store.write_frames, plan.record.video_id, a, frames[a:b])
            pb = min(b, frames.shape[0] - 1)
            if pb > a:
                steps.run("write flow", store.write_flow, plan.record.video_id, a, flow[a:pb], err[a:pb])
        for r in plan.ranges:
            store.mark_done(plan.record.video_id, "frames", r)
            store.mark_done(plan.record.video_id, "flow", r)
        steps.run("finalize", finalize_video, plan, cfg)
    bare = _bare_loop()(videos, cfg)
    return {"frames": n_frames, "steps": steps.cpu, "bare_wall": bare["seconds"], "bare_cpu": bare["cpu_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="opencv-dis,opencv-farneback", help="comma-separated flow backends")
    parser.add_argument("--size", type=int, default=256, help="short side of decoded frames, px")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores, load average {os.getloadavg()[0]:.2f}, frames at {args.size} px; CPU ms per frame")
    with tempfile.TemporaryDirectory(prefix="cpfs-ceiling-") as tmp:
        for name in args.backends.split(","):
            r = measure(name, args.size, Path(tmp))
            n = r["frames"]
            total = sum(r["steps"].values())
            print(f"\n{name}: {n} frames of the sample videos")
            for step, cpu in r["steps"].items():
                print(f"  {step:13} {1e3 * cpu / n:7.1f}")
            print(f"  {'total':13} {1e3 * total / n:7.1f}   (the work an ingest cannot skip; no orchestration)")
            print(f"  bare loop     {1e3 * r['bare_cpu'] / n:7.1f} CPU, {1e3 * r['bare_wall'] / n:6.1f} wall ms/frame "
                  f"({r['bare_cpu'] / r['bare_wall']:.2f} cores busy)")
            print(f"  ceiling of ingest/bare on {cores} cores: {cores * r['bare_wall'] / total:.2f}  "
                  f"(goal 0.9; flow's share of the work {r['steps']['flow'] / total:.2f})")


if __name__ == "__main__":
    main()
