"""Optical flow on an NVIDIA GPU with OpenCV's CUDA module (``cudaoptflow``): TV-L1 and Farneback.

The PyPI OpenCV wheels are built without CUDA, so these backends only run with an OpenCV compiled with
``WITH_CUDA=ON`` and the contrib ``cudaoptflow`` module. ``cuda_available`` says whether that is the case
and, when not, why and what to do; the registry (``cpfs.flow``) never picks them unless it returns True.

Parameter mapping from the shared config (the CUDA classes differ from the CPU ones):
- TV-L1 (``cv::cuda::OpticalFlowDual_TVL1::create(tau, lambda, theta, nscales, warps, epsilon, iterations,
  scaleStep, gamma, useInitialFlow)``): one loop of ``iterations`` = ``outer_iterations * inner_iterations``
  (the CPU class nests the two loops; 10*30 = 300 is also the CUDA default). The CUDA class has no median
  filtering, so ``median_filtering`` is not applied and is recorded as 0 in ``params()``.
- Farneback (``cv::cuda::FarnebackOpticalFlow::create(numLevels, pyrScale, fastPyramids, winSize, numIters,
  polyN, polySigma, flags)``): same meaning as the CPU function; ``fastPyramids`` off, flags 0.

Frames are converted to 8-bit gray on the CPU, uploaded once each as ``cv2.cuda.GpuMat`` (every frame is used
by two pairs), and each flow field is downloaded as (H, W, 2) float32.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from cpfs.config import FarnebackParams, TVL1Params
from cpfs.errors import BackendUnavailableError
from cpfs.flow.base import check_frames, check_pairs, rgb_to_gray

_NO_CUDA_HINT = "install an OpenCV build with CUDA or use --backend torch-tvl1/opencv-tvl1"


def _cuda_attr(name: str) -> Any | None:
    """A cv2 CUDA class by its C++ name, under either binding spelling (cv2.cuda.X or cv2.cuda_X)."""
    cuda = getattr(cv2, "cuda", None)
    if cuda is not None and hasattr(cuda, name):
        return getattr(cuda, name)
    return getattr(cv2, f"cuda_{name}", None)


def _create(cls_name: str) -> Any:
    """The ``create`` factory of a cv2 CUDA optical-flow class (``X.create`` or the flat ``X_create``)."""
    cls = _cuda_attr(cls_name)
    if cls is not None and hasattr(cls, "create"):
        return cls.create
    factory = _cuda_attr(f"{cls_name}_create")
    if factory is None:
        raise BackendUnavailableError(f"OpenCV {cv2.__version__} has no cv2.cuda.{cls_name} ({_NO_CUDA_HINT})")
    return factory


def cuda_available(cls_name: str = "OpticalFlowDual_TVL1") -> tuple[bool, str]:
    """Whether OpenCV can run ``cv2.cuda.<cls_name>`` here: (ok, reason). Never raises."""
    cuda = getattr(cv2, "cuda", None)
    if cuda is None or not hasattr(cuda, "getCudaEnabledDeviceCount"):
        return False, f"OpenCV {cv2.__version__} has no cv2.cuda module: {_NO_CUDA_HINT}"
    try:
        count = int(cuda.getCudaEnabledDeviceCount())
    except cv2.error as exc:  # a CUDA build without a usable driver raises here
        return False, f"cv2.cuda.getCudaEnabledDeviceCount() failed ({exc}): {_NO_CUDA_HINT}"
    if count == 0:
        return False, (
            f"OpenCV {cv2.__version__} was built without CUDA or sees no CUDA device "
            f"(cv2.cuda.getCudaEnabledDeviceCount() == 0): {_NO_CUDA_HINT}"
        )
    try:
        _create(cls_name)
    except BackendUnavailableError as exc:
        return False, f"{exc} (the contrib cudaoptflow module is missing)"
    if _cuda_attr("GpuMat") is None:
        return False, f"OpenCV {cv2.__version__} has no cv2.cuda.GpuMat: {_NO_CUDA_HINT}"
    return True, f"OpenCV {cv2.__version__} cv2.cuda.{cls_name} on {count} CUDA device(s)"


class _CudaPairwiseBackend:
    """Shared upload / calc / download loop of the OpenCV CUDA dense-flow classes."""

    name: str
    _cls_name: str

    def __init__(self) -> None:
        ok, reason = cuda_available(self._cls_name)
        if not ok:
            raise BackendUnavailableError(f"{self.name}: {reason}")
        self._algo: Any = None

    def _make_algo(self) -> Any:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _ensure_algo(self) -> Any:
        if self._algo is None:
            self._algo = self._make_algo()
        return self._algo

    @staticmethod
    def _upload(gray: np.ndarray) -> Any:
        """(H, W) uint8 host image -> cv2.cuda.GpuMat CV_8UC1 on the device."""
        mat = _cuda_attr("GpuMat")()
        mat.upload(np.ascontiguousarray(gray))
        return mat

    def _calc(self, g0: Any, g1: Any, out: Any) -> np.ndarray:
        """Two device images -> (H, W, 2) float32 host flow; ``out`` is a reused CV_32FC2 GpuMat."""
        out = self._ensure_algo().calc(g0, g1, out)
        return out.download().astype(np.float32, copy=False)

    def _out(self, h: int, w: int) -> Any:
        return _cuda_attr("GpuMat")(h, w, cv2.CV_32FC2)

    def compute(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N-1, H, W, 2) float32 flow t -> t+1, px."""
        frames = check_frames(frames, self.name)
        gray = rgb_to_gray(frames)
        out = self._out(*gray.shape[1:])
        flows = []
        prev = self._upload(gray[0])
        for t in range(1, len(gray)):
            cur = self._upload(gray[t])
            flows.append(self._calc(prev, cur, out))
            prev = cur
        return np.stack(flows)

    def compute_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames a and b -> (N, H, W, 2) float32 flow a[i] -> b[i], px."""
        a, b = check_pairs(a, b, self.name)
        ga, gb = rgb_to_gray(a), rgb_to_gray(b)
        out = self._out(*ga.shape[1:])
        return np.stack([self._calc(self._upload(x), self._upload(y), out) for x, y in zip(ga, gb)])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_algo"] = None  # device objects do not pickle; rebuilt on first use in the worker
        return state


class OpenCVCudaTVL1Backend(_CudaPairwiseBackend):
    """TV-L1 on the GPU (``cv2.cuda.OpticalFlowDual_TVL1``), parameters mapped from ``TVL1Params``."""

    name = "opencv-cuda-tvl1"
    _cls_name = "OpticalFlowDual_TVL1"

    def __init__(self, params: TVL1Params | None = None) -> None:
        super().__init__()
        self.tvl1 = params if params is not None else TVL1Params()

    def params(self) -> dict[str, Any]:
        p = self.tvl1
        out = p.model_dump(mode="json", by_alias=True)
        out["iterations"] = p.inner_iterations * p.outer_iterations
        out["median_filtering"] = 0  # the CUDA class has no median filter
        return out

    def _make_algo(self) -> Any:
        p = self.tvl1
        return _create(self._cls_name)(
            p.tau,
            p.lambda_,
            p.theta,
            p.nscales,
            p.warps,
            p.epsilon,
            p.inner_iterations * p.outer_iterations,
            p.scale_step,
            p.gamma,
            False,  # useInitialFlow
        )


class OpenCVCudaFarnebackBackend(_CudaPairwiseBackend):
    """Farneback on the GPU (``cv2.cuda.FarnebackOpticalFlow``), parameters mapped from ``FarnebackParams``."""

    name = "opencv-cuda-farneback"
    _cls_name = "FarnebackOpticalFlow"

    def __init__(self, params: FarnebackParams | None = None) -> None:
        super().__init__()
        self.farneback = params if params is not None else FarnebackParams()

    def params(self) -> dict[str, Any]:
        out = self.farneback.model_dump(mode="json")
        out["fast_pyramids"] = False
        return out

    def _make_algo(self) -> Any:
        p = self.farneback
        return _create(self._cls_name)(
            p.levels,  # numLevels
            p.pyr_scale,  # pyrScale
            False,  # fastPyramids
            p.winsize,  # winSize
            p.iterations,  # numIters
            p.poly_n,  # polyN
            p.poly_sigma,  # polySigma
            0,  # flags
        )
