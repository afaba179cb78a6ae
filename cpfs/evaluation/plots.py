"""Figures for the evaluation report, drawn with Pillow (no plotting dependency): each returns an RGB
``(H, W, 3)`` uint8 array.

- ``line_chart``: training curves (loss against step).
- ``bar_chart``: grouped bars with error bars (per-layer probe accuracy, CPFS vs random init).
- ``pca_rgb``: pixel embeddings projected on their first three principal components, as colours (Figure 1
  of the CPFS paper): pixels with similar embeddings get similar colours.
- ``qualitative_row``: frame | flow (Middlebury colours) | embedding PCA | predicted motion mask, side by side.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinguishable series colours (Okabe-Ito palette, safe for colour-blind readers).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0), (0, 0, 0),
)


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 10))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class _Axes:
    """Maps data coordinates to pixels inside a margin and draws the frame, ticks and labels."""

    def __init__(self, size: tuple[int, int], xlim: tuple[float, float], ylim: tuple[float, float], title: str, xlabel: str, ylabel: str) -> None:
        self.w, self.h = size
        self.img = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.img)
        self.font, self.small = _font(16), _font(12)
        self.left, self.right, self.top, self.bottom = 70, 20, 40, 55
        self.xlim, self.ylim = xlim, ylim
        self.draw.text((self.w / 2, 10), title, fill="black", font=self.font, anchor="mt")
        self.draw.text((self.w / 2, self.h - 8), xlabel, fill="black", font=self.small, anchor="mb")
        self.draw.text((8, self.top - 4), ylabel, fill="black", font=self.small, anchor="lb")  # above the y axis

    def px(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        u = self.left + (x - x0) / ((x1 - x0) or 1.0) * (self.w - self.left - self.right)
        v = self.h - self.bottom - (y - y0) / ((y1 - y0) or 1.0) * (self.h - self.top - self.bottom)
        return u, v

    def frame(self, yticks: Sequence[float], xticks: Sequence[tuple[float, str]]) -> None:
        for t in yticks:
            u, v = self.px(self.xlim[0], t)
            self.draw.line([(self.left, v), (self.w - self.right, v)], fill=(225, 225, 225))
            self.draw.text((self.left - 6, v), _fmt(t), fill="black", font=self.small, anchor="rm")
        for x, label in xticks:
            u, v = self.px(x, self.ylim[0])
            self.draw.line([(u, v), (u, v + 4)], fill="black")
            self.draw.text((u, v + 6), label, fill="black", font=self.small, anchor="mt")
        self.draw.rectangle([self.left, self.top, self.w - self.right, self.h - self.bottom], outline="black")

    def legend(self, names: Sequence[str]) -> None:
        x, y = self.w - self.right - 10, self.top + 8
        for i, name in enumerate(names):
            colour = PALETTE[i % len(PALETTE)]
            self.draw.rectangle([x - 150, y + 18 * i, x - 138, y + 18 * i + 12], fill=colour)
            self.draw.text((x - 132, y + 18 * i + 6), name, fill="black", font=self.small, anchor="lm")

    def array(self) -> np.ndarray:
        return np.asarray(self.img, dtype=np.uint8).copy()


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    size: tuple[int, int] = (720, 400),
) -> np.ndarray:
    """Lines ``{name: (x, y)}`` on shared axes (non-finite points skipped) -> ``(H, W, 3)`` uint8."""
    clean = {}
    for name, (x, y) in series.items():
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.shape != y.shape:
            raise ValueError(f"series {name!r}: x and y lengths differ ({x.shape} vs {y.shape})")
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            clean[name] = (x[ok], y[ok])
    if not clean:
        raise ValueError("line_chart needs at least one series with a finite point")
    xs = np.concatenate([x for x, _ in clean.values()])
    ys = np.concatenate([y for _, y in clean.values()])
    yt = _nice_ticks(float(ys.min()), float(ys.max()))
    xt = _nice_ticks(float(xs.min()), float(xs.max()), 6)
    ax = _Axes(size, (xt[0], xt[-1]), (yt[0], yt[-1]), title, xlabel, ylabel)
    ax.frame(yt, [(t, _fmt(t)) for t in xt])
    for i, (x, y) in enumerate(clean.values()):
        pts = [ax.px(a, b) for a, b in zip(x, y)]
        colour = PALETTE[i % len(PALETTE)]
        if len(pts) == 1:
            u, v = pts[0]
            ax.draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)
        else:
            ax.draw.line(pts, fill=colour, width=2)
    ax.legend(list(clean))
    return ax.array()


def bar_chart(
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    *,
    title: str = "",
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
    size: tuple[int, int] = (720, 400),
) -> np.ndarray:
    """Grouped bars: ``series = {name: (means, stds or None)}``, one value per group -> ``(H, W, 3)`` uint8.

    Error bars show +-std. NaN means are left blank.
    """
    if not groups or not series:
        raise ValueError("bar_chart needs at least one group and one series")
    for name, (means, stds) in series.items():
        if len(means) != len(groups) or (stds is not None and len(stds) != len(groups)):
            raise ValueError(f"series {name!r} must have one value per group ({len(groups)})")
    tops = []
    for means, stds in series.values():
        for i, m in enumerate(means):
            if math.isfinite(m):
                tops.append(m + (stds[i] if stds is not None and math.isfinite(stds[i]) else 0.0))
    hi = max(tops) if tops else 1.0
    yt = _nice_ticks(0.0, hi) if ylim is None else _nice_ticks(*ylim)
    n = len(series)
    ax = _Axes(size, (-0.5, len(groups) - 0.5), (yt[0], yt[-1]), title, "", ylabel)
    ax.frame(yt, [(i, g) for i, g in enumerate(groups)])
    width = 0.8 / n
    for k, (means, stds) in enumerate(series.values()):
        colour = PALETTE[k % len(PALETTE)]
        for i, m in enumerate(means):
            if not math.isfinite(m):
                continue
            x0 = i - 0.4 + k * width
            u0, v0 = ax.px(x0, max(m, yt[0]))
            u1, v1 = ax.px(x0 + width * 0.9, yt[0])
            ax.draw.rectangle([u0, min(v0, v1), u1, max(v0, v1)], fill=colour)
            if stds is not None and math.isfinite(stds[i]) and stds[i] > 0:
                uc = (u0 + u1) / 2
                _, va = ax.px(0, m - stds[i])
                _, vb = ax.px(0, m + stds[i])
                ax.draw.line([(uc, va), (uc, vb)], fill="black", width=2)
                ax.draw.line([(uc - 4, va), (uc + 4, va)], fill="black")
                ax.draw.line([(uc - 4, vb), (uc + 4, vb)], fill="black")
    ax.legend(list(series))
    return ax.array()


def pca_rgb(embedding: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` pixel embeddings -> ``(h, w, 3)`` uint8: the first three principal components as RGB.

    Components are computed over the image's own pixels (centred); each is scaled to [0, 255] between its
    1st and 99th percentile (robust to a few outliers). Fewer than 3 channels are zero-padded.
    """
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 3:
        raise ValueError(f"embedding must have shape (C, h, w), got {emb.shape}")
    c, h, w = emb.shape
    x = emb.reshape(c, -1).T  # (h*w, C)
    x = x - x.mean(0)
    if c >= 3:
        _, _, vt = np.linalg.svd(x, full_matrices=False)  # rows of vt: principal directions
        proj = x @ vt[:3].T  # (h*w, 3)
    else:
        proj = np.concatenate([x, np.zeros((x.shape[0], 3 - c))], axis=1)
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    out = (proj - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8).reshape(h, w, 3)


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    im = Image.fromarray(img)
    return np.asarray(im.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def mask_overlay(frame: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (230, 30, 30), alpha: float = 0.55) -> np.ndarray:
    """Frame ``(H, W, 3)`` uint8 with the pixels of binary ``mask`` ``(H, W)`` tinted in ``colour``."""
    out = frame.astype(np.float64).copy()
    m = np.asarray(mask).astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, dtype=np.float64)
    return out.astype(np.uint8)


