"""Batched TV-L1 optical flow in PyTorch: the ``torch-tvl1`` backend (runs on CUDA or CPU).

Method: Zach, Pock, Bischof, "A Duality Based Approach for Realtime TV-L1 Optical Flow" (DAGM 2007), with
the improvements of Wedel, Pock, Zach, Bischof, Cremers, "An Improved Algorithm for TV-L1 Optical Flow"
(2009): coarse-to-fine pyramid, repeated warping, median filtering of the flow. The numerical scheme, its
parameters and their meaning follow OpenCV's ``cv2.optflow.DualTVL1OpticalFlow`` (``tvl1flow.cpp``) and
the IPOL description (Sanchez, Meinhardt-Llopis, Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013).

Energy, for images I0, I1 and flow u = (u1, u2) (plus u3, an illumination offset, when gamma > 0):

    E(u) = sum_x |grad u1| + |grad u2| + lambda * |I1(x + u(x)) - I0(x) + gamma * u3(x)|

linearised around the current warp u0 as rho(u) = I1w + I1w_x (u1 - u01) + I1w_y (u2 - u02) - I0 + gamma u3,
and split with an auxiliary field v (coupling 1/(2 theta) |u - v|^2). One inner iteration is

    v   = u + TH(rho(u))                       pointwise thresholding, l_t = lambda * theta:
          TH = l_t grad(I1w)       if rho < -l_t |grad I1w|^2
               -l_t grad(I1w)      if rho >  l_t |grad I1w|^2
               -rho grad(I1w) / |grad I1w|^2   otherwise
    u   = v + theta * div(p)                   (Chambolle's projection, backward differences)
    p   = (p + (tau/theta) grad(u)) / (1 + (tau/theta) |grad(u)|)   (forward differences)

per flow component, with the gamma channel using the constant "gradient" gamma. Per scale: ``warps``
warpings of I1 by bicubic interpolation (taps outside the image are zero, as OpenCV's remap), each
followed by up to ``outer_iterations`` x ``inner_iterations`` iterations; a ``median_filtering`` median
filter is applied to u1, u2 before every outer iteration. The dual variable p is reset to zero at each
scale, as in OpenCV. Thresholding is computed as clamp(-rho / |grad I1w|^2, -l_t, l_t) (``threshold_step``).

CPU threads: the scheme is thousands of small tensor operations; on a busy machine torch's OpenMP threads
can cost more than they bring (``torch.set_num_threads(1)`` then helps; the caller decides).

Stopping rule: OpenCV stops the iterations of one warp when sum_x |u_new - u_old|^2 <= epsilon^2 * H * W
(at that scale). Here the same test is made per batch element: an element that meets it is frozen (its u and
p no longer change) for the rest of that warp, exactly as if it had stopped, while the others go on; the
loop exits early once every element is frozen. So a pair's result does not depend on the other pairs in its
batch. On CUDA the "all frozen" test reads the device only every few iterations (fewer host syncs); frozen
elements are masked on the device, so this changes the running time, not the result.

Known departures from OpenCV's CPU implementation (small effects on the result, see bench/):
- OpenCV's remap rounds warp positions to 1/32 pixel; ``warp_bicubic`` uses them as they are.
- OpenCV sums the stopping error in single precision sequentially; torch sums it by pairwise reduction.
- scale_step = 0.5 makes OpenCV's resize take its 2x2 area-average fast path; so does this module.

Shapes: images (B, 1, H, W) float32 gray values in [0, 255]; flow (B, 2, H, W), channel 0 = u = x (columns),
channel 1 = v = y (rows), in pixels, such that I0(p) ~ I1(p + flow(p)).

Length (~580 lines, over the project's ~400): one numerical scheme in ~25 small functions that follow
OpenCV's tvl1flow.cpp in its order, each tested bit for bit against it; splitting it would separate the
steps of one iteration that a reader checks side by side with the reference.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cpfs.config import TVL1Params
from cpfs.errors import BackendUnavailableError
from cpfs.flow.base import check_frames, check_pairs

# The coarsest pyramid level must be at least this many pixels on each side (OpenCV: 16).
MIN_PYRAMID_SIDE = 16
# Images smaller than this cannot carry the centred / forward differences of the scheme.
MIN_IMAGE_SIDE = 3
# On CUDA, check "every element converged" (a host sync) once per this many inner iterations.
_CUDA_CHECK_EVERY = 10
# Gray conversion of cv2.cvtColor(RGB2GRAY) for 8-bit input: 0.299 R + 0.587 G + 0.114 B in fixed point
# with 15 fractional bits, as OpenCV's 8-bit path (bit-exact: checked on all 2^24 colours).
_GRAY_R, _GRAY_G, _GRAY_B, _GRAY_SHIFT = 9798, 19235, 3735, 15


# ----------------------------------------------------------------------------------------------------------
# Small image operators (all batched over leading dims, acting on the last two: H, W)
# ----------------------------------------------------------------------------------------------------------


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """OpenCV's RGB -> gray for 8-bit images, bit-exact: Y = (9798 R + 19235 G + 3735 B + 2^14) >> 15.

    (B, H, W, 3) uint8 RGB -> (B, 1, H, W) float32 in [0, 255] (integer values).
    """
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != torch.uint8:
        raise ValueError(f"rgb_to_gray expects (B,H,W,3) uint8, got {tuple(rgb.shape)} {rgb.dtype}")
    c = rgb.to(torch.int32)
    y = (c[..., 0] * _GRAY_R + c[..., 1] * _GRAY_G + c[..., 2] * _GRAY_B + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT
    return y.to(torch.float32).unsqueeze(1)  # (B,H,W) -> (B,1,H,W)


def _linear_axis(
    n_in: int, n_out: int, inv_scale: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of OpenCV's INTER_LINEAR along one axis.

    src = (dst + 0.5) / inv_scale - 0.5, clamped to [0, n_in - 1]; returns (i0, i1, w1) with
    out = (1 - w1) * in[i0] + w1 * in[i1].
    """
    dst = torch.arange(n_out, device=device, dtype=torch.float64)
    src = ((dst + 0.5) / inv_scale - 0.5).clamp(0.0, n_in - 1)
    i0 = src.floor().long()
    w1 = (src - i0).to(torch.float32)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, w1


