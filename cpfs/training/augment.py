"""Augmentation of a training item: one random-scale square crop, a horizontal flip, colour jitter and an optional
grayscale, applied consistently to an image and its flow (pure numpy; ``cpfs.training.data`` draws and applies
it per item). ``draw_crop`` always consumes the same random numbers in the same order, so a resumed run draws
what an uninterrupted one would."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cpfs.config import AugmentConfig



@dataclass(frozen=True)
class CropParams:
    """One draw of the augmentation: a square source window, its resize factor, a flip and jitter factors."""

    y0: int  # top of the source window, px
    x0: int  # left of the source window, px
    side: int  # side of the square source window, px (resized to ``crop``)
    flip: bool  # mirror horizontally
    brightness: float  # multiplicative factors, 1.0 = unchanged
    contrast: float
    saturation: float
    gray: bool = False  # replace the image by its luma (all three channels), after the jitter


def draw_crop(rng: np.random.Generator, height: int, width: int, crop: int, augment: AugmentConfig | None) -> CropParams:
    """Draw the augmentation of one item. Always consumes the same random numbers in the same order, so two
    configs that differ only in, e.g., the flip probability give the same window for the same draw.

    Random-scale crop: factor ``s ~ U[scale_min, scale_max]``; the source window has side ``round(crop / s)``,
    shrunk to the frame's shorter side when it does not fit (the effective factor is then ``crop / side``).
    Without augmentation: the centred window of side ``min(crop, H, W)`` (scale 1 when the frame is large
    enough, else the whole shorter side, resized up).
    """
    u = rng.random(8)  # scale, y, x, flip, brightness, contrast, saturation, grayscale
    short = min(height, width)
    if augment is None or not augment.enabled:
        side = min(crop, short)
        return CropParams((height - side) // 2, (width - side) // 2, side, False, 1.0, 1.0, 1.0)
    s = augment.scale_min + (augment.scale_max - augment.scale_min) * u[0]
    side = int(min(max(round(crop / s), 1), short))
    y0 = int(u[1] * (height - side + 1))
    x0 = int(u[2] * (width - side + 1))
    j = augment.color_jitter
    return CropParams(
        y0=min(y0, height - side),
        x0=min(x0, width - side),
        side=side,
        flip=bool(u[3] < augment.hflip),
        brightness=1.0 + j * (2.0 * u[4] - 1.0),
        contrast=1.0 + j * (2.0 * u[5] - 1.0),
        saturation=1.0 + j * (2.0 * u[6] - 1.0),
        gray=bool(u[7] < augment.grayscale),
    )


def _gray(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (h, w, 3) RGB float image -> (h, w, 1)."""
    return (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(h, w, C)`` float32 to ``(size, size, C)`` (half-pixel centres, as OpenCV's
    INTER_LINEAR). Done with torch, not OpenCV: OpenCV's thread pool deadlocks in a DataLoader worker forked from
    a process that already used it (seen here: ``cv2.setNumThreads`` hung in ``pthread_cond_destroy``)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).unsqueeze(0)  # (1, C, h, w)
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()  # (size, size, C)


def augment_pair(image: np.ndarray, flow: np.ndarray, params: CropParams, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply one augmentation draw to a frame and its forward flow.

    - crop the square window ``[y0, y0+side) x [x0, x0+side)`` of both and resize it to ``crop x crop``
      (bilinear, ``_resize``); the flow's values are multiplied by the resize factor ``crop / side`` (flow is in pixels:
      resizing the image by k multiplies every displacement by k);
    - horizontal flip: mirror both, and negate the flow's x component (a motion to the right becomes a
      motion to the left);
    - colour jitter (image only): brightness ``I*b``, contrast ``(I - mean(gray))*c + mean(gray)``,
      saturation ``gray + (I - gray)*s``, clipped to [0, 1];
    - grayscale (image only): the jittered image replaced by its luma in all three channels, so that
      the pixels of one moving object cannot be grouped by their colour alone.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        flow: ``(H, W, 2)`` float32 px, (u, v) = (x, y) displacement.
    Returns:
        image ``(crop, crop, 3)`` float32 in [0, 1], flow ``(crop, crop, 2)`` float32 px.
    """
    if image.ndim != 3 or image.shape[2] != 3 or flow.shape != image.shape[:2] + (2,):
        raise ValueError(f"need image (H, W, 3) and flow (H, W, 2) of the same size, got {image.shape} and {flow.shape}")
    y0, x0, side = params.y0, params.x0, params.side
    img = image[y0 : y0 + side, x0 : x0 + side].astype(np.float32) * np.float32(1.0 / 255.0)  # (side, side, 3)
    flo = flow[y0 : y0 + side, x0 : x0 + side].astype(np.float32)  # (side, side, 2)
    if side != crop:
        img = _resize(img, crop)
        flo = _resize(flo, crop) * np.float32(crop / side)
    if params.flip:
        img = img[:, ::-1]
        flo = flo[:, ::-1] * np.array([-1.0, 1.0], dtype=np.float32)
    if (params.brightness, params.contrast, params.saturation) != (1.0, 1.0, 1.0):
        img = img * np.float32(params.brightness)
        mean = np.float32(_gray(img).mean())
        img = (img - mean) * np.float32(params.contrast) + mean
        g = _gray(img)
        img = g + (img - g) * np.float32(params.saturation)
        img = np.clip(img, 0.0, 1.0)
    if params.gray:
        img = np.repeat(_gray(img), 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(flo, dtype=np.float32)


