"""Readers for the evaluation data sets, in the layouts they are distributed in.

- ImageFolder (torchvision's convention): ``root/<class>/<image>``, one folder per class, classes sorted
  by name and numbered from 0. Used by the linear probe.
- Pascal VOC segmentation: ``root/JPEGImages/<id>.jpg``, ``root/SegmentationClass/<id>.png`` (palette
  PNGs whose *indices* are the class labels, 255 = "void" border, ignored), ``root/ImageSets/Segmentation/
  {train,val}.txt`` (one id per line).
- DAVIS: ``root/JPEGImages/480p/<sequence>/00000.jpg ...`` and ``root/Annotations/480p/<sequence>/00000.png``
  (DAVIS 2016: 0/255 binary masks; DAVIS 2017: palette PNGs with one index per object).
- ``digits_imagefolder``: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes, no
  network) written as an ImageFolder: the embedded smoke-scale default for the linear probe.

Readers only list files and validate the layout (errors name the path and the reason); pixels are read
on demand by ``load_images`` / ``load_mask`` so that a large data set is not held in memory at once.
Images are returned as float32 ``(N, 3, H, W)`` in [0, 1], the trunk's input convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
IGNORE_INDEX = 255  # Pascal VOC's "void" label (object borders, difficult regions)


# -----------------------------------------------------------------------------------------------------------
# Image classification: ImageFolder


@dataclass(frozen=True)
class ImageFolderDataset:
    """An image-classification data set: file paths and integer labels (indices into ``classes``)."""

    root: Path
    paths: tuple[Path, ...]  # one per image
    labels: np.ndarray  # (N,) int64 in [0, len(classes))
    classes: tuple[str, ...]  # class names = folder names, sorted

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: Sequence[int] | np.ndarray) -> "ImageFolderDataset":
        """The images at ``index`` (same classes)."""
        idx = np.asarray(index, dtype=np.int64)
        return ImageFolderDataset(self.root, tuple(self.paths[i] for i in idx), self.labels[idx], self.classes)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def read_image_folder(root: str | Path) -> ImageFolderDataset:
    """List an ImageFolder tree ``root/<class>/<image>``.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: fewer than two class folders hold images (a classifier needs two), or no images at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ImageFolder root is missing or not a folder")
    classes: list[str] = []
    paths: list[Path] = []
    labels: list[int] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if _is_image(p))
        if not images:
            continue  # an empty folder is not a class
        classes.append(folder.name)
        paths.extend(images)
        labels.extend([len(classes) - 1] * len(images))
    if not paths:
        raise ValueError(f"{root}: no images found in class folders (expected root/<class>/*{{{','.join(IMAGE_EXTENSIONS)}}})")
    if len(classes) < 2:
        raise ValueError(f"{root}: only one class folder with images ({classes[0]!r}); a classification data set needs at least 2")
    return ImageFolderDataset(root, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(classes))