def resize_linear(x: torch.Tensor, size: tuple[int, int], inv_scale: tuple[float, float] | None = None) -> torch.Tensor:
    """Bilinear resize with OpenCV's INTER_LINEAR coordinate convention (half-pixel centres, clamped edges).

    (..., H, W) -> (..., size[0], size[1]). ``inv_scale`` = (fy, fx), the factors used to map coordinates
    (OpenCV uses the requested factor, not out/in, when resizing by a factor); default out/in sizes.
    """
    h_in, w_in = x.shape[-2:]
    h_out, w_out = size
    fy, fx = inv_scale if inv_scale is not None else (h_out / h_in, w_out / w_in)
    y0, y1, wy = _linear_axis(h_in, h_out, fy, x.device)
    x0, x1, wx = _linear_axis(w_in, w_out, fx, x.device)
    rows = x.index_select(-2, y0) * (1 - wy)[:, None] + x.index_select(-2, y1) * wy[:, None]  # (..., h_out, W)
    return rows.index_select(-1, x0) * (1 - wx) + rows.index_select(-1, x1) * wx  # (..., h_out, w_out)


def pyramid_down(x: torch.Tensor, scale_step: float) -> torch.Tensor:
    """One pyramid step as OpenCV's ``resize(src, dst, Size(), s, s, INTER_LINEAR)``.

    (B, C, H, W) -> (B, C, round(H s), round(W s)); OpenCV rounds half to even (cvRound), so does ``round``.
    For s = 1/2 OpenCV switches to its 2x2 area average; so does this function.
    """
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale_step)), max(1, round(w * scale_step)))
    if abs(1.0 / scale_step - 2.0) < 1e-12:
        # Area average of 2x2 blocks; a block cut by the image edge averages the pixels it has.
        pad_h, pad_w = 2 * size[0] - h, 2 * size[1] - w
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, (0, max(pad_w, 0), 0, max(pad_h, 0)), mode="replicate")
        return F.avg_pool2d(x[..., : 2 * size[0], : 2 * size[1]], 2)
    return resize_linear(x, size, (scale_step, scale_step))


