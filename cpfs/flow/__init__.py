"""Optical flow: the backend registry and the public API.

Backends (names as in ``cpfs.config.FLOW_BACKENDS``), all following ``cpfs.flow.base.FlowBackend``:

| name                   | where          | module                      |
| ---------------------- | -------------- | --------------------------- |
| opencv-cuda-tvl1       | GPU (OpenCV)   | ``cpfs.flow.opencv_cuda``   |
| opencv-cuda-farneback  | GPU (OpenCV)   | ``cpfs.flow.opencv_cuda``   |
| torch-tvl1             | GPU or CPU     | ``cpfs.flow.torch_tvl1``    |
| opencv-tvl1            | CPU            | ``cpfs.flow.opencv_cpu``    |
| opencv-farneback       | CPU            | ``cpfs.flow.opencv_cpu``    |
| opencv-dis             | CPU            | ``cpfs.flow.opencv_cpu``    |

``resolve_backend`` turns "auto" into a concrete name (the store records that name, never "auto") and
refuses an explicitly named backend that cannot run here, with the reason. ``make_backend`` builds it.
torch-tvl1 is imported lazily: importing ``cpfs.flow`` does not import torch.
"""

from __future__ import annotations

import cv2

from cpfs.config import FLOW_BACKENDS, FlowConfig
from cpfs.errors import BackendUnavailableError
from cpfs.flow.base import FlowBackend
from cpfs.flow.opencv_cpu import OpenCVDISBackend, OpenCVFarnebackBackend, OpenCVTVL1Backend, tvl1_available
from cpfs.flow.opencv_cuda import OpenCVCudaFarnebackBackend, OpenCVCudaTVL1Backend, cuda_available

__all__ = [
    "FlowBackend",
    "BackendUnavailableError",
    "available_backends",
    "backend_available",
    "resolve_backend",
    "make_backend",
    "set_threads",
]

# Order in which "auto" tries backends. GPU first: OpenCV's CUDA TV-L1, then the batched torch TV-L1 when
# torch sees a CUDA device. On a CPU, DIS (medium preset) comes first although TV-L1 is what the paper
# used: CPU TV-L1 is ~100-200x slower than DIS (bench/flow_backends.py: 0.4 vs 92 pairs/s at 256x256 on one
# core), which decides whether a CPU pipeline finishes at all, and DIS's Middlebury error is close to
# TV-L1's (lower on Urban2's large motion with the default 5 scales). Farneback next, TV-L1 last.
# opencv-cuda-farneback is never picked by "auto" (less accurate than TV-L1 on the same GPU); name it.
_AUTO_ORDER: tuple[str, ...] = ("opencv-cuda-tvl1", "torch-tvl1", "opencv-dis", "opencv-farneback", "opencv-tvl1")

CONCRETE_BACKENDS: tuple[str, ...] = tuple(name for name in FLOW_BACKENDS if name != "auto")


def _torch_tvl1_available() -> tuple[bool, str]:
    """torch-tvl1 runs wherever torch and ``cpfs.flow.torch_tvl1`` import (on CUDA when torch sees a GPU)."""
    try:
        import torch

        from cpfs.flow.torch_tvl1 import TorchTVL1Backend  # noqa: F401  (lazy: pulls in torch)
    except ImportError as exc:
        return False, f"cpfs.flow.torch_tvl1 cannot be imported ({exc})"
    if torch.cuda.is_available():
        return True, f"torch {torch.__version__} on cuda ({torch.cuda.get_device_name(0)})"
    return True, f"torch {torch.__version__} on cpu (torch.cuda.is_available() is False)"