def qualitative_row(
    frame: np.ndarray,
    flow: np.ndarray,
    embedding: np.ndarray,
    motion_mask: np.ndarray | None = None,
    *,
    labels: Sequence[str] = ("frame", "flow", "embedding (PCA)", "motion prediction"),
    min_width: int = 200,
) -> np.ndarray:
    """Panels of one held-out frame side by side, each at the frame's size, with a caption strip.

    Args:
        frame: ``(H, W, 3)`` uint8. flow: ``(H, W, 2)`` px (Middlebury colours, ``flow_to_color``).
        embedding: ``(C, h, w)`` (PCA to RGB, upsampled). motion_mask: ``(H, W)`` binary, overlaid on the frame.
    """
    from cpfs.flow.visualize import flow_to_color

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    panels = [frame, flow_to_color(np.asarray(flow)), _resize(pca_rgb(embedding), (h, w), nearest=True)]
    if motion_mask is not None:
        panels.append(mask_overlay(frame, _resize(np.asarray(motion_mask, dtype=np.uint8) * 255, (h, w), nearest=True) > 127))
    if w < min_width:  # small frames: enlarge every panel (nearest) so captions fit and pixels stay visible
        factor = int(np.ceil(min_width / w))
        h, w = h * factor, w * factor
        panels = [_resize(p, (h, w), nearest=True) for p in panels]
    gap, caption = 6, 22
    canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, h + caption), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    for i, panel in enumerate(panels):
        x = i * (w + gap)
        canvas.paste(Image.fromarray(panel), (x, caption))
        draw.text((x + w / 2, caption / 2), labels[i] if i < len(labels) else "", fill="black", font=font, anchor="mm")
    return np.asarray(canvas, dtype=np.uint8).copy()


