"""Flow files, error measures, warping and the Middlebury colour coding."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cpfs.flow.metrics import epe, photometric_error, read_flo, valid_flow_mask, warp, warp_valid_mask, write_flo
from cpfs.flow.visualize import color_wheel, flow_to_color

MIDDLEBURY = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "middlebury"


# ------------------------------------------------------------------------------------------------ .flo


def test_flo_round_trip_keeps_values_and_unknowns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flow = rng.normal(scale=5.0, size=(7, 11, 2)).astype(np.float32)  # H != W catches a transposed header
    flow[3, 4] = 1e10  # Middlebury's "unknown"
    path = tmp_path / "x.flo"
    write_flo(path, flow)
    raw = path.read_bytes()
    assert raw[:4] == b"PIEH"
    assert np.frombuffer(raw, "<i4", count=2, offset=4).tolist() == [11, 7]  # width first, then height
    assert len(raw) == 12 + 7 * 11 * 2 * 4
    back = read_flo(path)
    assert back.shape == (7, 11, 2) and back.dtype == np.float32
    np.testing.assert_array_equal(back, flow)
    assert not valid_flow_mask(back)[3, 4] and valid_flow_mask(back).sum() == 7 * 11 - 1


def test_flo_u_v_are_interleaved_row_major(tmp_path: Path) -> None:
    # Hand-built file: 2 wide, 1 high; values u00 v00 u01 v01.
    path = tmp_path / "hand.flo"
    path.write_bytes(b"PIEH" + np.array([2, 1], "<i4").tobytes() + np.array([1, 2, 3, 4], "<f4").tobytes())
    flow = read_flo(path)
    assert flow.shape == (1, 2, 2)
    assert flow[0, 0].tolist() == [1, 2] and flow[0, 1].tolist() == [3, 4]


def test_flo_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.flo"):
        read_flo(tmp_path / "missing.flo")
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"PIEX" + bytes(8))
    with pytest.raises(ValueError, match=r"bad\.flo: not a \.flo file"):
        read_flo(bad)
    short = tmp_path / "short.flo"
    write_flo(short, np.zeros((4, 4, 2), np.float32))
    short.write_bytes(short.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"short\.flo: truncated"):
        read_flo(short)
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        write_flo(tmp_path / "x.flo", np.zeros((4, 4, 3), np.float32))


def test_read_middlebury_ground_truth() -> None:
    path = MIDDLEBURY / "RubberWhale" / "flow10.flo"
    if not path.is_file():
        pytest.skip(f"Middlebury data not found at {MIDDLEBURY} (expected <repo>/../shared/data/middlebury)")
    flow = read_flo(path)
    assert flow.shape == (388, 584, 2)
    known = valid_flow_mask(flow)
    assert 0.9 < known.mean() < 1.0  # RubberWhale has a few occluded, unknown pixels
    assert np.linalg.norm(flow[known], axis=-1).max() == pytest.approx(4.6, abs=0.1)  # the data README's max flow


# ------------------------------------------------------------------------------------------------ EPE


def _naive_epe(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    errs = []
    for y in range(gt.shape[0]):
        for x in range(gt.shape[1]):
            u, v = gt[y, x]
            if np.isfinite(u) and np.isfinite(v) and abs(u) < 1e9 and abs(v) < 1e9:
                errs.append(((pred[y, x, 0] - u) ** 2 + (pred[y, x, 1] - v) ** 2) ** 0.5)
    n = len(errs)
    return {
        "epe": sum(errs) / n,
        "1px": sum(e < 1 for e in errs) / n,
        "3px": sum(e < 3 for e in errs) / n,
        "5px": sum(e < 5 for e in errs) / n,
    }


def test_epe_hand_computed_with_unknown_pixels() -> None:
    gt = np.array([[[0, 0], [1, 0], [2, 2]], [[1e10, 0], [0, 0], [np.nan, 0]]], np.float32)
    pred = np.array([[[0, 0], [1, 2], [2, 2]], [[7, 7], [3, 4], [0, 0]]], np.float32)
    # Known pixels: errors 0, 2, 0, 5 (the 3-4-5 triangle); the 1e10 and nan pixels are ignored.
    r = epe(pred, gt)
    assert r == pytest.approx({"epe": 7 / 4, "1px": 2 / 4, "3px": 3 / 4, "5px": 3 / 4})
    assert all(type(v) is float for v in r.values())


def test_epe_matches_naive_loop() -> None:
    rng = np.random.default_rng(1)
    gt = rng.normal(scale=3, size=(9, 13, 2)).astype(np.float32)
    gt[rng.random((9, 13)) < 0.2] = 1e10
    pred = gt + rng.normal(scale=2, size=gt.shape).astype(np.float32)
    assert epe(pred, gt) == pytest.approx(_naive_epe(pred, gt), rel=1e-6)
    # A prediction equal to gt on the known pixels is perfect whatever it says on the unknown ones.
    assert epe(np.where(gt < 1e9, gt, 0), gt) == {"epe": 0.0, "1px": 1.0, "3px": 1.0, "5px": 1.0}


def test_epe_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        epe(np.zeros((4, 4, 2)), np.zeros((4, 5, 2)))
    with pytest.raises(ValueError, match="no known pixel"):
        epe(np.zeros((2, 2, 2)), np.full((2, 2, 2), 1e10))
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        epe(np.zeros((4, 4)), np.zeros((4, 4)))


# ------------------------------------------------------------------------------------------- warping


def _texture(h: int = 40, w: int = 50) -> np.ndarray:
    rng = np.random.default_rng(2)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (5, 5), 1.0)


def test_warp_undoes_an_integer_shift() -> None:
    a = _texture()
    b = np.roll(a, shift=(2, -3), axis=(0, 1))  # b(y + 2, x - 3) = a(y, x): flow (u, v) = (-3, 2)
    flow = np.broadcast_to(np.float32([-3, 2]), (*a.shape[:2], 2)).copy()
    valid = warp_valid_mask(flow)
    assert valid.sum() == (40 - 2) * (50 - 3)
    np.testing.assert_array_equal(warp(b, flow)[valid], a[valid].astype(np.float32))
    assert photometric_error(a, b, flow) == 0.0
    assert photometric_error(a, b, np.zeros_like(flow)) > 5.0  # the wrong flow explains nothing
    assert photometric_error(a, b, -flow) > 5.0  # nor does the reverse one


def test_warp_matches_naive_bilinear() -> None:
    img = _texture(12, 15)[..., 0].astype(np.float32)
    rng = np.random.default_rng(3)
    # Displacements on a 1/32 px grid: cv2.remap quantises bilinear weights to 1/32, so these are exact.
    flow = (rng.integers(-64, 64, (12, 15, 2)) / 32).astype(np.float32)
    out = warp(img, flow)
    for y in range(12):
        for x in range(15):
            sx, sy = x + flow[y, x, 0], y + flow[y, x, 1]
            if not (0 <= sx <= 14 and 0 <= sy <= 11):
                continue
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            x1, y1 = min(x0 + 1, 14), min(y0 + 1, 11)
            fx, fy = sx - x0, sy - y0
            top = (1 - fx) * img[y0, x0] + fx * img[y0, x1]
            bottom = (1 - fx) * img[y1, x0] + fx * img[y1, x1]
            ref = (1 - fy) * top + fy * bottom
            assert out[y, x] == pytest.approx(ref, abs=1e-3), (y, x)


def test_photometric_error_edge_cases() -> None:
    a = _texture(8, 8)
    out_of_frame = np.full((8, 8, 2), 100.0, np.float32)
    assert np.isnan(photometric_error(a, a, out_of_frame))
    with pytest.raises(ValueError, match="same shape"):
        photometric_error(a, a[:4], np.zeros((8, 8, 2), np.float32))
    with pytest.raises(ValueError, match="same H, W"):
        warp(a, np.zeros((4, 8, 2), np.float32))


# ------------------------------------------------------------------------------------------- colour


def test_color_wheel_has_the_middlebury_segments() -> None:
    wheel = color_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])  # red
    np.testing.assert_array_equal(wheel[15], [255, 255, 0])  # yellow after 15 RY steps
    np.testing.assert_array_equal(wheel[21], [0, 255, 0])  # green after 6 YG steps
    np.testing.assert_array_equal(wheel[25], [0, 255, 255])  # cyan after 4 GC steps
    np.testing.assert_array_equal(wheel[36], [0, 0, 255])  # blue after 11 CB steps
    np.testing.assert_array_equal(wheel[49], [255, 0, 255])  # magenta after 13 BM steps


def test_zero_flow_is_white_and_unknown_is_black() -> None:
    flow = np.zeros((3, 4, 2), np.float32)
    flow[0, 0] = 1e10
    img = flow_to_color(flow)
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    assert (img[1:] == 255).all()
    assert (img[0, 0] == 0).all()


def test_hue_turns_with_direction_and_saturation_grows_with_length() -> None:
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    flow = np.stack([np.cos(angles), np.sin(angles)], -1)[None].astype(np.float32)  # (1, 24, 2), |f| = 1
    hsv = cv2.cvtColor(flow_to_color(flow, max_flow=1.0), cv2.COLOR_RGB2HSV)[0].astype(np.int64)  # hue 0..179
    steps = (np.diff(np.r_[hsv[:, 0], hsv[0, 0]]) + 90) % 180 - 90  # circular hue differences
    assert (steps > 0).all(), steps  # going round the directions, the hue turns one way ...
    assert steps.sum() == 180  # ... exactly once round the colour circle
    assert (hsv[:, 1] > 240).all()  # |f| = max_flow: fully saturated
    # Direction -> colour of the Middlebury key: right is red, left is cyan-blue.
    right, left = flow_to_color(np.float32([[[1, 0], [-1, 0]]]), max_flow=1.0)[0]
    assert right.tolist() == [255, 0, 0]
    assert left[2] == 255 and left[0] == 0
    # Same direction, longer vector: more saturated (less white); beyond max_flow: darkened.
    short, long_, over = flow_to_color(np.float32([[[0.2, 0.1], [0.8, 0.4], [4.0, 2.0]]]), max_flow=1.0)[0]
    sat = cv2.cvtColor(np.stack([short, long_, over])[None], cv2.COLOR_RGB2HSV)[0, :, 1]
    assert sat[0] < sat[1]
    assert over.max() < 255 * 0.76


def test_max_flow_defaults_to_the_longest_vector() -> None:
    flow = np.float32([[[3, 0], [6, 0], [1e10, 0]]])
    img = flow_to_color(flow)
    np.testing.assert_array_equal(img, flow_to_color(flow, max_flow=6.0))
    assert img[0, 1].tolist() == [255, 0, 0]  # the longest vector reaches the rim
    with pytest.raises(ValueError, match="max_flow must be > 0"):
        flow_to_color(flow, max_flow=0.0)
