"""Figures for the evaluation report.

Charts (axes, ticks, legends, error bars) are drawn with matplotlib; each chart function returns a
``matplotlib.figure.Figure`` and ``png_bytes`` encodes it:

- ``loss_chart``: training loss against step, the raw points faint and an exponential moving average (``ema``)
  over them, so the trend reads through per-step noise.
- ``validation_chart``: the held-out validation score at each validated step, the best step and the
  evaluated checkpoint marked.
- ``bar_chart``: grouped bars with error bars (per-layer probe accuracy, CPFS vs random init), the legend
  outside the axes where it cannot cover a bar.
- ``interval_chart``: the headline, paired differences with their confidence intervals, one panel per
  protocol and one row per held-out video (a forest plot).

Why matplotlib and not Pillow for charts: the hand-drawn Pillow axes this module had (tick rounding, label
anchoring, a legend drawn over the plot area) took ~150 lines and still let the legend cover bars; a forest
plot with labelled rows and a legend placed outside is a few calls here. It is imported inside the functions
that draw (``_figure``), so importing this module, and the CLI, stays light. The object-oriented API
(``Figure`` with the Agg canvas) is used, never ``pyplot``: no global backend switch and no figure registry
to leak from a long-lived process.

Images (frames, flow, embeddings, masks) are composed with Pillow, pixel for pixel; each returns an RGB
``(H, W, 3)`` uint8 array:

- ``pca_rgb``: pixel embeddings projected on their first three principal components, as colours (Figure 1
  of the CPFS paper): pixels with similar embeddings get similar colours.
- ``qualitative_row``: one held-out frame: frame | flow | each network's embedding PCA | each network's
  predicted motion mask, side by side (trained and random init in one strip).
- ``davis_figure``: DAVIS label propagation against the ground truth.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Distinguishable series colours (Okabe-Ito palette, safe for colour-blind readers).
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
DPI = 100  # charts are sized in inches; at 100 dpi an 8-inch chart is 800 px wide


def _figure(width: float, height: float) -> "Figure":
    """A blank figure of ``width`` x ``height`` inches on the Agg canvas, with constrained layout (labels and
    legends outside the axes are given room instead of overlapping)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: "Figure") -> bytes:
    """The figure as PNG bytes (no time stamp in the metadata: the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def ema(values: Sequence[float], span: float) -> np.ndarray:
    """Exponential moving average of ``values`` with bias correction.

    ``s_t = b s_{t-1} + (1 - b) x_t`` from ``s_0 = 0``, reported as ``s_t / (1 - b^t)`` (as Adam corrects its
    moments, and TensorBoard its smoothing) so the curve starts at the first point instead of at 0;
    ``b = 1 - 2 / (span + 1)``, the span convention of pandas' ``ewm`` (span 1: no smoothing).
    """
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    x = np.asarray(values, dtype=np.float64)
    b = 1.0 - 2.0 / (span + 1.0)
    out = np.empty_like(x)
    s = 0.0
    for t, v in enumerate(x, start=1):
        s = b * s + (1.0 - b) * v
        out[t - 1] = s / (1.0 - b**t) if b > 0 else s
    return out


def _finite_series(series: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    clean = {}
    for name, (x, y) in series.items():
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.shape != y.shape:
            raise ValueError(f"series {name!r}: x and y lengths differ ({x.shape} vs {y.shape})")
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            clean[name] = (x[ok], y[ok])
    if not clean:
        raise ValueError("a line chart needs at least one series with a finite point")
    return clean


def loss_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "Training loss",
    ylabel: str = "loss",
    points_per_span: int = 20,
) -> "Figure":
    """Lines ``{name: (step, value)}``: raw values faint, their ``ema`` (span: a ``points_per_span``-th of the
    points) bold in the same colour. Non-finite points are skipped."""
    clean = _finite_series(series)
    fig = _figure(7.2, 3.6)
    ax = fig.add_subplot()
    span = 1
    for i, (name, (x, y)) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        span = max(1, round(len(y) / points_per_span))
        ax.plot(x, y, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(x, ema(y, span), color=colour, linewidth=2.0, label=f"{name} (moving average of {span})" if span > 1 else name)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def validation_chart(steps: Sequence[int], scores: Sequence[float], *, metric: str, evaluated_step: int | None = None,
                     title: str = "Validation during training") -> "Figure":
    """The validation score at each validated step; the best step starred, the evaluated checkpoint's step (when
    another) marked with a vertical line."""
    x, y = np.asarray(steps, dtype=float), np.asarray(scores, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"validation_chart needs as many steps as scores, at least one (got {x.size} and {y.size})")
    best = int(np.nanargmax(y))
    fig = _figure(7.2, 3.2)
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o", color=PALETTE[0], label=metric)
    ax.plot([x[best]], [y[best]], marker="*", markersize=16, color=PALETTE[1], linestyle="none",
            label=f"best: step {int(x[best])} ({y[best]:.3f})")
    if evaluated_step is not None and evaluated_step != int(x[best]):
        ax.axvline(evaluated_step, color=PALETTE[5], linestyle="--", label=f"evaluated: step {evaluated_step}")
    ax.set(title=title, xlabel="step", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def bar_chart(
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    *,
    title: str = "",
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
) -> "Figure":
    """Grouped bars: ``series = {name: (means, stds or None)}``, one value per group; error bars show +-std and
    NaN means are left blank. The legend sits to the right of the axes, never over a bar."""
    if not groups or not series:
        raise ValueError("bar_chart needs at least one group and one series")
    for name, (means, stds) in series.items():
        if len(means) != len(groups) or (stds is not None and len(stds) != len(groups)):
            raise ValueError(f"series {name!r} must have one value per group ({len(groups)})")
    fig = _figure(7.2, 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for k, (name, (means, stds)) in enumerate(series.items()):
        pos = np.arange(len(groups)) - 0.4 + (k + 0.5) * width
        ax.bar(pos, np.asarray(means, dtype=float), width * 0.9, color=PALETTE[k % len(PALETTE)], label=name,
               yerr=None if stds is None else np.asarray(stds, dtype=float), capsize=3, error_kw={"linewidth": 1})
    ax.set_xticks(np.arange(len(groups)), list(groups))
    ax.set(title=title, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


Interval = tuple[float, float, float]  # (estimate, CI low, CI high)
IntervalRow = tuple[str, Mapping[str, Interval], bool]  # (label, {series: interval}, emphasised)


def interval_chart(panels: Sequence[tuple[str, str, Sequence[IntervalRow]]]) -> "Figure":
    """A forest plot: one panel per ``(title, xlabel, rows)``, one row per ``(label, {series: (estimate, low,
    high)}, emphasised)`` from top to bottom: a dot at the estimate, a bar over the interval, a line at 0.
    Series (e.g. "trained - random init", "trained - position") keep their colour across panels, side by side
    within a row; an emphasised row (the pooled estimate above its per-video rows) has a bold label."""
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ValueError("interval_chart needs at least one panel with a row")
    names = list(dict.fromkeys(s for _, _, rows in panels for _, by, _ in rows for s in by))
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(names)}
    offset = {s: (i - (len(names) - 1) / 2) * 0.22 for i, s in enumerate(names)}
    heights = [len(rows) for _, _, rows in panels]
    # 0.4 inch a row, 1 inch a panel for its title and axis, 0.4 inch for the legend
    fig = _figure(8.0, 0.4 * sum(heights) + 1.0 * len(panels) + 0.4)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (title, xlabel, rows) in zip(axes, panels):
        for r, (_, by, _) in enumerate(rows):
            for s, (m, lo, hi) in by.items():
                y = r + offset[s]
                ax.plot([lo, hi], [y, y], color=colour[s], linewidth=2.2, solid_capstyle="butt")
                ax.plot([m], [y], marker="o", color=colour[s], markersize=5)
        ax.axvline(0.0, color="#444444", linewidth=1)
        ax.set_yticks(range(len(rows)), [label for label, _, _ in rows])
        for tick, (_, _, bold) in zip(ax.get_yticklabels(), rows):
            tick.set_fontweight("bold" if bold else "normal")
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    handles = [axes[0].plot([], [], color=colour[s], marker="o", linewidth=2.2)[0] for s in names]
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), frameon=False)
    return fig


# -----------------------------------------------------------------------------------------------------------
# Images, composed with Pillow


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


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


def _strip(panels: Sequence[np.ndarray], labels: Sequence[str], *, gap: int = 6, caption: int = 22) -> np.ndarray:
    """Equal-size ``(h, w, 3)`` panels side by side, each under its label."""
    h, w = panels[0].shape[:2]
    canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, h + caption), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    for i, panel in enumerate(panels):
        x = i * (w + gap)
        canvas.paste(Image.fromarray(panel), (x, caption))
        draw.text((x + w / 2, caption / 2), labels[i] if i < len(labels) else "", fill="black", font=font, anchor="mm")
    return np.asarray(canvas, dtype=np.uint8).copy()


def qualitative_row(
    frame: np.ndarray,
    flow: np.ndarray,
    embeddings: Mapping[str, np.ndarray],
    motion_masks: Mapping[str, np.ndarray] | None = None,
    *,
    frame_label: str = "frame",
    min_width: int = 200,
) -> np.ndarray:
    """One held-out frame and what each network makes of it, in one strip: frame | flow | each network's
    embedding (PCA -> RGB) | each network's predicted motion mask, every panel at the frame's size.

    Args:
        frame: ``(H, W, 3)`` uint8. flow: ``(H, W, 2)`` px (Middlebury colours, ``flow_to_color``).
        embeddings: ``{network name: (C, h, w)}`` (PCA to RGB, upsampled), e.g. trained and random init.
        motion_masks: ``{network name: (H, W) binary}``, overlaid on the frame in red.
    """
    from cpfs.flow.visualize import flow_to_color

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    if not embeddings:
        raise ValueError("qualitative_row needs at least one network's embedding")
    h, w = frame.shape[:2]
    panels = [frame, flow_to_color(np.asarray(flow))]
    labels = [frame_label, "flow"]
    for name, emb in embeddings.items():
        panels.append(_resize(pca_rgb(emb), (h, w), nearest=True))
        labels.append(f"{name}: embedding")
    for name, mask in (motion_masks or {}).items():
        panels.append(mask_overlay(frame, _resize(np.asarray(mask, dtype=np.uint8) * 255, (h, w), nearest=True) > 127))
        labels.append(f"{name}: motion")
    if w < min_width:  # small frames: enlarge every panel (nearest) so captions fit and pixels stay visible
        factor = int(np.ceil(min_width / w))
        panels = [_resize(p, (h * factor, w * factor), nearest=True) for p in panels]
    return _strip(panels, labels)


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
        rows.append(_strip(panels, labels))
    return np.concatenate(rows, axis=0)


def image_png_bytes(image: np.ndarray, name: str = "figure") -> bytes:
    """An RGB(A) or grey uint8 image as PNG bytes; ValueError naming ``name`` for any other array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"figure {name!r} must be a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()