def davis_figure(images: np.ndarray, gt: np.ndarray, preds: Mapping[str, np.ndarray], frames: Sequence[int],
                 *, height: int = 180) -> np.ndarray:
    """DAVIS label propagation for a few frames of one sequence: one row per frame, the ground-truth mask
    (green) and each source's propagated mask (red) over the frame, with a caption strip per row.

    Args:
        images: ``(n, H, W, 3)`` uint8 frames. gt: ``(n, H, W)`` labels (0 = background).
        preds: ``{source name: (n, H, W) labels}``. frames: the frame index of each row (captions).
    """
    n = len(frames)
    if images.shape[0] != n or gt.shape[0] != n or any(p.shape[0] != n for p in preds.values()):
        raise ValueError(f"davis_figure: {n} frames but images {images.shape[0]}, gt {gt.shape[0]}, "
                         f"preds {[p.shape[0] for p in preds.values()]}")
    h0, w0 = images.shape[1:3]
    w = max(1, round(w0 * height / h0))
    rows = []
    for i in range(n):
        frame = _resize(images[i], (height, w))
        panels = [mask_overlay(frame, _resize((gt[i] > 0).astype(np.uint8) * 255, (height, w), nearest=True) > 127, (30, 200, 60))]
        labels = [f"frame {frames[i]}: ground truth"]
        for name, p in preds.items():
            panels.append(mask_overlay(frame, _resize((p[i] > 0).astype(np.uint8) * 255, (height, w), nearest=True) > 127))
            labels.append(f"{name}: propagated")
        gap, caption = 6, 22
        canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, height + caption), "white")
        draw = ImageDraw.Draw(canvas)
        for j, panel in enumerate(panels):
            x = j * (w + gap)
            canvas.paste(Image.fromarray(panel), (x, caption))
            draw.text((x + w / 2, caption / 2), labels[j], fill="black", font=_font(13), anchor="mm")
        rows.append(np.asarray(canvas, dtype=np.uint8))
    return np.concatenate(rows, axis=0)
