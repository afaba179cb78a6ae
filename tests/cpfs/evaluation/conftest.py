"""Shared fixtures of the evaluation tests: data-set layouts made on the fly, the shared real data, and one
torch thread per test (the test machine's 2 cores are shared; more threads only contend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# CI clones the repository beside shared/: <repo>/../shared/data
SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
DAVIS_ROOT = SHARED_DATA / "davis"


@pytest.fixture
def davis_root() -> Path:
    if not (DAVIS_ROOT / "JPEGImages" / "480p").is_dir():
        pytest.skip(f"DAVIS test sequences not found at {DAVIS_ROOT.resolve()} (shared data folder absent)")
    return DAVIS_ROOT


def stripes(angle_deg: float, size: int, period: float, phase: float, colour: tuple[int, int, int]) -> np.ndarray:
    """(size, size, 3) uint8 sinusoidal stripes at ``angle_deg`` in ``colour`` on black."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    a = np.deg2rad(angle_deg)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period + phase)
    return (wave[..., None] * np.asarray(colour, dtype=np.float64)).astype(np.uint8)


@pytest.fixture
def orientation_folder(tmp_path: Path) -> Path:
    """ImageFolder with 3 linearly separable classes: stripes at 0, 60 and 120 degrees (random phase,
    period and tint), 12 images each, 64x64."""
    rng = np.random.default_rng(0)
    root = tmp_path / "orientations"
    for name, angle in (("a000", 0.0), ("a060", 60.0), ("a120", 120.0)):
        (root / name).mkdir(parents=True)
        for i in range(12):
            colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
            img = stripes(angle, 64, float(rng.uniform(7, 11)), float(rng.uniform(0, 2 * np.pi)), colour)
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 251 + [224, 224, 192]


def write_palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask.astype(np.uint8))
    im = im.convert("P") if im.mode != "P" else im
    im.putpalette(VOC_PALETTE)
    im.save(path)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A Pascal VOC segmentation tree: 6 train + 3 val 72x96 images; class 1 = red blob, 2 = blue blob on a
    grey background (class 0), 255 (void) on a 2-px ring around each blob, palette PNG masks."""
    rng = np.random.default_rng(1)
    root = tmp_path / "VOC"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = {"train": [f"tr{i}" for i in range(6)], "val": [f"va{i}" for i in range(3)]}
    yy, xx = np.mgrid[0:72, 0:96]
    for split, names in ids.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            img = np.full((72, 96, 3), 128, np.float64) + rng.normal(0, 8, (72, 96, 3))
            mask = np.zeros((72, 96), np.uint8)
            for cls, colour in ((1, (220, 30, 30)), (2, (30, 30, 220))):
                cy, cx, r = rng.integers(18, 54), rng.integers(18, 78), rng.integers(8, 14)
                d = np.hypot(yy - cy, xx - cx)
                img[d < r] = np.asarray(colour) + rng.normal(0, 8, 3)
                mask[(d >= r) & (d < r + 2) & (mask == 0)] = 255
                mask[d < r] = cls
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            write_palette_png(mask, root / "SegmentationClass" / f"{name}.png")
    return root


FG_H, FG_W = 48, 64  # frames of the synthetic DAVIS-layout trees


def write_square_davis(root: Path, sequences: dict[str, int], seed: int) -> np.ndarray:
    """A DAVIS-layout tree (``JPEGImages/480p/<seq>/00000.png``, ``Annotations/480p/<seq>/00000.png`` 0/255):
    a pure red square (10-16 px, seeded place) on a pure blue background in every frame, the square's mask as
    foreground. PNG frames, so colours are exact. Returns every mask, (frames, H, W) bool, in listing order."""
    rng = np.random.default_rng(seed)
    masks = []
    for name, n in sequences.items():
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (root / "Annotations" / "480p" / name).mkdir(parents=True)
        for t in range(n):
            side = int(rng.integers(10, 17))
            y, x = int(rng.integers(0, FG_H - side)), int(rng.integers(0, FG_W - side))
            mask = np.zeros((FG_H, FG_W), bool)
            mask[y : y + side, x : x + side] = True
            img = np.zeros((FG_H, FG_W, 3), np.uint8)
            img[..., 2] = 255
            img[mask] = (255, 0, 0)
            Image.fromarray(img).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "Annotations" / "480p" / name / f"{t:05d}.png")
            masks.append(mask)
    return np.stack(masks)


@pytest.fixture
def square_davis(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """Two DAVIS-layout trees that share no sequence: ``fit`` (sequences a, b: 4 frames each) and ``test``
    (c: 3 frames, d: 2). Returns ``(fit_root, test_root, test masks)``."""
    fit, test = tmp_path / "davis-fit", tmp_path / "davis-test"
    write_square_davis(fit, {"a": 4, "b": 4}, seed=0)
    return fit, test, write_square_davis(test, {"c": 3, "d": 2}, seed=1)