def centered_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred differences with replicated borders (OpenCV tvl1flow ``centeredGradient``).

    dx(i, j) = (x(i, j+1) - x(i, j-1)) / 2, x(i, -1) := x(i, 0), x(i, W) := x(i, W-1); dy likewise.
    (B, C, H, W) -> two (B, C, H, W).
    """
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")  # (B,C,H+2,W+2)
    dx = 0.5 * (xp[..., 1:-1, 2:] - xp[..., 1:-1, :-2])
    dy = 0.5 * (xp[..., 2:, 1:-1] - xp[..., :-2, 1:-1])
    return dx, dy


def forward_gradient(u: torch.Tensor) -> torch.Tensor:
    """Forward differences, zero on the last column (x) / last row (y).

    ux(i, j) = u(i, j+1) - u(i, j) for j < W-1 else 0; uy(i, j) = u(i+1, j) - u(i, j) for i < H-1 else 0.
    (..., H, W) -> (..., 2, H, W), index 0 = x, 1 = y.
    """
    ux = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    uy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return torch.stack((ux, uy), dim=-3)


def divergence(p: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence, the negative adjoint of ``forward_gradient``.

    div(i, j) = p_x(i, j) - p_x(i, j-1) + p_y(i, j) - p_y(i-1, j), with p(., -1) = p(-1, .) = 0.
    (..., 2, H, W) -> (..., H, W).
    """
    px, py = p[..., 0, :, :], p[..., 1, :, :]
    return px - F.pad(px[..., :, :-1], (1, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))


