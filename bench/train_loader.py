"""Is data loading the bottleneck of training? Train-step throughput with the real Zarr DataLoader vs the same
steps on batches already in memory, measured side by side in one run.

Data: real frames (DAVIS blackswan and dog from ``../shared/data/davis``, scaled to 256 px high) with DIS flow
written into a temporary store through the storage API; synthetic moving textures when that folder is
absent. Model and batch: the ``demo`` preset (half-width AlexNet, 112 px crops, batch 16, 256 pixels per image)
unless overridden. The two measurements alternate in rounds (loader, memory, loader, memory, ...) so a
change in the machine's load hits both alike; the memory side replays batches drawn from the same loader.

    .venv/bin/python bench/train_loader.py [--steps 10] [--rounds 3] [--workers 1] [--threads 1]

Prints one JSON dict: images/s of each side and ``ratio`` = loader / memory (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from cpfs.config import StoreConfig
from cpfs.training.data import FlowPairDataset, InfiniteSampler, worker_init
from cpfs.training.model import sample_points
from cpfs.records import FrameRange, VideoMeta, VideoRecord, VideoSource
from cpfs.training.train import CPFSObjective, build_model, build_optimizer, build_scheduler, points_generator, train_one_step
from cpfs.config import TrainConfig
from storage.store import VideoStore

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis" / "JPEGImages" / "480p"
HEIGHT = 256


def _davis_video(name: str, n: int) -> np.ndarray | None:
    folder = DAVIS / name
    files = sorted(folder.glob("*.jpg"))[:n]
    if not files:
        return None
    out = []
    for f in files:
        bgr = cv2.imread(str(f))
        h, w = bgr.shape[:2]
        size = (int(round(w * HEIGHT / h / 2)) * 2, HEIGHT)
        out.append(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)[:, :, ::-1])
    return np.ascontiguousarray(np.stack(out))


def _synthetic_video(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((HEIGHT, 456, 3)).astype(np.float32), (0, 0), 2)
    base = (base - base.min()) / (base.max() - base.min())
    return np.stack([np.roll(base, 2 * t, axis=1) * 255 for t in range(n)]).astype(np.uint8)


def _dis_flow(frames: np.ndarray) -> np.ndarray:
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return np.stack([dis.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:])]).astype(np.float32)


def build_store(path: Path, n_frames: int) -> tuple[StoreConfig, str]:
    cfg = StoreConfig(path=str(path), shard_frames=16)
    store = VideoStore.open(cfg, create=True)
    source = "davis"
    for i, name in enumerate(("blackswan", "dog")):
        frames = _davis_video(name, n_frames)
        if frames is None:
            frames, source = _synthetic_video(i, n_frames), "synthetic"
        t, h, w, _ = frames.shape
        vid = f"{source}-{name}"
        rec = VideoRecord(vid, VideoSource(f"/bench/{vid}", "frames"), VideoMeta(w, h, 25.0, t, None, "mjpeg"), w, h, t, 0)
        store.begin_video(rec, backend="opencv-dis", settings={"bench": True})
        store.write_frames(vid, 0, frames)
        store.mark_done(vid, "frames", FrameRange(vid, 0, t))
        clipped = store.write_flow(vid, 0, _dis_flow(frames), np.zeros(t - 1, np.float32))
        store.mark_done(vid, "flow", FrameRange(vid, 0, t - 1))
        store.finalize(vid, np.zeros(t - 1, bool), clipped)
    store.write_index()
    return cfg, source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=10, help="steps per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    ap.add_argument("--frames", type=int, default=40, help="frames per video in the temporary store")
    args = ap.parse_args()

    overrides = {}
    if args.workers is not None:
        overrides["num_workers"] = args.workers
    if args.threads is not None:
        overrides["threads"] = args.threads
    cfg = TrainConfig.from_preset(args.preset, **overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        store_cfg, source = build_store(Path(tmp) / "bench.zarr", args.frames)
        ids = VideoStore.open(store_cfg, create=False).complete_ids()
        ds = FlowPairDataset(store_cfg, ids, crop=cfg.crop, augment=cfg.augment, seed=cfg.seed)
        w = cfg.num_workers
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=InfiniteSampler(len(ds), cfg.seed),
                            num_workers=w, drop_last=True, pin_memory=device.startswith("cuda"),
                            persistent_workers=w > 0, prefetch_factor=cfg.prefetch_factor if w else None,
                            worker_init_fn=worker_init if w else None)
        batches = iter(loader)
        torch.manual_seed(cfg.seed)
        objective = CPFSObjective(build_model(cfg), cfg.loss, cfg.sigma).to(device)
        opt, sched = build_optimizer(objective, cfg), None
        sched = build_scheduler(opt, cfg)
        scaler = torch.amp.GradScaler(device.split(":")[0], enabled=False)
        memory = [next(batches) for _ in range(args.steps)]  # replayed by the in-memory side
        step = 0

        def run(source_batches) -> float:
            nonlocal step
            t0 = time.perf_counter()
            for _ in range(args.steps):
                images, flow = next(source_batches)
                images, flow = images.to(device, non_blocking=True), flow.to(device, non_blocking=True)
                pts = sample_points(cfg.batch_size, cfg.crop, cfg.crop, cfg.points_per_image,
                                    generator=points_generator(cfg.seed, 0, step))
                train_one_step(objective, opt, sched, scaler, images, flow, pts.to(device), grad_clip=cfg.optimizer.grad_clip)
                step += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return args.steps * cfg.batch_size / (time.perf_counter() - t0)

        run(iter(memory))  # warm-up (allocations, oneDNN primitives)
        run(batches)
        loader_ips, memory_ips = [], []
        for _ in range(args.rounds):
            loader_ips.append(run(batches))
            memory_ips.append(run(iter(memory)))
        t0 = time.perf_counter()
        for i in range(len(memory)):  # the data side alone, for reference
            ds[(i % len(ds), 10_000 + i)]
        item_ms = (time.perf_counter() - t0) / len(memory) * 1000
        frame_size = list(ds.read_raw(0)[0].shape[:2])
        del batches
    result = {
        "data": source, "device": device, "preset": args.preset, "batch_size": cfg.batch_size, "crop": cfg.crop,
        "points_per_image": cfg.points_per_image, "width": cfg.width, "num_workers": cfg.num_workers,
        "threads": torch.get_num_threads(), "frame_size": frame_size,
        "item_ms_main_process": round(item_ms, 2),
        "loader_images_per_s": round(float(np.median(loader_ips)), 2),
        "memory_images_per_s": round(float(np.median(memory_ips)), 2),
        "ratio": round(float(np.median(loader_ips) / np.median(memory_ips)), 3),
        "rounds": {"loader": [round(x, 2) for x in loader_ips], "memory": [round(x, 2) for x in memory_ips]},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