def stratified_split(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded train/held-out split that keeps each class's proportion.

    Each class with n images puts ``max(1, round(train_fraction * n))`` of them (at most n - 1) in train,
    the rest in held-out, so both sides see every class that has two or more images.

    Returns:
        ``(train_index, heldout_index)``, sorted int64 arrays.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = min(max(1, int(round(train_fraction * len(idx)))), max(len(idx) - 1, 1))
        train.append(idx[:n_train])
        held.append(idx[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image as float32 ``(3, H, W)`` RGB in [0, 1]; ``size = (H, W)`` resizes it (bilinear)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, 3)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file is missing") from None
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_images(paths: Sequence[str | Path], size: tuple[int, int]) -> np.ndarray:
    """Images resized to ``size = (H, W)``: float32 ``(N, 3, H, W)`` in [0, 1]."""
    if not paths:
        return np.zeros((0, 3, size[0], size[1]), dtype=np.float32)
    return np.stack([load_image(p, size) for p in paths])


# -----------------------------------------------------------------------------------------------------------
# Semantic segmentation: Pascal VOC


@dataclass(frozen=True)
class SegmentationDataset:
    """Image/mask pairs of one split of a segmentation data set."""

    root: Path
    ids: tuple[str, ...]
    image_paths: tuple[Path, ...]
    mask_paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.ids)


def load_mask(path: str | Path) -> np.ndarray:
    """A label mask as int64 ``(H, W)``.

    Palette ("P") PNGs are read as their palette *indices* (VOC, DAVIS 2017): these are the labels, the
    palette colours are only for display. Greyscale masks are read as values; a binary 0/255 mask (DAVIS
    2016) becomes 0/1. Any other mode raises ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask file is missing")
    with Image.open(path) as im:
        if im.mode == "P":
            return np.asarray(im, dtype=np.int64)
        if im.mode in ("L", "1", "I", "I;16"):
            arr = np.asarray(im.convert("L") if im.mode == "1" else im).astype(np.int64)
            values = np.unique(arr)
            if set(values.tolist()) <= {0, 255} and 255 in values:
                arr = (arr == 255).astype(np.int64)  # binary mask: foreground = 1
            return arr
        if im.mode in ("RGB", "RGBA"):
            arr = np.asarray(im.convert("RGB"))
            if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
                grey = arr[..., 0].astype(np.int64)  # a greyscale mask saved as RGB
                return (grey > 127).astype(np.int64) if set(np.unique(grey).tolist()) <= {0, 255} else grey
    raise ValueError(f"{path}: mask must be a palette or greyscale PNG (label per pixel), got mode {im.mode!r}")


def read_voc_segmentation(root: str | Path, split: str) -> SegmentationDataset:
    """List the ``split`` ("train", "val", ...) of a Pascal VOC segmentation tree.

    Raises:
        FileNotFoundError: the split list, an image or a mask named in it is missing (the message names it).
        ValueError: the split list is empty.
    """
    root = Path(root)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: split list is missing (VOC layout: ImageSets/Segmentation/{split}.txt)")
    ids = tuple(line.strip() for line in listing.read_text().splitlines() if line.strip())
    if not ids:
        raise ValueError(f"{listing}: split list is empty")
    images, masks = [], []
    for name in ids:
        image = root / "JPEGImages" / f"{name}.jpg"
        mask = root / "SegmentationClass" / f"{name}.png"
        if not image.is_file():
            raise FileNotFoundError(f"{image}: image of {split} id {name!r} is missing")
        if not mask.is_file():
            raise FileNotFoundError(f"{mask}: segmentation mask of {split} id {name!r} is missing")
        images.append(image)
        masks.append(mask)
    return SegmentationDataset(root, ids, tuple(images), tuple(masks))


# -----------------------------------------------------------------------------------------------------------
# Video object segmentation: DAVIS


@dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence: frame and annotation paths, in frame order."""

    name: str
    frame_paths: tuple[Path, ...]
    mask_paths: tuple[Path, ...]  # same length as frame_paths

    def __len__(self) -> int:
        return len(self.frame_paths)


def list_davis_sequences(root: str | Path, resolution: str = "480p") -> list[str]:
    """Names of the sequences under ``root/JPEGImages/<resolution>``, sorted."""
    frames = Path(root) / "JPEGImages" / resolution
    if not frames.is_dir():
        raise FileNotFoundError(f"{frames}: DAVIS frame folder is missing (layout JPEGImages/{resolution}/<sequence>/)")
    return sorted(p.name for p in frames.iterdir() if p.is_dir())


def read_davis_sequence(root: str | Path, name: str, resolution: str = "480p") -> DavisSequence:
    """List one DAVIS sequence; every frame must have its annotation (the message names a missing one)."""
    root = Path(root)
    frame_dir = root / "JPEGImages" / resolution / name
    mask_dir = root / "Annotations" / resolution / name
    for folder, what in ((frame_dir, "frames"), (mask_dir, "annotations")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: DAVIS {what} folder of sequence {name!r} is missing")
    frames = sorted(p for p in frame_dir.iterdir() if _is_image(p))
    if len(frames) < 2:
        raise ValueError(f"{frame_dir}: sequence {name!r} needs at least 2 frames, found {len(frames)}")
    masks = []
    for frame in frames:
        mask = mask_dir / f"{frame.stem}.png"
        if not mask.is_file():
            raise FileNotFoundError(f"{mask}: annotation of frame {frame.name} of sequence {name!r} is missing")
        masks.append(mask)
    return DavisSequence(name, tuple(frames), tuple(masks))


# -----------------------------------------------------------------------------------------------------------
# Up-front checks: a data set's layout and every file's header, before any protocol runs


def check_image_headers(paths: Sequence[str | Path]) -> None:
    """Open each file's header with Pillow (no pixel decoding: fast even for ImageNet's 1.3 M files).

    Raises:
        ValueError: naming the first file that is missing, not an image, or of a format Pillow cannot read.
    """
    for path in paths:
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 - the header is parsed by open; size is read from it
        except FileNotFoundError:
            raise ValueError(f"{path}: file is missing") from None
        except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
            raise ValueError(f"{path}: not a readable image ({exc})") from None


def check_image_folder(root: str | Path) -> ImageFolderDataset:
    """``read_image_folder`` (a folder, at least two classes with images) plus a header read of every image."""
    data = read_image_folder(root)
    check_image_headers(data.paths)
    return data


def check_voc(root: str | Path, splits: Sequence[str] = ("train", "val")) -> None:
    """The VOC segmentation tree the probe reads: each split's list, image and mask (headers read)."""
    for split in splits:
        data = read_voc_segmentation(root, split)
        check_image_headers(data.image_paths)
        check_image_headers(data.mask_paths)


def check_davis(root: str | Path, sequences: Sequence[str] | None = None, resolution: str = "480p") -> None:
    """The DAVIS tree label propagation reads: ``JPEGImages/`` and ``Annotations/`` folders, the named (or
    every) sequence with at least two frames, an annotation per frame, every header readable."""
    root = Path(root)
    for sub in ("JPEGImages", "Annotations"):
        if not (root / sub / resolution).is_dir():
            raise FileNotFoundError(f"{root / sub / resolution}: DAVIS folder is missing "
                                    f"(layout {sub}/{resolution}/<sequence>/)")
    names = list(sequences) if sequences is not None else list_davis_sequences(root, resolution)
    if not names:
        raise ValueError(f"{root / 'JPEGImages' / resolution}: no DAVIS sequence folders")
    for name in names:
        seq = read_davis_sequence(root, name, resolution)
        check_image_headers(seq.frame_paths)
        check_image_headers(seq.mask_paths)


# -----------------------------------------------------------------------------------------------------------
# The embedded default: scikit-learn's digits as an ImageFolder


def digits_imagefolder(tmpdir: str | Path, size: int = 64, per_class: int | None = None) -> Path:
    """Write scikit-learn's bundled digits (``load_digits``: 8x8, 17 grey levels, 10 classes) as an ImageFolder.

    Each image is upscaled to ``size x size`` (bilinear) and written as an RGB PNG in
    ``tmpdir/digits/<digit>/<index>.png``. ``per_class`` keeps only the first that many of each digit.
    Idempotent: an existing complete tree is reused. Returns the ImageFolder root.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    if size < 8:
        raise ValueError(f"size must be >= 8 px (the digits are 8x8), got {size}")
    root = Path(tmpdir) / "digits"
    digits = load_digits()
    images = digits.images  # (1797, 8, 8) float64 in [0, 16]
    target = digits.target
    keep = np.arange(len(target))
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        keep = np.concatenate([np.flatnonzero(target == c)[:per_class] for c in range(10)])
    for i in keep:
        path = root / str(int(target[i])) / f"{int(i):04d}.png"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = np.clip(images[i] / 16.0 * 255.0, 0, 255).astype(np.uint8)  # (8, 8)
        im = Image.fromarray(grey).resize((size, size), Image.BILINEAR).convert("RGB")
        im.save(path)
    return root
