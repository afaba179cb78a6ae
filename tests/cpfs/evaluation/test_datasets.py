"""Readers of the evaluation layouts: ImageFolder, Pascal VOC segmentation, DAVIS, the digits default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpfs.evaluation.datasets import (
    digits_imagefolder,
    list_davis_sequences,
    load_images,
    load_mask,
    read_davis_sequence,
    read_image_folder,
    read_voc_segmentation,
    stratified_split,
)


def test_image_folder_lists_classes_in_order(orientation_folder: Path) -> None:
    ds = read_image_folder(orientation_folder)
    assert ds.classes == ("a000", "a060", "a120")
    assert len(ds) == 36 and np.bincount(ds.labels).tolist() == [12, 12, 12]
    assert all(p.parent.name == ds.classes[l] for p, l in zip(ds.paths, ds.labels))
    images = load_images(ds.paths[:4], (32, 40))
    assert images.shape == (4, 3, 32, 40) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.3


def test_image_folder_with_one_class_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    (tmp_path / "empty_class").mkdir()  # an empty folder is not a class
    with pytest.raises(ValueError, match=rf"{tmp_path}.*only one class"):
        read_image_folder(tmp_path)


def test_image_folder_without_images_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("no image")
    with pytest.raises(ValueError, match=rf"{tmp_path}.*no images"):
        read_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_image_folder(tmp_path / "nope")


def test_stratified_split_keeps_every_class_on_both_sides_and_is_seeded() -> None:
    labels = np.repeat([0, 1, 2], [10, 4, 2])
    tr, te = stratified_split(labels, 0.7, seed=3)
    assert set(tr) | set(te) == set(range(16)) and not set(tr) & set(te)
    for c in (0, 1, 2):
        assert (labels[tr] == c).any() and (labels[te] == c).any()
    assert np.array_equal(tr, stratified_split(labels, 0.7, seed=3)[0])
    assert not np.array_equal(tr, stratified_split(labels, 0.7, seed=4)[0])
    with pytest.raises(ValueError, match="train_fraction"):
        stratified_split(labels, 1.0, 0)


def test_voc_masks_are_read_as_palette_indices(voc_root: Path) -> None:
    ds = read_voc_segmentation(voc_root, "train")
    assert ds.ids == tuple(f"tr{i}" for i in range(6))
    mask = load_mask(ds.mask_paths[0])
    with Image.open(ds.mask_paths[0]) as im:
        assert im.mode == "P"
        rgb = np.asarray(im.convert("RGB"))
    assert mask.dtype == np.int64 and mask.shape == (72, 96)
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 255} and {1, 2, 255} <= set(np.unique(mask).tolist())
    # The indices are the labels even though the palette colours are something else (class 1 is dark red).
    assert (rgb[mask == 1] == [128, 0, 0]).all()


def test_voc_missing_mask_names_the_file(voc_root: Path) -> None:
    (voc_root / "SegmentationClass" / "va1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass/va1\.png.*missing"):
        read_voc_segmentation(voc_root, "val")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/test\.txt"):
        read_voc_segmentation(voc_root, "test")


def test_binary_mask_becomes_zero_one(tmp_path: Path) -> None:
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:5] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png"), (m == 255).astype(np.int64))
    with pytest.raises(FileNotFoundError, match="x.png: mask file is missing"):
        load_mask(tmp_path / "x.png")


def test_davis_layout(davis_root: Path) -> None:
    names = list_davis_sequences(davis_root)
    assert {"blackswan", "car-shadow", "dog", "libby"} <= set(names)
    seq = read_davis_sequence(davis_root, "blackswan")
    assert len(seq) == 50 and seq.frame_paths[0].name == "00000.jpg" and seq.mask_paths[0].name == "00000.png"
    mask = load_mask(seq.mask_paths[0])
    assert mask.shape == (480, 854) and set(np.unique(mask).tolist()) == {0, 1}


def test_davis_missing_annotation_names_the_file(tmp_path: Path) -> None:
    frames = tmp_path / "JPEGImages" / "480p" / "seq"
    masks = tmp_path / "Annotations" / "480p" / "seq"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16)).save(frames / f"{i:05d}.jpg")
    for i in range(2):
        Image.new("L", (16, 16)).save(masks / f"{i:05d}.png")
    with pytest.raises(FileNotFoundError, match=r"seq/00002\.png.*missing"):
        read_davis_sequence(tmp_path, "seq")


def test_digits_imagefolder_is_a_valid_image_folder(tmp_path: Path) -> None:
    root = digits_imagefolder(tmp_path, size=32, per_class=3)
    ds = read_image_folder(root)
    assert ds.classes == tuple(str(d) for d in range(10)) and len(ds) == 30
    img = load_images(ds.paths[:1], (32, 32))[0]
    assert img.shape == (3, 32, 32) and np.allclose(img[0], img[1])  # grey digits written as RGB
    assert img.max() > 0.5 and img.min() < 0.1  # a stroke on a dark background
    assert digits_imagefolder(tmp_path, size=32, per_class=3) == root  # idempotent
