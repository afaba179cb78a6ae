"""The DAVIS measures against the official definitions (davis2017-evaluation): boundary maps drawn by hand, the
disk against its formula, precision and recall computed by hand, naive loops, and mean/recall/decay on
hand-made per-frame series."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from cpfs.evaluation.davis_measures import (
    Statistics,
    boundary_precision_recall,
    boundary_radius,
    contour_accuracy_f,
    dataset_scores,
    decay_bins,
    disk,
    frame_statistics,
    object_ids,
    region_similarity_j,
    seg2bmap,
    sequence_scores,
)


def grid(rows: str) -> np.ndarray:
    """A bool mask drawn as text: one line per row, '#' or '1' set, '.' or '0' clear."""
    return np.array([[c in "#1" for c in line.strip()] for line in rows.strip().splitlines()])


def square(h: int, w: int, y0: int, x0: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def naive_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The definition pixel by pixel: differs from its east, south or south-east neighbour; in the last row only
    east, in the last column only south, the bottom-right pixel never."""
    h, w = seg.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            neighbours = [(y, x + 1)] if y == h - 1 else [(y + 1, x)] if x == w - 1 else [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            out[y, x] = any(seg[ny, nx] != seg[y, x] for ny, nx in neighbours)
    return out


def naive_precision_recall(pred: np.ndarray, gt: np.ndarray, radius: int) -> tuple[float, float]:
    """Every boundary pixel against every other boundary pixel: matched when within ``radius`` (Euclidean)."""
    pb, gb = np.argwhere(naive_seg2bmap(pred)), np.argwhere(naive_seg2bmap(gt))
    if len(pb) == 0 or len(gb) == 0:
        return (1.0 if len(pb) == 0 else 0.0), (1.0 if len(gb) == 0 else 0.0)
    d2 = ((pb[:, None, :] - gb[None, :, :]) ** 2).sum(-1)  # (n_pred, n_gt)
    return float((d2.min(1) <= radius**2).mean()), float((d2.min(0) <= radius**2).mean())


# -----------------------------------------------------------------------------------------------------------
# Boundary map and disk


def test_seg2bmap_of_a_square_is_a_ring_half_a_pixel_towards_the_origin() -> None:
    seg = grid("""
        ......
        ..##..
        ..##..
        ......
        ......
    """)
    assert np.array_equal(seg2bmap(seg), grid("""
        .###..
        .#.#..
        .###..
        ......
        ......
    """))


def test_seg2bmap_image_border_is_not_a_contour() -> None:
    corner = grid("""
        ....
        ....
        ..##
        ..##
    """)
    assert np.array_equal(seg2bmap(corner), grid("""
        ....
        .###
        .#..
        .#..
    """))  # last row: east only ((3, 1) differs from (3, 2)); last column: south only; (3, 3) never
    one = np.zeros((4, 4), bool)
    one[3, 3] = True
    assert np.array_equal(seg2bmap(one), grid("""
        ....
        ....
        ..##
        ..#.
    """))
    assert not seg2bmap(np.ones((6, 7), bool)).any()  # the whole image: no boundary at all
    assert not seg2bmap(np.zeros((6, 7), bool)).any()
    assert np.array_equal(seg2bmap(grid("..##.")), grid(".#.#."))  # one row: east neighbours only


def test_seg2bmap_equals_the_definition_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (1, 6), (5, 1), (9, 13), (12, 8)):
        seg = rng.random(shape) < 0.4
        assert np.array_equal(seg2bmap(seg), naive_seg2bmap(seg)), shape
    with pytest.raises(ValueError, match="2-D"):
        seg2bmap(np.zeros((2, 3, 1)))


def test_disk_is_the_offsets_within_the_radius() -> None:
    assert np.array_equal(disk(0), [[True]])
    assert np.array_equal(disk(1), grid(".#.\n###\n.#."))
    assert np.array_equal(disk(2), grid("""
        ..#..
        .###.
        #####
        .###.
        ..#..
    """))
    for r in range(11):
        d = disk(r)
        assert d.shape == (2 * r + 1, 2 * r + 1)
        for y in range(2 * r + 1):
            for x in range(2 * r + 1):
                assert d[y, x] == ((y - r) ** 2 + (x - r) ** 2 <= r * r)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="whole number"):
            disk(bad)  # type: ignore[arg-type]


def test_disk_is_smaller_than_the_opencv_ellipse_used_before() -> None:
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17)).astype(bool)
    d = disk(8)
    assert d.sum() == 197 and ellipse.sum() == 213 and not (d & ~ellipse).any()
    assert ellipse[8 + 1, 8 + 8] and not d[8 + 1, 8 + 8]  # offset (1, 8): 65 > 64


