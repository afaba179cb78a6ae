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
