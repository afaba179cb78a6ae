"""How fast can DAVIS label propagation be on this machine? Its arithmetic, counted, against measured speed.

The DAVIS protocol (``cpfs.evaluation.davis``) compares every query cell of frame t with every reference
cell within ``radius`` grid cells, in frame 0 and the ``n_context`` previous frames: one dot product of
``C`` channels per (query, candidate). This benchmark counts those multiply-adds for the whole DAVIS-2016
validation set (20 sequences, 1,376 frames of 854 x 480, Perazzi et al. 2016) at the protocol's settings,
two ways:

- *exact disc*: only the candidates inside each query's disc (clipped at the frame's border): the least
  arithmetic any exact implementation of the rule does;
- *tiled*: what ``LabelPropagator`` computes: every query of a ``tile x tile`` tile against the union of its
  tile's discs (one matrix product per tile; see "How the rule is evaluated" in the module);

then measures this machine's matrix-product speed on the protocol's own block shape (``baddbmm`` of one
block of tiles, the call that takes most of the protocol's time) and, with ``--frames N``, the protocol
itself on the first N frames of a shared DAVIS sequence (hypercolumns of a random-init network of
``--width``), and prints the minutes each implies for the full validation set.

It also times the top-k selection on one block's affinities, the way the protocol did it before and
``_topk_grouped`` at several group sizes (``cpfs.evaluation.davis._TOPK_GROUP`` was chosen from this).

    .venv/bin/python bench/davis_bound.py [--size 240] [--width 0.5] [--frames 16] [--threads 2] [--groups 4,8,16,32]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis"
VAL_SEQUENCES, VAL_FRAMES, VAL_SIZE = 20, 1376, (480, 854)  # DAVIS-2016 validation: every frame is 854 x 480


def reference_frames(n_context: int) -> int:
    """Sum over the validation set's propagated frames of their reference count (frame 0 + up to n_context
    previous frames; frame t >= 1 has min(t - 1, n_context) + 1 references)."""
    per_seq = VAL_FRAMES / VAL_SEQUENCES  # the ramp-up is the same in every sequence, lengths only move the tail
    ramp = sum(min(t - 1, n_context) + 1 for t in range(1, n_context + 2))
    return round(VAL_SEQUENCES * (ramp + (per_seq - 1 - (n_context + 1)) * (n_context + 1)))


def disc_candidates(hg: int, wg: int, radius: float) -> int:
    """Candidates of every query cell of an hg x wg grid: cells within ``radius`` (the rule's float32 test),
    clipped at the border, summed over the grid."""
    r = int(math.floor(radius))
    radius32 = float(torch.tensor(radius, dtype=torch.float32))
    ys, xs = torch.arange(hg), torch.arange(wg)
    total = 0
    for dy in range(-r, r + 1):
        rows = int(((ys + dy >= 0) & (ys + dy < hg)).sum())
        for dx in range(-r, r + 1):
            if not math.sqrt(dy * dy + dx * dx) > radius32:
                total += rows * int(((xs + dx >= 0) & (xs + dx < wg)).sum())
    return total


def gemm_rate(nb: int, nq: int, m: int, c: int, repeats: int = 5) -> float:
    """Multiply-adds per second of the protocol's block product, ``aff.baddbmm_(q, k^T)``, on this machine."""
    q, k, aff = torch.randn(nb, nq, c), torch.randn(nb, m, c), torch.zeros(nb, nq, m)
    aff.baddbmm_(q, k.transpose(1, 2), alpha=2.0)
    t0 = time.perf_counter()
    for _ in range(repeats):
        aff.baddbmm_(q, k.transpose(1, 2), alpha=2.0)
    return repeats * nb * nq * m * c / (time.perf_counter() - t0)


def topk_ms(nb: int, nq: int, m: int, refs: int, k: int, groups: list[int], repeats: int = 20) -> dict[str, float]:
    """Milliseconds to pick the top k of one block's affinities (``nb x nq`` queries, ``refs`` references of
    ``m`` candidates each, 65 % of them -inf as outside a disc): a top k per reference and then among those,
    one top k of the whole row, and ``_topk_grouped`` for each group size."""
    from cpfs.evaluation.davis import _topk_grouped

    g = torch.Generator().manual_seed(0)
    x = torch.randn(nb, nq, refs * m, generator=g)
    x.masked_fill_(torch.rand(nb, nq, refs * m, generator=g) < 0.65, float("-inf"))
    ways = {"per reference, then among them": lambda: torch.cat(
                [x[..., i * m : (i + 1) * m].topk(k, dim=-1)[0] for i in range(refs)], -1).topk(k, dim=-1),
            "one topk of the row": lambda: x.topk(k, dim=-1)}
    ways.update({f"grouped, {n} per group": (lambda n=n: _topk_grouped(x, k, n)) for n in groups})
    out = {}
    for name, fn in ways.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = 1e3 * (time.perf_counter() - t0) / repeats
    return out


def protocol_seconds_per_frame(width: float, size: int, frames: int) -> tuple[float, int]:
    """Wall seconds per propagated frame of ``davis_protocol`` on the first ``frames`` frames of blackswan,
    the first ``n_context + 1`` frames (fewer references) excluded: the steady state."""
    from cpfs.evaluation.baselines import random_init_model
    from cpfs.evaluation.datasets import read_davis_sequence
    from cpfs.evaluation.davis import iter_segment_sequence
    from cpfs.evaluation.features import hypercolumn_features

    model = random_init_model(seed=0, width=width)
    fn = hypercolumn_features(model.trunk, stride=4, name="random-init")
    seq = read_davis_sequence(DAVIS, "blackswan")
    times = []
    t0 = time.perf_counter()
    for t, _, _ in iter_segment_sequence(fn, seq.frame_paths[:frames], seq.mask_paths[:frames], size):
        now = time.perf_counter()
        times.append(now - t0)
        t0 = now
    steady = times[7:]  # frames 7.. have all 6 references (and are past the first feature batch's start-up)
    channels = int(fn(torch.zeros(1, 3, 64, 64)).shape[1])
    return sum(steady) / len(steady), channels


def main() -> None:
    from cpfs.evaluation.davis import _window, resized_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=240, help="short side the network sees, px (the protocol's default)")
    p.add_argument("--channels", type=int, default=688, help="feature channels (688: hypercolumns conv1..conv5 of a half-width network)")
    p.add_argument("--width", type=float, default=0.5, help="network width for --frames (0.5: 688 hypercolumn channels)")
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--radius", type=float, default=12.0)
    p.add_argument("--tile", type=int, default=12)
    p.add_argument("--n-context", type=int, default=5)
    p.add_argument("--chunk", type=int, default=1024, help="query cells per block (LabelPropagator's default)")
    p.add_argument("--frames", type=int, default=16, help="also time the protocol on this many blackswan frames (0: no)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--topk", type=int, default=10, help="neighbours per query (the protocol's default)")
    p.add_argument("--groups", default="4,8,16,32", help="group sizes of the grouped top k to time ('' : none)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    h, w = resized_size(VAL_SIZE, args.size)
    hg, wg = -(-h // args.stride), -(-w // args.stride)
    win = _window(hg, wg, args.radius, args.tile)
    n_tiles, nq_tile = win.nty * win.ntx, win.th * win.tw
    refs = reference_frames(args.n_context)
    c = args.channels
    exact = disc_candidates(hg, wg, args.radius) * c  # per reference frame
    tiled = n_tiles * nq_tile * win.m * c
    per_block = max(1, args.chunk // nq_tile)
    rate = gemm_rate(per_block, nq_tile, win.m, c)

    print(f"DAVIS-2016 val: {VAL_FRAMES} frames in {VAL_SEQUENCES} sequences, {VAL_SIZE[1]}x{VAL_SIZE[0]} -> {w}x{h} px, "
          f"grid {wg}x{hg} (stride {args.stride}), {c} channels, radius {args.radius:g}, frame 0 + {args.n_context} "
          f"context frames: {refs} (query frame, reference frame) products; {args.threads} threads, "
          f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.2f}")
    print(f"candidates per query cell: exact disc {exact / c / (hg * wg):.0f}, tiled {win.m} "
          f"(tile {args.tile}: {n_tiles} tiles of {nq_tile} queries)")
    print(f"matrix product on the protocol's block ({per_block} x {nq_tile} x {win.m} x {c}): {rate / 1e9:.1f} GMAC/s")
    for name, macs in (("exact disc", exact), ("tiled", tiled)):
        total = macs * refs
        print(f"  {name:10} {total:.3g} multiply-adds: {total / rate / 60:5.1f} min at that speed")
    if args.groups:
        ms = topk_ms(per_block, nq_tile, win.m, args.n_context + 1, args.topk, [int(g) for g in args.groups.split(",")])
        print(f"top {args.topk} of one block's {args.n_context + 1} x {win.m} candidates per query, ms:")
        for name, t in ms.items():
            print(f"  {name:32} {t:6.2f}")
    if args.frames:
        if args.channels != 688 and args.width == 0.5:
            print("  (--frames times the half-width network: 688 channels, not --channels)")
        spf, ch = protocol_seconds_per_frame(args.width, args.size, args.frames)
        print(f"  protocol, measured ({ch} channels, blackswan frames 7..{args.frames - 1}): {spf:.3f} s per frame "
              f"-> {spf * (VAL_FRAMES - VAL_SEQUENCES) / 60:.1f} min for the validation set (goal 10)")


if __name__ == "__main__":
    main()