def test_boundary_radius() -> None:
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6) = ceil(7.84)
    assert boundary_radius((100, 100)) == 2  # ceil(1.13)
    assert boundary_radius((1080, 1920)) == 18  # ceil(0.008 * 2202.9) = ceil(17.6)
    assert boundary_radius((480, 854), 3) == 3 and boundary_radius((10, 10), 1.0) == 1
    with pytest.raises(ValueError, match="whole"):
        boundary_radius((480, 854), 2.5)
    with pytest.raises(ValueError, match="> 0"):
        boundary_radius((480, 854), 0.0)


# -----------------------------------------------------------------------------------------------------------
# J and F


def test_j_identical_disjoint_partial_and_empty() -> None:
    a = square(40, 50, 5, 5, 10)
    assert region_similarity_j(a, a) == 1.0
    assert region_similarity_j(a, square(40, 50, 25, 30, 10)) == 0.0
    assert region_similarity_j(a, square(40, 50, 5, 10, 10)) == pytest.approx(50 / 150)
    assert region_similarity_j(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # empty union: 1
    assert region_similarity_j(np.zeros((4, 4)), square(4, 4, 0, 0, 2)) == 0.0
    assert region_similarity_j(square(4, 4, 0, 0, 2), np.zeros((4, 4))) == 0.0
    assert region_similarity_j(np.full((3, 3), 7), np.ones((3, 3))) == 1.0  # any non-zero is the object
    with pytest.raises(ValueError, match="same shape"):
        region_similarity_j(np.zeros((4, 4)), np.zeros((4, 5)))


def test_f_of_a_step_against_a_straight_edge_by_hand() -> None:
    """480 x 854 (radius 8). Truth: rows >= 100, boundary row 99 (854 px). Prediction: rows >= 100 left of column
    a, rows >= 112 from column a on; boundary row 99 for columns < a (a px), column a-1 for rows 100..111 (12 px),
    row 111 for columns >= a (854 - a px). Matched predicted: row 99 and rows 100..107 of the step: a + 8.
    Matched true: columns 0..a+7 (column x >= a is (x - a + 1) from (99, a-1)): a + 8."""
    a, w = 400, 854
    gt = np.zeros((480, w), bool)
    gt[100:] = True
    pred = gt.copy()
    pred[100:112, a:] = False
    precision, recall = boundary_precision_recall(pred, gt)
    assert precision == pytest.approx((a + 8) / (w + 12), abs=1e-6)
    assert recall == pytest.approx((a + 8) / w, abs=1e-6)
    assert contour_accuracy_f(pred, gt) == pytest.approx(2 * (a + 8) / (2 * w + 12), abs=1e-6)
    assert boundary_precision_recall(gt, pred) == pytest.approx((recall, precision), abs=1e-12)  # roles swap


def test_f_shift_within_and_beyond_the_radius() -> None:
    gt = np.zeros((480, 854), bool)
    gt[100:] = True
    for shift, want in ((8, 1.0), (9, 0.0)):  # radius 8 included, 9 not
        pred = np.zeros_like(gt)
        pred[100 + shift :] = True
        assert contour_accuracy_f(pred, gt) == want, shift
        assert region_similarity_j(pred, gt) < 1.0


def test_f_where_the_disk_and_the_old_ellipse_differ() -> None:
    """One pixel each, the prediction (1, 8) from the truth at 480 x 854. Their boundaries are 2x2 blocks:
    truth {199, 200} x {299, 300}, prediction {200, 201} x {307, 308}. Of the prediction's pixels only (201, 308)
    is beyond 8 of every true one ((1, 8) from (200, 300)): precision 3/4; of the truth's only (199, 299)
    ((1, 8) from (200, 307)): recall 3/4. The earlier measure (OpenCV's 17x17 ellipse, which holds (1, 8), and
    the pixels themselves as boundaries) gave 1."""
    gt, pred = np.zeros((480, 854), bool), np.zeros((480, 854), bool)
    gt[200, 300] = True
    pred[201, 308] = True
    assert boundary_precision_recall(pred, gt) == pytest.approx((0.75, 0.75), abs=1e-6)
    assert contour_accuracy_f(pred, gt) == pytest.approx(0.75, abs=1e-6)
    pred[201, 308], pred[200, 308] = False, True  # (0, 8): every pixel within the disk
    assert contour_accuracy_f(pred, gt) == 1.0


def test_f_empty_boundaries() -> None:
    empty, sq, full = np.zeros((9, 9), bool), square(9, 9, 2, 2, 4), np.ones((9, 9), bool)
    assert boundary_precision_recall(empty, sq) == (1.0, 0.0) and contour_accuracy_f(empty, sq) == 0.0
    assert boundary_precision_recall(sq, empty) == (0.0, 1.0) and contour_accuracy_f(sq, empty) == 0.0
    assert boundary_precision_recall(empty, empty) == (1.0, 1.0) and contour_accuracy_f(empty, empty) == 1.0
    # A mask covering the image has no boundary: against the empty mask F is 1 (J is 0), against a square 0.
    assert contour_accuracy_f(full, empty) == 1.0 and region_similarity_j(full, empty) == 0.0
    assert contour_accuracy_f(full, sq) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        contour_accuracy_f(np.zeros((4, 4)), np.zeros((5, 4)))


def test_f_equals_a_naive_loop_over_boundary_pixels() -> None:
    rng = np.random.default_rng(1)
    for i in range(6):
        h, w = 20 + i, 31 - i
        gt = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 2.0) > 0.5  # blobs, some touching the border
        pred = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 2.0) > 0.5
        for radius in (1, 3):
            assert boundary_precision_recall(pred, gt, radius) == pytest.approx(naive_precision_recall(pred, gt, radius), abs=1e-12)
    pred, gt = square(100, 100, 20, 20, 30), square(100, 100, 26, 20, 30)  # 0.008 of the diagonal: radius 2
    assert boundary_precision_recall(pred, gt) == pytest.approx(naive_precision_recall(pred, gt, 2), abs=1e-12)
    assert 0.0 < contour_accuracy_f(pred, gt) < 1.0


