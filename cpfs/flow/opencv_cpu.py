"""Optical flow on the CPU with OpenCV (opencv-contrib-python-headless): TV-L1, Farneback and DIS.

- TV-L1: Zach, Pock, Bischof, "A Duality Based Approach for Realtime TV-L1 Optical Flow", DAGM 2007, as
  implemented by Sánchez, Meinhardt-Llopis, Facciolo (IPOL 2013) in ``cv2.optflow.DualTVL1OpticalFlow``
  (contrib module ``optflow``). This is the flow the CPFS paper trains on; accurate and slow (~1 s per
  256x256 pair on one core).
- Farneback: "Two-Frame Motion Estimation Based on Polynomial Expansion", SCIA 2003
  (``cv2.calcOpticalFlowFarneback``).
- DIS: Kroeger, Timofte, Dai, Van Gool, "Fast Optical Flow using Dense Inverse Search", ECCV 2016
  (``cv2.DISOpticalFlow``): about two orders of magnitude faster than TV-L1 on a CPU.

All three take 8-bit grayscale frames (BT.601 luma of the RGB input) and return flow t -> t+1 in the
convention of ``cpfs.flow.base``. Threading is OpenCV's global setting (``cpfs.flow.set_threads``).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from cpfs.config import DISParams, FarnebackParams, TVL1Params
from cpfs.errors import BackendUnavailableError
from cpfs.flow.base import PairwiseFlowBackend

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def tvl1_available() -> tuple[bool, str]:
    """Whether OpenCV's CPU TV-L1 exists here (it lives in the contrib ``optflow`` module)."""
    optflow = getattr(cv2, "optflow", None)
    if optflow is None or not hasattr(optflow, "DualTVL1OpticalFlow_create"):
        return False, (
            f"OpenCV {cv2.__version__} has no cv2.optflow.DualTVL1OpticalFlow_create (the contrib optflow module "
            "is missing): install opencv-contrib-python-headless instead of opencv-python"
        )
    return True, f"OpenCV {cv2.__version__} cv2.optflow.DualTVL1OpticalFlow (CPU)"


class OpenCVTVL1Backend(PairwiseFlowBackend):
    """TV-L1 optical flow on the CPU (``cv2.optflow.DualTVL1OpticalFlow``), parameters from ``TVL1Params``.

    OpenCV runs ``outer_iterations`` x ``inner_iterations`` fixed-point steps per warp, stopping early when the
    update is below ``epsilon``, and median-filters the flow (``median_filtering`` px) after each warp.
    """

    name = "opencv-tvl1"

    def __init__(self, params: TVL1Params | None = None) -> None:
        super().__init__()
        ok, reason = tvl1_available()
        if not ok:
            raise BackendUnavailableError(f"{self.name}: {reason}")
        self.tvl1 = params if params is not None else TVL1Params()

    def params(self) -> dict[str, Any]:
        return self.tvl1.model_dump(mode="json", by_alias=True)

    def _make_algo(self) -> Any:
        p = self.tvl1
        # Keyword names are OpenCV's own, including its "innnerIterations" spelling (three n's).
        return cv2.optflow.DualTVL1OpticalFlow_create(
            tau=p.tau,
            lambda_=p.lambda_,
            theta=p.theta,
            nscales=p.nscales,
            warps=p.warps,
            epsilon=p.epsilon,
            innnerIterations=p.inner_iterations,
            outerIterations=p.outer_iterations,
            scaleStep=p.scale_step,
            gamma=p.gamma,
            medianFiltering=p.median_filtering,
            useInitialFlow=False,
        )

    def _flow_gray(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._ensure_algo().calc(a, b, None).astype(np.float32, copy=False)


class OpenCVFarnebackBackend(PairwiseFlowBackend):
    """Farneback optical flow on the CPU (``cv2.calcOpticalFlowFarneback``), parameters from ``FarnebackParams``.

    ``levels`` counts pyramid layers including the full-size image (OpenCV: levels=1 means no pyramid).
    """

    name = "opencv-farneback"

    def __init__(self, params: FarnebackParams | None = None) -> None:
        super().__init__()
        self.farneback = params if params is not None else FarnebackParams()

    def params(self) -> dict[str, Any]:
        return self.farneback.model_dump(mode="json")

    def _make_algo(self) -> Any:
        return None  # a plain function, no state

    def _flow_gray(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        p = self.farneback
        flow = cv2.calcOpticalFlowFarneback(
            a, b, None, p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n, p.poly_sigma, 0
        )
        return flow.astype(np.float32, copy=False)


class OpenCVDISBackend(PairwiseFlowBackend):
    """DIS optical flow on the CPU (``cv2.DISOpticalFlow``) with an OpenCV preset from ``DISParams``.

    "medium" adds variational refinement and spatial propagation over "fast"/"ultrafast"; it is still
    ~100x faster than CPU TV-L1 at similar accuracy on small motions (see bench/flow_backends.py).
    """

    name = "opencv-dis"

    def __init__(self, params: DISParams | None = None) -> None:
        super().__init__()
        self.dis = params if params is not None else DISParams()

    def params(self) -> dict[str, Any]:
        return self.dis.model_dump(mode="json")

    def _make_algo(self) -> Any:
        return cv2.DISOpticalFlow_create(_DIS_PRESETS[self.dis.preset])

    def _flow_gray(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._ensure_algo().calc(a, b, None).astype(np.float32, copy=False)
