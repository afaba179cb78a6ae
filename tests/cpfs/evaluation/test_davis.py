"""DAVIS scores on hand-made masks, label propagation against a naive loop, and the protocol on 2 real
sequences x 8 frames at reduced size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpfs.evaluation.baselines import colour_features, position_features
from cpfs.evaluation.davis import (
    contour_accuracy_f,
    davis_protocol,
    labels_to_grid,
    mask_boundary,
    propagate_labels,
    region_similarity_j,
)


def square(h: int, w: int, y0: int, x0: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def test_j_identical_disjoint_partial_and_empty() -> None:
    a = square(40, 50, 5, 5, 10)
    assert region_similarity_j(a, a) == 1.0
    assert region_similarity_j(a, square(40, 50, 25, 30, 10)) == 0.0
    assert region_similarity_j(a, square(40, 50, 5, 10, 10)) == pytest.approx(50 / 150)
    assert region_similarity_j(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # empty vs empty
    assert region_similarity_j(np.zeros((4, 4)), square(4, 4, 0, 0, 2)) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        region_similarity_j(np.zeros((4, 4)), np.zeros((4, 5)))


def test_f_identical_disjoint_tolerance_and_empty() -> None:
    a = square(100, 100, 20, 20, 30)
    assert contour_accuracy_f(a, a) == 1.0
    assert contour_accuracy_f(a, square(100, 100, 60, 60, 30)) == 0.0
    # Tolerance: ceil(0.008 * diagonal 141.4) = 2 px; a 1-px shift is within it, a 6-px shift partly not.
    assert contour_accuracy_f(a, square(100, 100, 21, 20, 30)) == 1.0
    assert region_similarity_j(a, square(100, 100, 21, 20, 30)) < 1.0
    assert 0.0 < contour_accuracy_f(a, square(100, 100, 26, 20, 30)) < 1.0
    assert contour_accuracy_f(np.zeros((9, 9)), np.zeros((9, 9))) == 1.0
    assert contour_accuracy_f(np.zeros((9, 9)), square(9, 9, 2, 2, 4)) == 0.0


def test_boundary_is_one_pixel_ring_and_ignores_image_border() -> None:
    b = mask_boundary(square(10, 10, 2, 3, 4))
    assert b.sum() == 12 and not b[3:5, 4:6].any()  # 4x4 square: 16 - 4 interior pixels
    assert mask_boundary(np.ones((6, 6), bool)).sum() == 0  # the whole image: no contour


def naive_propagate(feats: np.ndarray, first: np.ndarray, n_context: int, topk: int, temp: float, radius: float) -> np.ndarray:
    """Loop over query cells and reference cells: -||f_q - f_r||^2 / 2T affinity, top-k, softmax, weighted labels."""
    t_len, _, h, w = feats.shape
    labels = [first.astype(np.float64)]
    for t in range(1, t_len):
        refs = sorted({0, *range(max(1, t - n_context), t)})
        out = np.zeros_like(first, dtype=np.float64)
        for qy in range(h):
            for qx in range(w):
                cands = []
                for r in refs:
                    for ry in range(h):
                        for rx in range(w):
                            if math.hypot(qy - ry, qx - rx) <= radius:
                                d2 = ((feats[t, :, qy, qx] - feats[r, :, ry, rx]) ** 2).sum()
                                cands.append((-d2 / (2 * temp), labels[r][:, ry, rx]))
                cands.sort(key=lambda c: -c[0])
                top = cands[:topk]
                a = np.array([c[0] for c in top])
                wts = np.exp(a - a.max())
                wts /= wts.sum()
                out[:, qy, qx] = sum(wt * c[1] for wt, c in zip(wts, top))
        labels.append(out)
    return np.stack(labels)


def test_propagation_matches_naive_loop() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    first = np.zeros((2, 5, 6))
    first[1, 1:4, 2:5] = 1
    first[0] = 1 - first[1]
    got = propagate_labels(torch.from_numpy(feats), torch.from_numpy(first).float(), n_context=2, topk=4, temperature=0.5, radius=1.5, chunk=7)
    ref = naive_propagate(feats, first, 2, 4, 0.5, 1.5)
    assert np.allclose(got.numpy(), ref, atol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(4, 5, 6), atol=1e-5)  # soft labels stay distributions


def test_identical_frames_propagate_the_first_mask_unchanged() -> None:
    feats = torch.randn(1, 8, 12, 16).expand(5, -1, -1, -1).contiguous()
    first = torch.zeros(2, 12, 16)
    first[1, 3:9, 4:10] = 1
    first[0] = 1 - first[1]
    out = propagate_labels(feats, first, topk=1, temperature=0.1, radius=3)
    assert torch.allclose(out, first.expand(5, -1, -1, -1))


def test_labels_to_grid_reads_the_mask_at_grid_pixels() -> None:
    mask = np.zeros((40, 60), np.int64)
    mask[10:30, 20:40] = 1
    grid = labels_to_grid(mask, 2, (40, 60), 4)
    assert grid.shape == (2, 10, 15)
    assert torch.allclose(grid.sum(0), torch.ones(10, 15))
    assert grid[1, 5, 7] == 1.0 and grid[1, 0, 0] == 0.0


def test_protocol_on_two_real_sequences(davis_root: Path) -> None:
    res = davis_protocol(colour_features("lab", stride=4), davis_root, ["blackswan", "car-shadow"], size=96, max_frames=8)
    assert set(res["sequences"]) == {"blackswan", "car-shadow"}
    for name, s in res["sequences"].items():
        assert s["n_frames"] == 8 and s["n_objects"] == 1
        assert 0.0 <= s["J"] <= 1.0 and 0.0 <= s["F"] <= 1.0
    assert res["J_mean"] == pytest.approx(np.mean([s["J"] for s in res["sequences"].values()]))
    # Colour separates the white swan from the dark water: propagation keeps it (measured J 0.85 at 96 px).
    assert res["sequences"]["blackswan"]["J"] > 0.6
    assert set(res["summary"]) == {"J", "F", "J&F"}


def test_protocol_propagation_beats_a_wrong_first_mask(davis_root: Path, tmp_path: Path) -> None:
    """A control: the same frames with the object's first mask moved to the opposite corner score far worse."""
    src = davis_root / "JPEGImages" / "480p" / "blackswan"
    ann = davis_root / "Annotations" / "480p" / "blackswan"
    frames = tmp_path / "JPEGImages" / "480p" / "moved"
    masks = tmp_path / "Annotations" / "480p" / "moved"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(5):
        (frames / f"{i:05d}.jpg").write_bytes((src / f"{i:05d}.jpg").read_bytes())
        m = np.asarray(Image.open(ann / f"{i:05d}.png").convert("L"))
        if i == 0:
            m = np.roll(m, (m.shape[0] // 2, m.shape[1] // 2), axis=(0, 1))
        Image.fromarray(m).save(masks / f"{i:05d}.png")
    fn = position_features(stride=4)
    wrong = davis_protocol(fn, tmp_path, ["moved"], size=64)["J_mean"]
    right = davis_protocol(fn, davis_root, ["blackswan"], size=64, max_frames=5)["J_mean"]
    assert right > 0.5 > wrong