def test_object_ids_count_up_to_the_largest_label_without_void() -> None:
    assert object_ids(np.array([[0, 2], [255, 0]])) == [1, 2]  # 1 absent from frame 0 is still an object
    assert object_ids(np.array([[0, 1], [1, 0]])) == [1]
    for bad in (np.zeros((2, 2)), np.array([[0, 255]])):
        with pytest.raises(ValueError, match="no object"):
            object_ids(bad)


# -----------------------------------------------------------------------------------------------------------
# Mean, recall, decay; per sequence and per data set


def test_decay_bins_round_halves_up_and_share_their_ends() -> None:
    assert decay_bins(7) == [(0, 3), (2, 4), (3, 6), (5, 7)]  # ids 0 2 3 5 6: linspace 2.5 and 5.5 round up
    assert decay_bins(6) == [(0, 2), (1, 4), (3, 5), (4, 6)]
    assert decay_bins(4) == [(0, 2), (1, 3), (2, 3), (2, 4)]
    assert decay_bins(1) == [(0, 1)] * 4
    with pytest.raises(ValueError, match="at least one"):
        decay_bins(0)


def test_frame_statistics_on_hand_made_series() -> None:
    s = frame_statistics([0.9, 0.8, 0.6, 0.4, 0.3, 0.2])
    assert s.mean == pytest.approx(3.2 / 6) and s.recall == pytest.approx(3 / 6)  # 0.9 0.8 0.6 above 0.5
    assert s.decay == pytest.approx((0.9 + 0.8) / 2 - (0.3 + 0.2) / 2)
    s = frame_statistics([1, 1, 0.5, 0.5, 0.5, 0, 0])  # 0.5 is not above 0.5; first bin 3 frames, last 2
    assert (s.mean, s.recall, s.decay) == pytest.approx((0.5, 2 / 7, 5 / 6))
    assert frame_statistics([0.7]) == Statistics(0.7, 1.0, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        frame_statistics([])


def test_sequence_and_data_set_scores_average_over_objects() -> None:
    j = np.array([[1.0, 1.0, 1.0], [0.2, 0.4, 0.6]])  # (objects, frames)
    f = np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    seq = sequence_scores(j, f, [1, 2])
    # Object 1: J 1, recall 1, decay 0; F 0.5, recall 1/3, decay 0.75 - 0. Object 2: J 0.4, recall 1/3, decay
    # 0.3 - 0.6; F 0, 0, 0. Three frames: decay = mean(x0, x1) - x2.
    want = {"J": 0.7, "F": 0.25, "J&F": 0.475, "J_recall": 2 / 3, "J_decay": -0.15, "F_recall": 1 / 6, "F_decay": 0.375}
    assert {k: seq[k] for k in want} == pytest.approx(want)
    assert [r["object"] for r in seq["per_object"]] == [1, 2]
    assert seq["per_object"][1]["J"] == pytest.approx(0.4) and seq["per_object"][1]["J_decay"] == pytest.approx(-0.3)
    other = sequence_scores(np.full((1, 3), 0.1), np.full((1, 3), 0.1))
    total = dataset_scores({"two": seq, "one": other})
    # Over the three objects (1, 0.4, 0.1), not over the two sequences (0.7, 0.1 -> 0.4).
    assert total["J_mean"] == pytest.approx(0.5) and total["F_mean"] == pytest.approx(0.2)
    assert total["JF_mean"] == pytest.approx(0.35) and total["n_objects"] == 3
    assert total["J_recall"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert total["J_std"] == pytest.approx(np.std([1, 0.4, 0.1]))
    assert dataset_scores([seq, other]) == total
    with pytest.raises(ValueError, match="same shape"):
        sequence_scores(j, f[:, :2])
    with pytest.raises(ValueError, match="labels"):
        sequence_scores(j, f, [1])
