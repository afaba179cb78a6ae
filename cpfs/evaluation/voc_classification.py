"""Pascal VOC 2007 classification: the data set layout and average precision exactly as the VOC devkit defines them.

Layout (``VOCdevkit/VOC2007``)::

    JPEGImages/<id>.jpg
    ImageSets/Main/<class>_<split>.txt      one line per image of the split: "<id> <label>",
                                            label 1 (present), -1 (absent) or 0 (only "difficult" instances)

Average precision is a port of the devkit's ``VOCevalcls.m`` (VOCdevkit 2007/2012): images are sorted by
decreasing score (``sort(-out)``, stable, as MATLAB's ``sort``); ``tp = gt > 0``, ``fp = gt < 0`` (a difficult
image, ``gt == 0``, is neither and only keeps its place in the ranking); cumulative sums give ``rec = tp /
#positives`` and ``prec = tp / (tp + fp)``. VOC 2007 reports the 11-point interpolated AP
``mean over t in {0, 0.1, ..., 1} of max(prec[rec >= t])`` (0 where no recall reaches t); VOC 2010 onwards the
area under the monotone precision envelope (``"area"``, ``VOCap.m``). mAP is the mean over the classes.
Departure: a class without a positive image (possible only in a made-up tree) has no AP and is left out of
the mean (the devkit would divide by zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

APMode = Literal["11point", "area"]
# ``t = 0:0.1:1`` to the bit, as MATLAB's colon computes it (the first half a + k*d, the second b - (n - k)*d):
# 0.30000000000000004 but 0.7 itself, so a recall of exactly 3/10 misses t = 0.3 and 7/10 reaches t = 0.7, as in
# the devkit (numpy's linspace and arange would give 0.7000000000000001 there).
ELEVEN_POINTS: tuple[float, ...] = tuple(k * 0.1 if k < 5 else 1.0 - (10 - k) * 0.1 for k in range(11))


@dataclass(frozen=True)
class MultiLabelDataset:
    """One split of a multi-label classification set: image paths and the devkit's ground truth per class."""

    root: Path
    ids: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # (N, C) int8: 1 present, -1 absent, 0 difficult only (ignored when scoring)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _read_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
            raise ValueError(f"{path}:{number}: expected '<image id> <1|-1|0>', got {line.strip()!r}")
        rows.append((parts[0], int(parts[1])))
    return rows


def read_voc_classification(root: str | Path, split: str, classes: Sequence[str] | None = None) -> MultiLabelDataset:
    """The ``split`` ("trainval", "test", ...) of a VOC-layout classification set at ``root``.

    ``classes``: default the 20 VOC classes when all their lists exist, else every ``<class>_<split>.txt``
    found (sorted), for a smaller tree in the same layout.

    Raises:
        FileNotFoundError: no ``ImageSets/Main/<class>_<split>.txt``, or an image missing (naming it).
        ValueError: a malformed line, or class lists that disagree on the images of the split.
    """
    root = Path(root).expanduser()
    main = root / "ImageSets" / "Main"
    if classes is None:
        found = sorted(p.name[: -len(f"_{split}.txt")] for p in main.glob(f"*_{split}.txt")) if main.is_dir() else []
        classes = VOC_CLASSES if set(VOC_CLASSES) <= set(found) else found
    if not classes:
        raise FileNotFoundError(f"{main}: no <class>_{split}.txt lists (expected the VOC2007 layout)")
    ids: list[str] | None = None
    columns = []
    for name in classes:
        path = main / f"{name}_{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: class list is missing")
        rows = _read_list(path)
        if ids is None:
            ids = [i for i, _ in rows]
        elif [i for i, _ in rows] != ids:
            raise ValueError(f"{path}: lists other images than {main / f'{classes[0]}_{split}.txt'} (the devkit needs "
                             "every class list of a split to hold the same images in the same order)")
        columns.append([label for _, label in rows])
    assert ids is not None
    if not ids:
        raise ValueError(f"{main / f'{classes[0]}_{split}.txt'}: the split {split!r} lists no image")
    paths = tuple(root / "JPEGImages" / f"{i}.jpg" for i in ids)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: image of split {split!r} is missing ({len(missing)} missing in all)")
    labels = np.asarray(columns, dtype=np.int8).T  # (N, C)
    return MultiLabelDataset(root, tuple(ids), paths, labels, tuple(classes))


def average_precision(scores: np.ndarray, gt: np.ndarray, mode: APMode = "11point") -> float:
    """AP of one class (``VOCevalcls.m``): ``scores (N,)`` confidences, ``gt (N,)`` in {1, -1, 0}.

    Returns NaN when ``gt`` has no positive (the devkit's recall would divide by zero)."""
    scores, gt = np.asarray(scores, dtype=np.float64), np.asarray(gt)
    if scores.shape != gt.shape or scores.ndim != 1:
        raise ValueError(f"scores and gt must be 1-d of the same length, got {scores.shape} and {gt.shape}")
    if not np.isin(gt, (1, -1, 0)).all():
        raise ValueError("gt must hold 1 (present), -1 (absent) or 0 (difficult) only")
    n_pos = int((gt > 0).sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")  # [so, si] = sort(-out): stable, as MATLAB's sort
    tp = np.cumsum(gt[order] > 0)
    fp = np.cumsum(gt[order] < 0)
    rec = tp / n_pos
    with np.errstate(invalid="ignore"):  # leading difficult images: 0 / 0, never the max of a non-empty set
        prec = tp / (fp + tp)
    if mode == "11point":
        ap = 0.0
        for t in ELEVEN_POINTS:
            reached = prec[rec >= t]
            p = np.nanmax(reached) if reached.size and not np.isnan(reached).all() else 0.0
            ap += p / 11.0
        return float(ap)
    if mode == "area":  # VOCap.m
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[0.0], np.nan_to_num(prec), [0.0]])
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))
    raise ValueError(f"mode must be '11point' or 'area', got {mode!r}")


def mean_average_precision(scores: np.ndarray, gt: np.ndarray, mode: APMode = "11point") -> float:
    """mAP over classes: ``scores (N, C)``, ``gt (N, C)`` -> the mean AP of the classes that have a positive."""
    scores, gt = np.asarray(scores), np.asarray(gt)
    if scores.shape != gt.shape or scores.ndim != 2:
        raise ValueError(f"scores and gt must both be (N, C), got {scores.shape} and {gt.shape}")
    aps = [average_precision(scores[:, c], gt[:, c], mode) for c in range(gt.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    if not aps:
        raise ValueError("no class has a positive image: mAP is undefined")
    return float(np.mean(aps))