def _odd_even_merge_sort(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort network on n = 2^m wires: comparators (i, j), i < j, min goes to i."""
    out: list[tuple[int, int]] = []

    def merge(lo: int, hi: int, r: int) -> None:
        step = 2 * r
        if step < hi - lo:
            merge(lo, hi, step)
            merge(lo + r, hi, step)
            out.extend((i, i + r) for i in range(lo + r, hi - r, step))
        else:
            out.append((lo, lo + r))

    def sort(lo: int, hi: int) -> None:
        if hi - lo >= 1:
            mid = lo + (hi - lo) // 2
            sort(lo, mid)
            sort(mid + 1, hi)
            merge(lo, hi, 1)

    sort(0, n - 1)
    return out


@functools.lru_cache(maxsize=None)
def median_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """A comparator network whose wire n // 2 ends holding the median of n inputs (n odd).

    Built from Batcher's sorting network on the next power of two, the extra wires being +inf (comparators
    that touch only them, or leave them in place, are dropped), then pruned backwards to the comparators
    the median depends on. Entries (i, j, need_min, need_max): w[i], w[j] = min, max, computing only the
    outputs that are used later. For n = 25 (5x5): 113 comparators, 202 min/max operations.
    """
    m = 1 << max(0, (n - 1).bit_length())
    inf = set(range(n, m))
    ops: list[tuple[int, int]] = []
    for i, j in _odd_even_merge_sort(m):
        if j in inf:  # min(x, +inf) = x stays on i, +inf stays on j (or both are +inf)
            continue
        if i in inf:  # i > n-1 > j cannot happen (pads sit on the highest wires and sort to the top)
            raise AssertionError("unexpected comparator layout")
        ops.append((i, j))
    live, kept = {n // 2}, []
    for i, j in reversed(ops):
        need_min, need_max = i in live, j in live
        if need_min or need_max:
            kept.append((i, j, need_min, need_max))
            live.update((i, j))
    return tuple(reversed(kept))


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k median with replicated borders (OpenCV ``medianBlur``), k odd.

    Evaluated as a comparator network (``median_network``) over the k*k shifted copies of the image:
    elementwise min/max only, so it fuses well and needs no (H*W*k*k) window tensor.
    (B, C, H, W) -> (B, C, H, W).
    """
    if k % 2 != 1:
        raise ValueError(f"median_filter: kernel size must be odd, got {k}")
    if k == 1:
        return x
    h, w = x.shape[-2:]
    r = k // 2
    xp = F.pad(x, (r, r, r, r), mode="replicate")  # (B,C,H+2r,W+2r)
    wires = [xp[..., dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)]  # k*k views (B,C,H,W)
    for i, j, need_min, need_max in median_network(k * k):
        a, b = wires[i], wires[j]
        if need_min:
            wires[i] = torch.minimum(a, b)
        if need_max:
            wires[j] = torch.maximum(a, b)
    return wires[(k * k) // 2]


def cubic_weights(t: torch.Tensor, a: float = -0.75) -> tuple[torch.Tensor, ...]:
    """Keys' cubic convolution weights of the taps at offsets -1, 0, 1, 2 for fractional position t in [0, 1).

    k(s) = (a+2)|s|^3 - (a+3)|s|^2 + 1 for |s| <= 1, a|s|^3 - 5a|s|^2 + 8a|s| - 4a for 1 < |s| < 2, with
    a = -0.75 (OpenCV's INTER_CUBIC). At t = 0 the weights are exactly (0, 1, 0, 0).
    """
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return w0, w1, w2, 1 - w0 - w1 - w2


def warp_bicubic(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """x(p + flow(p)) by bicubic interpolation (OpenCV ``remap`` INTER_CUBIC, BORDER_CONSTANT 0).

    Each of the 4x4 taps outside the image counts as 0. Integer displacements reproduce x exactly
    (a normalised-coordinate ``grid_sample`` does not quite, and a 1e-4 gray-level error becomes a
    spurious flow in nearly flat regions). OpenCV additionally rounds positions to 1/32 px; this does not.
    x (B, C, H, W), flow (B, 2, H, W) in pixels (x, y) -> (B, C, H, W).
    """
    b, c, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=flow.dtype).view(1, 1, w)
    # Beyond [-3, size+2] every tap is outside; clamping there keeps the indices small and the result.
    px = (xs + flow[:, 0]).clamp(-3.0, w + 2.0)  # (B,H,W)
    py = (ys + flow[:, 1]).clamp(-3.0, h + 2.0)
    x0, y0 = px.floor(), py.floor()
    wx, wy = cubic_weights(px - x0), cubic_weights(py - y0)
    x0, y0 = x0.long() - 1, y0.long() - 1  # first of the four taps
    flat = x.reshape(b, c, h * w)
    out = torch.zeros_like(x)
    for j in range(4):
        yy = y0 + j
        y_in = (yy >= 0) & (yy < h)
        row = yy.clamp(0, h - 1) * w
        for i in range(4):
            xx = x0 + i
            inside = y_in & (xx >= 0) & (xx < w)
            idx = (row + xx.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
            tap = flat.gather(2, idx).view(b, c, h, w)
            out += tap * (wy[j] * wx[i] * inside).unsqueeze(1)
    return out


# ----------------------------------------------------------------------------------------------------------
# The scheme
# ----------------------------------------------------------------------------------------------------------


def threshold_step(grad: torch.Tensor) -> torch.Tensor:
    """Per-warp constant of the thresholding operator TH: -1 / |grad I1w|^2 (a huge negative where it is ~0).

    TH's step along grad(I1w) is clamp(-rho / |grad I1w|^2, -l_t, l_t): +l_t when rho < -l_t |grad I1w|^2,
    -l_t when rho > l_t |grad I1w|^2, else -rho / |grad I1w|^2, which is OpenCV's three cases. Where
    |grad I1w|^2 <= float32 eps OpenCV takes the step -l_t sign(rho) outside the band |rho| <= l_t |grad I1w|^2
    and 0 inside; a huge 1/|grad I1w|^2 (1e30) gives the same except inside that band (|rho| < 1e-8, gray
    levels), where the step is then multiplied by |grad I1w| < 4e-4 anyway (up to l_t gamma on u3).
    (B, 1, H, W) -> (B, 1, H, W).
    """
    eps = torch.finfo(torch.float32).eps
    return torch.where(grad > eps, -1.0 / grad.clamp_min(eps), torch.full_like(grad, -1e30))


def tvl1_iteration(
    u: torch.Tensor,
    p: torch.Tensor,
    g: torch.Tensor,
    neg_inv_grad: torch.Tensor,
    rho_c: torch.Tensor,
    active: torch.Tensor | None,
    l_t: float,
    theta: float,
    taut: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inner iteration (thresholding, primal step, dual step), for the active batch elements only.

    u (B, C, H, W) flow (C = 2, or 3 with the gamma channel); p (B, C, 2, H, W) dual variable;
    g (B, C, H, W) data-term gradient (I1w_x, I1w_y[, gamma]); neg_inv_grad (B, 1, H, W) from
    ``threshold_step``; rho_c (B, 1, H, W) = I1w - I1w_x u01 - I1w_y u02 - I0; active (B,) bool, None: all.

        rho = rho_c + <g, u>;  v = u + clamp(-rho / |grad I1w|^2, -l_t, l_t) g;  u' = v + theta div(p)
        p' = (p + taut grad(u')) / (1 + taut |grad(u')|)

    Returns (u', p', err): inactive elements keep their u and p; err (B,) = sum_x |u' - u|^2 (before masking).
    """
    rho = rho_c + (g * u).sum(dim=1, keepdim=True)  # (B,1,H,W)
    step = (rho * neg_inv_grad).clamp(-l_t, l_t)  # (B,1,H,W)
    u_new = u + step * g + theta * divergence(p)  # (B,C,H,W)
    err = (u_new - u).square().sum(dim=(1, 2, 3))  # (B,)
    du = forward_gradient(u_new)  # (B,C,2,H,W)
    norm = du.square().sum(dim=2, keepdim=True).sqrt()  # (B,C,1,H,W)
    p_new = (p + taut * du) / (1.0 + taut * norm)
    if active is None:
        return u_new, p_new, err
    keep = active.view(-1, 1, 1, 1)
    return torch.where(keep, u_new, u), torch.where(keep.unsqueeze(-1), p_new, p), err


_COMPILED: dict[str, Callable] = {}


def _maybe_compiled(fn: Callable, use_compile: bool) -> Callable:
    """``fn`` itself, or ``torch.compile(fn)`` (made once per process) when ``use_compile``.

    The compiled inner iteration and median filter each become a few fused kernels instead of ~40 and ~200
    small ones; results agree with eager up to float rounding (min/max of the median: exactly).
    """
    if not use_compile:
        return fn
    if fn.__name__ not in _COMPILED:
        _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn.__name__]


def _solve_scale(
    i0: torch.Tensor,
    i1: torch.Tensor,
    u: torch.Tensor,
    params: TVL1Params,
    use_compile: bool,
    on_cuda: bool,
) -> torch.Tensor:
    """TV-L1 at one pyramid scale, starting from flow u (B, C, H, W); returns the refined u.

    Per warp, an element stops (is frozen) after the iteration whose change sum_x |u' - u|^2 is
    <= epsilon^2 H W (OpenCV's test, per element). On CPU the flags are read every iteration (free) and
    masking is skipped while every element is active; on CUDA masks always stay on the device and the
    host reads them once per ``_CUDA_CHECK_EVERY`` iterations to end the loop early.
    """
    iterate = _maybe_compiled(tvl1_iteration, use_compile)
    median = _maybe_compiled(median_filter, use_compile)
    b, c, h, w = u.shape
    l_t = params.lambda_ * params.theta
    taut = params.tau / params.theta
    scaled_eps = params.epsilon**2 * h * w
    ix, iy = centered_gradient(i1)
    i1_stack = torch.cat((i1, ix, iy), dim=1)  # (B,3,H,W): warp the image and its gradient together
    p = torch.zeros(b, c, 2, h, w, device=u.device, dtype=u.dtype)
    for _ in range(params.warps):
        warped = warp_bicubic(i1_stack, u[:, :2])
        i1w, i1wx, i1wy = warped[:, 0:1], warped[:, 1:2], warped[:, 2:3]
        # |grad I1w|^2 (the gamma term is not part of it, as in OpenCV) and the constant part of rho.
        neg_inv_grad = threshold_step(i1wx.square() + i1wy.square())
        rho_c = i1w - i1wx * u[:, 0:1] - i1wy * u[:, 1:2] - i0
        parts = [i1wx, i1wy] + ([torch.full_like(i1wx, params.gamma)] if c == 3 else [])
        g = torch.cat(parts, dim=1)  # (B,C,H,W)
        active = torch.ones(b, dtype=torch.bool, device=u.device)
        all_active = True  # CPU only: every element still iterating (no masking needed)
        done = False
        for _ in range(params.outer_iterations):
            if params.median_filtering > 1:
                med = median(u[:, :2], params.median_filtering)
                if not all_active or on_cuda:
                    med = torch.where(active.view(-1, 1, 1, 1), med, u[:, :2])
                u = torch.cat((med, u[:, 2:]), dim=1) if c == 3 else med
            for n_inner in range(params.inner_iterations):
                mask = None if (all_active and not on_cuda) else active
                u, p, err = iterate(u, p, g, neg_inv_grad, rho_c, mask, l_t, params.theta, taut)
                active = active & (err > scaled_eps)
                if on_cuda:
                    if (n_inner + 1) % _CUDA_CHECK_EVERY == 0 and not bool(active.any()):
                        done = True
                        break
                else:
                    n_active = int(active.sum())
                    all_active = n_active == b
                    if n_active == 0:
                        done = True
                        break
            if done or not bool(active.any()):
                break
    return u


def _check_params(params: TVL1Params) -> None:
    if params.median_filtering > 1 and params.median_filtering % 2 == 0:
        raise ValueError(
            f"TVL1Params.median_filtering must be 1 (off) or an odd kernel size, got {params.median_filtering}"
        )


def tvl1_flow(
    i0: torch.Tensor,
    i1: torch.Tensor,
    params: TVL1Params,
    *,
    compile: bool = False,
) -> torch.Tensor:
    """TV-L1 flow from i0 to i1 for a batch of gray image pairs.

    i0, i1: (B, 1, H, W) float gray values in [0, 255] on any device -> flow (B, 2, H, W) float32 on the same
    device, channel 0 = x, channel 1 = y, in pixels: i0(p) ~ i1(p + flow(p)).
    ``compile``: fuse the inner iteration with ``torch.compile`` (worth it on CUDA; first call compiles).
    """
    if i0.ndim != 4 or i0.shape[1] != 1 or i0.shape != i1.shape:
        raise ValueError(
            f"tvl1_flow expects i0 and i1 of the same shape (B,1,H,W), got {tuple(i0.shape)} and {tuple(i1.shape)}"
        )
    if min(i0.shape[-2:]) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"tvl1_flow needs images of at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} px, got {tuple(i0.shape)}"
        )
    if i0.device != i1.device:
        raise ValueError(f"tvl1_flow: i0 on {i0.device} but i1 on {i1.device}")
    _check_params(params)
    on_cuda = i0.device.type == "cuda"
    with torch.inference_mode():
        # Pyramid: level s is level s-1 resized by scale_step; stop before a side drops under 16 px.
        pyr0, pyr1 = [i0.to(torch.float32)], [i1.to(torch.float32)]
        for _ in range(1, params.nscales):
            d0, d1 = pyramid_down(pyr0[-1], params.scale_step), pyramid_down(pyr1[-1], params.scale_step)
            if min(d0.shape[-2:]) < MIN_PYRAMID_SIDE:
                break
            pyr0.append(d0)
            pyr1.append(d1)
        b = i0.shape[0]
        c = 3 if params.gamma > 0 else 2
        h, w = pyr0[-1].shape[-2:]
        u = torch.zeros(b, c, h, w, device=i0.device, dtype=torch.float32)
        for s in range(len(pyr0) - 1, -1, -1):
            u = _solve_scale(pyr0[s], pyr1[s], u, params, compile, on_cuda)
            if s == 0:
                break
            # Up to the next finer level; the displacement (not the illumination channel) grows by 1/scale_step.
            u = resize_linear(u, tuple(pyr0[s - 1].shape[-2:]))
            u = torch.cat((u[:, :2] / params.scale_step, u[:, 2:]), dim=1)
        return u[:, :2].clone()


# ----------------------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------------------


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"torch-tvl1: invalid device {device!r} ({e})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"torch-tvl1: device {device!r} requested but torch {torch.__version__} sees no CUDA device; "
            "use device='cpu' or install a CUDA build of torch"
        )
    return dev


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class TorchTVL1Backend:
    """TV-L1 optical flow (OpenCV's DualTVL1 semantics) on a torch device, frame pairs in batches."""

    name = "torch-tvl1"

    def __init__(
        self,
        params: TVL1Params,
        device: str | None = None,
        batch_size: int = 8,
        *,
        compile: bool | None = None,
    ) -> None:
        """``device`` None: cuda when available, else cpu. ``compile`` None: ``torch.compile`` the inner
        iteration and the median filter on CUDA when Triton is installed (falls back to eager, with a
        warning, if compiling fails); True/False force it on/off."""
        if batch_size < 1:
            raise ValueError(f"torch-tvl1: batch_size must be >= 1, got {batch_size}")
        _check_params(params)
        self._params = params
        self._device = _resolve_device(device)
        self._batch_size = batch_size
        self._compile = (self._device.type == "cuda" and _triton_available()) if compile is None else compile

    def params(self) -> dict:
        """JSON-able description: the TVL1Params values (OpenCV names), device and batch size."""
        out = self._params.model_dump(by_alias=True)
        out["device"] = str(self._device)
        out["batch_size"] = self._batch_size
        return out

    def _flow_gray(self, g0: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
        if self._compile:
            try:
                return tvl1_flow(g0, g1, self._params, compile=True)
            except Exception as e:  # noqa: BLE001 - any compiler failure: eager gives the same result
                msg = f"torch-tvl1: torch.compile failed ({type(e).__name__}: {e}); running eager"
                warnings.warn(msg, stacklevel=2)
                self._compile = False
        return tvl1_flow(g0, g1, self._params)

    def _gray(self, frames: np.ndarray) -> torch.Tensor:
        return rgb_to_gray(torch.from_numpy(np.ascontiguousarray(frames)).to(self._device))

    def compute_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow from a[i] to b[i]: (B,H,W,3) uint8 RGB twice -> (B,H,W,2) float32 pixels (x, y)."""
        a, b = check_pairs(a, b, f"{self.name}.compute_pairs")
        _check_side(a, f"{self.name}.compute_pairs")
        out = np.empty((*a.shape[:3], 2), dtype=np.float32)
        for s in range(0, a.shape[0], self._batch_size):
            g0, g1 = self._gray(a[s : s + self._batch_size]), self._gray(b[s : s + self._batch_size])
            out[s : s + g0.shape[0]] = self._flow_gray(g0, g1).permute(0, 2, 3, 1).cpu().numpy()
        return out

    def compute(self, frames: np.ndarray) -> np.ndarray:
        """Flow between consecutive frames: (N,H,W,3) uint8 RGB -> (N-1,H,W,2) float32, flow[t] is t -> t+1."""
        frames = check_frames(frames, f"{self.name}.compute")
        _check_side(frames, f"{self.name}.compute")
        n = frames.shape[0]
        out = np.empty((n - 1, *frames.shape[1:3], 2), dtype=np.float32)
        for s in range(0, n - 1, self._batch_size):
            e = min(s + self._batch_size, n - 1)
            gray = self._gray(frames[s : e + 1])  # (e-s+1,1,H,W): each frame converted once
            out[s:e] = self._flow_gray(gray[:-1], gray[1:]).permute(0, 2, 3, 1).cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"TorchTVL1Backend(device={str(self._device)!r}, batch_size={self._batch_size})"


def _check_side(frames: np.ndarray, who: str) -> None:
    if min(frames.shape[1:3]) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{who}: frames must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} px, got shape {frames.shape}"
        )


__all__ = ["TorchTVL1Backend", "tvl1_flow", "rgb_to_gray"]