def backend_available(name: str) -> tuple[bool, str]:
    """Whether the concrete backend ``name`` can run here: (ok, reason). Raises ValueError on unknown names."""
    if name == "opencv-cuda-tvl1":
        return cuda_available("OpticalFlowDual_TVL1")
    if name == "opencv-cuda-farneback":
        return cuda_available("FarnebackOpticalFlow")
    if name == "torch-tvl1":
        return _torch_tvl1_available()
    if name == "opencv-tvl1":
        return tvl1_available()
    if name == "opencv-farneback":
        return True, f"OpenCV {cv2.__version__} cv2.calcOpticalFlowFarneback (CPU)"
    if name == "opencv-dis":
        return True, f"OpenCV {cv2.__version__} cv2.DISOpticalFlow (CPU)"
    raise ValueError(f"unknown flow backend {name!r}: expected one of {', '.join(CONCRETE_BACKENDS)}")


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every concrete backend name -> (can run here, reason), in ``cpfs.config.FLOW_BACKENDS`` order."""
    return {name: backend_available(name) for name in CONCRETE_BACKENDS}


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_backend(cfg: FlowConfig) -> str:
    """The concrete backend name ``cfg`` asks for.

    "auto": the first of opencv-cuda-tvl1, torch-tvl1 (only when ``torch.cuda.is_available()`` and ``cfg.device``
    is None or a cuda device), opencv-dis, opencv-farneback, opencv-tvl1 that can run here. A named backend is
    returned as is when it can run, else ``BackendUnavailableError`` says why (also when torch-tvl1 is asked to
    run on a CUDA device that torch lacks).
    """
    if cfg.backend == "auto":
        reasons = []
        for name in _AUTO_ORDER:
            on_cpu = cfg.device is not None and not cfg.device.startswith("cuda")
            if name == "torch-tvl1" and (on_cpu or not _torch_cuda()):
                continue  # torch TV-L1 on a CPU is slower than the OpenCV CPU backends
            ok, reason = backend_available(name)
            if ok:
                return name
            reasons.append(f"{name}: {reason}")
        raise BackendUnavailableError("no optical-flow backend can run here: " + "; ".join(reasons))
    ok, reason = backend_available(cfg.backend)
    if not ok:
        raise BackendUnavailableError(f"flow backend {cfg.backend!r} is unavailable: {reason}")
    if cfg.backend == "torch-tvl1" and cfg.device is not None and cfg.device.startswith("cuda") and not _torch_cuda():
        raise BackendUnavailableError(
            f"flow backend 'torch-tvl1' asked for device {cfg.device!r} but torch.cuda.is_available() is False: "
            "install a CUDA build of torch or set device to 'cpu' (or None)"
        )
    return cfg.backend


def make_backend(cfg: FlowConfig) -> FlowBackend:
    """Build the backend ``cfg`` asks for ("auto" resolved by ``resolve_backend``), with its parameters."""
    name = resolve_backend(cfg)
    if name == "opencv-cuda-tvl1":
        return OpenCVCudaTVL1Backend(cfg.tvl1)
    if name == "opencv-cuda-farneback":
        return OpenCVCudaFarnebackBackend(cfg.farneback)
    if name == "torch-tvl1":
        from cpfs.flow.torch_tvl1 import TorchTVL1Backend  # lazy: pulls in torch

        return TorchTVL1Backend(params=cfg.tvl1, device=cfg.device, batch_size=cfg.batch_size)
    if name == "opencv-tvl1":
        return OpenCVTVL1Backend(cfg.tvl1)
    if name == "opencv-farneback":
        return OpenCVFarnebackBackend(cfg.farneback)
    if name == "opencv-dis":
        return OpenCVDISBackend(cfg.dis)
    raise AssertionError(f"resolve_backend returned an unhandled name {name!r}")  # unreachable by construction


def set_threads(n: int) -> None:
    """Set OpenCV's worker-thread count for this process (``cv2.setNumThreads``); 1 in Dask workers, so
    that n processes do not each start a pool of every core. n=0 disables OpenCV's threading."""
    if n < 0:
        raise ValueError(f"set_threads: n must be >= 0 (got {n})")
    cv2.setNumThreads(int(n))
