"""The CUDA paths, where a GPU is at hand (``bench/gpu_check.sh`` runs ``pytest -k cuda``); skipped elsewhere.
The CPU tests (test_torch_tvl1.py, test_flow_backends.py) keep the same code honest without a GPU.

``CPFS_TEST_CUDA_DEVICE=cpu`` runs these bodies on the CPU (``bench/gpu_check.sh --dry-run``): the
assertions about which backend "auto" picks then accept the CPU ones."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cpfs.config import FlowConfig, IngestConfig, TVL1Params
from cpfs.flow import make_backend, resolve_backend
from cpfs.flow.metrics import epe
from cpfs.flow.torch_tvl1 import TorchTVL1Backend
from cpfs.ingest.steps import ingest_video
from cpfs.records import VideoSource
from storage import VideoStore
from tests.helpers import cut_clip

DEVICE = os.environ.get("CPFS_TEST_CUDA_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
GPU_BACKENDS = ("opencv-cuda-tvl1", "torch-tvl1") if ON_GPU else ("opencv-dis", "opencv-farneback", "opencv-tvl1")
needs_cuda = pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(),
                                reason="no CUDA device (torch.cuda.is_available() is False)")


def _pairs(n: int = 3, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """n real consecutive frame pairs of bikes.mp4, area-resized to size x size."""
    import cv2

    from cpfs.config import DecodeConfig
    from cpfs.ingest.discovery import sample_videos
    from cpfs.ingest.video import decode_stream

    src = VideoSource(str(sample_videos()[0]), "file")
    frames = np.stack(list(decode_stream(src, DecodeConfig(short_side=None), 100, 101 + n)))
    frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    return frames[:-1], frames[1:]


@needs_cuda
def test_cuda_torch_tvl1_agrees_with_its_cpu_run():
    a, b = _pairs()
    p = TVL1Params(nscales=3, warps=3)
    cpu = TorchTVL1Backend(p, device="cpu", batch_size=3).compute_pairs(a, b)
    gpu = TorchTVL1Backend(p, device=DEVICE, batch_size=3).compute_pairs(a, b)
    assert gpu.shape == cpu.shape and gpu.dtype == np.float32 and np.isfinite(gpu).all()
    for g, c in zip(gpu, cpu):  # same method, other arithmetic order: a small end-point difference only
        assert epe(g, c)["epe"] < 0.05


@needs_cuda
def test_cuda_batched_equals_per_pair():
    a, b = _pairs(4)
    backend = TorchTVL1Backend(TVL1Params(nscales=3, warps=3), device=DEVICE, batch_size=4)
    batched = backend.compute_pairs(a, b)
    single = np.concatenate([backend.compute_pairs(a[i:i + 1], b[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(batched, single, atol=1e-3)


@needs_cuda
def test_cuda_auto_picks_a_gpu_backend():
    name = resolve_backend(FlowConfig(backend="auto"))
    assert name in GPU_BACKENDS
    flow = make_backend(FlowConfig(backend=name)).compute(np.concatenate([_pairs(1)[0], _pairs(1)[1]]))
    assert flow.shape == (1, 96, 96, 2)


@needs_cuda
def test_cuda_ingest_with_auto_backend_stores_gpu_flow(tmp_path, sample_videos):
    clip = cut_clip(sample_videos[0], tmp_path / "clip.mp4", 40)
    cfg = IngestConfig.model_validate({"store": {"path": str(tmp_path / "s.zarr"), "shard_frames": 16},
                                       "decode": {"short_side": 64}, "flow": {"backend": "auto"}})
    res = ingest_video(VideoSource(str(clip), "file"), cfg)
    assert res.status == "stored" and res.backend in GPU_BACKENDS, res
    store = VideoStore.open(cfg.store, create=False)
    assert store.read_flow(res.video_id, 0, res.n_frames - 1).shape[0] == res.n_frames - 1
