"""Self-supervised CPFS training: small named functions, no trainer class.

One step (Mahendran, Thewlis, Vedaldi 2018, Sec. 3): for each image of the batch sample N pixels, embed them
with the network (``(B, N, D)`` unit vectors), read the optical flow at the same pixels (``(B, N, 2)``), build
the embedding kernel ``K_phi`` (scaled cosine) and the flow kernel ``K_f`` (Gaussian of bandwidth sigma), and
minimise the chosen loss between them (``cpfs.training.losses``).

Reading order: ``build_model`` / ``CPFSObjective`` / ``build_optimizer`` / ``build_scheduler``, then
``train_one_step``, then ``train`` which wires them with the data (``cpfs.training.data``), the checkpoints
(``cpfs.training.checkpoint``: atomic save, checked load) and, under torchrun, DDP (``cpfs.training.distributed``).

Outputs in the run folder (``cpfs.training.run_folder.RunFolder`` owns the names): the metrics log (one JSON object per
logged step) and the checkpoints.

Length (~430 lines, a little over the project's ~400): the step, the loop and the resume logic that its
bit-exact determinism depends on are read together; the checkpoint and run-folder code already moved out.

Determinism (CPU): with the same config, store and thread count, a run is bit-for-bit repeatable, and a run
interrupted after s steps and resumed gives the same parameters and losses as an uninterrupted one, with any
``num_workers``: model init is seeded; item order is a pure function of (seed, draw number)
(``InfiniteSampler``), augmentations of (seed, draw number), sampled pixels of (seed, rank, step); the
checkpoint holds the model, optimiser, scheduler, AMP scaler, the Python/NumPy/torch RNG states and the
sampler position. Not covered: CUDA kernels (cuDNN convolutions and atomics are not bit-exact; resuming on a
GPU is exact up to that noise), and a different thread count (changes float summation order).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cpfs.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    describe_architecture,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from cpfs.config import StoreConfig
from cpfs.training.data import DataSplit, FlowPairDataset, complete_videos, plan_split, store_version, video_provenance, video_sources, worker_init
from cpfs.training.distributed import (
    DistContext,
    broadcast_buffers,
    make_sampler,
    mean_across_ranks,
    resolve_device,
    unwrap_model,
    wrap_model,
)
from cpfs.training.kernels import LearnedSigma, embedding_kernel, flow_kernel, median_pairwise_distance
from cpfs.training.losses import alignment, get_loss
from cpfs.training.model import AlexNetConfig, CPFSModel, CPFSModelConfig, read_at_points, sample_points
from cpfs.records import FrameRange
from cpfs.training.run_folder import RunFolder
from cpfs.config import TrainConfig
from cpfs.training.validation import Validator, validation_sequences

# Config fields that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = frozenset({"preset", "steps", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers",
                               "prefetch_factor", "threads", "device", "validation"})
# Seconds a DataLoader worker may take to deliver a batch before the run fails with an error.
DATA_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TrainResult:
    """Outcome of ``train``."""

    run_dir: Path
    checkpoint: Path | None  # the last checkpoint written (None only on ranks other than 0)
    steps: int  # global step reached
    metrics: dict[str, float]  # the last step's metrics (averaged over ranks)
    heldout: tuple[FrameRange, ...] = ()  # frames held out of training (for the evaluation stage)
    model: CPFSModel | None = field(default=None, repr=False, compare=False)  # the trained network (this rank's copy)


# -----------------------------------------------------------------------------------------------------------
# Model, objective, optimiser, schedule


def build_model(cfg: TrainConfig) -> CPFSModel:
    """The CPFS network of ``cfg``: AlexNet trunk of width ``cfg.width``, embeddings of dimension ``cfg.embed_dim``."""
    extra = {} if cfg.hypercolumn_layers is None else {"hypercolumn_layers": tuple(cfg.hypercolumn_layers)}
    return CPFSModel(CPFSModelConfig(trunk=AlexNetConfig(width=cfg.width), embed_dim=cfg.embed_dim, **extra))


class CPFSObjective(nn.Module):
    """Network + flow bandwidth + loss, as one module so DDP averages every trainable parameter's gradient.

    ``forward(images (B,3,H,W), flow (B,2,H,W), points (B,N,2) int) -> (loss, embeddings (B,N,D), K_phi, K_f,
    sigma (B,))``. The network may run under autocast; kernels and loss always run in float32.
    """

    def __init__(self, model: CPFSModel, loss: str, sigma: str | float, *, sigma_scale: float = 1.0,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.loss_name = loss
        self.loss_fn = get_loss(loss, temperature=temperature)  # ValueError listing the valid names
        self.sigma_mode = sigma
        self.sigma_scale = float(sigma_scale)
        self.learned_sigma = LearnedSigma() if sigma == "learned" else None

    def bandwidth(self, f: Tensor) -> Tensor:
        """Flow-kernel sigma per image, ``(B,)`` px, for flow at the points ``f (B, N, 2)``."""
        if self.learned_sigma is not None:
            return self.learned_sigma(f)
        if self.sigma_mode == "median":
            return self.sigma_scale * median_pairwise_distance(f)
        return torch.full((f.shape[0],), float(self.sigma_mode), dtype=f.dtype, device=f.device)

    def forward(self, images: Tensor, flow: Tensor, points: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        emb = self.model(images, points)  # (B, N, D)
        with torch.autocast(device_type=images.device.type, enabled=False):
            emb = emb.float()
            f = read_at_points(flow.float(), points)  # (B, N, 2) px
            sigma = self.bandwidth(f)  # (B,)
            k_phi = embedding_kernel(emb)  # (B, N, N)
            k_f = flow_kernel(f, sigma)  # (B, N, N)
            loss = self.loss_fn(k_phi, k_f)
        return loss, emb, k_phi, k_f, sigma


def build_objective(model: CPFSModel, cfg: TrainConfig) -> CPFSObjective:
    """``model`` with the loss, bandwidth rule and temperature of ``cfg``."""
    return CPFSObjective(model, cfg.loss, cfg.sigma, sigma_scale=cfg.bandwidth_scale(), temperature=cfg.temperature)


def build_optimizer(objective: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on conv/linear weights only (not on biases, BatchNorm, or the sigma parameter)."""
    decay, no_decay = [], []
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    o = cfg.optimizer
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, fused=True)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up ``(step+1)/W`` for ``step < W``, then cosine
    ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``p = (step - W) / max(1, steps - W)`` and ``r = min_lr_ratio``."""
    w, r = cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio
    if step < w:
        return (step + 1) / w
    p = min(1.0, (step - w) / max(1, cfg.steps - w))
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine schedule (``lr_factor``), stepped once per optimisation step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


# -----------------------------------------------------------------------------------------------------------
# One step


def embedding_statistics(emb: Tensor) -> dict[str, float]:
    """Numbers that reveal a collapsed embedding, from ``emb (B, N, D)`` unit vectors.

    ``cos_offdiag``: mean cosine between distinct pixels of the same image (-> 1 when everything maps to one
    point); ``dim_std_mean`` / ``dim_std_min``: per-dimension std over all B*N embeddings, averaged / minimum
    (-> 0 when dimensions die; a uniform spread on the sphere gives about ``1/sqrt(D)``).
    """
    with torch.no_grad():
        b, n, d = emb.shape
        cos = emb @ emb.transpose(1, 2)  # (B, N, N)
        off = (cos.sum(dim=(1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(-1)) / (n * (n - 1))  # (B,)
        std = emb.reshape(b * n, d).std(dim=0)  # (D,)
        return {"cos_offdiag": float(off.mean()), "dim_std_mean": float(std.mean()), "dim_std_min": float(std.min())}


def train_one_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    images: Tensor,
    flow: Tensor,
    points: Tensor,
    *,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One optimisation step on a batch; returns its metrics (loss, alignment, sigma, lr, embedding statistics).

    ``images (B,3,H,W)`` in [0, 1], ``flow (B,2,H,W)`` px, ``points (B,N,2)`` int64 (x, y), all on the model's
    device. ``amp_dtype``: autocast dtype for the network (None: full precision).
    """
    objective.train()
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    with torch.autocast(device_type=images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss, emb, k_phi, k_f, sigma = objective(images, flow, points)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {float(loss)} at lr {lr}: training diverged")
    scaler.scale(loss).backward()
    grad_norm = float("nan")
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(objective.parameters(), grad_clip, foreach=True))
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {
        "loss": float(loss.detach()),
        "alignment": float(alignment(k_phi.detach(), k_f.detach(), centered=True).mean()),
        "sigma": float(sigma.detach().mean()),
        "lr": float(lr),
        "grad_norm": grad_norm,
        **embedding_statistics(emb.detach()),
    }


def points_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of the pixels sampled at ``step`` on ``rank``: a pure function of the three, so sampling
    needs no saved state to resume exactly and ranks draw different pixels."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1))
    return g


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -----------------------------------------------------------------------------------------------------------
# The loop


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics lines of steps <= last_step (a resumed run rewrites the later ones; a line cut by a
    crash is dropped)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(k + "\n" for k in kept))


def _amp_dtype(cfg: TrainConfig, device: str) -> torch.dtype | None:
    if not cfg.amp or not device.startswith("cuda"):
        return None  # AMP is CUDA only; on CPU the flag is ignored
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(
    cfg: TrainConfig,
    store_cfg: StoreConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: Callable[[int, int, dict], None] | None = None,
    stop_after: int | None = None,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train the CPFS network on the store's complete videos (held-out part excluded) for ``cfg.steps`` steps.

    ``resume``: continue from ``latest_checkpoint(run_dir)`` exactly (a fresh start when there is none); without
    it, a ``run_dir`` that already holds checkpoints is an error (no silent mixing of runs). ``stop_after``:
    stop (with a checkpoint) after this many steps of this call, e.g. to split a run across jobs.
    ``progress(step, total, metrics)`` is called on rank 0 after every step. ``dist``: the DDP context
    (``cpfs.training.distributed.init_from_env``); None = one process. Only rank 0 writes files.
    """
    dist = dist or DistContext(device=resolve_device(cfg.device))
    device = dist.device
    run_dir = Path(run_dir)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the world size {dist.world_size}")
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1, got {stop_after}")
    per_rank = cfg.batch_size // dist.world_size
    get_loss(cfg.loss)  # fail before touching the store

    videos = complete_videos(store_cfg)
    split = plan_split(videos, cfg.holdout_fraction, cfg.seed, cfg.heldout_videos)
    dataset = FlowPairDataset(store_cfg, split.train, crop=cfg.crop, augment=cfg.augment, seed=cfg.seed,
                              min_moving_fraction=cfg.min_moving_fraction, skip_damaged=cfg.skip_damaged_pairs,
                              pair_gap=cfg.pair_gap)
    version = store_version(store_cfg)
    # For the model card (cpfs.export.exporter): each video's name and flow backend, recorded in every checkpoint.
    videos_seen = video_provenance(store_cfg, sorted({r.video_id for r in (*split.train, *split.heldout)})) if dist.is_main else {}
    validator = _validator(cfg, store_cfg, split, run_dir) if dist.is_main else None

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    model = build_model(cfg)
    objective = build_objective(model, cfg).to(device)
    optimizer = build_optimizer(objective, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=amp_dtype == torch.float16)

    step = 0
    seconds_before = 0.0  # training wall time of the earlier calls of a resumed run
    run = RunFolder(run_dir)
    ckpt = run.latest_checkpoint()
    if ckpt is not None and not resume:
        raise CheckpointError(f"{run_dir}: holds checkpoints (latest {ckpt.name}); pass resume=True or use a new run_dir")
    if resume and ckpt is not None:
        payload = load_checkpoint(ckpt, objective, optimizer, scheduler, scaler, map_location=device)
        if payload["store_version"] != version:
            raise CheckpointError(
                f"{ckpt}: written for store index version {payload['store_version']}, but {store_cfg.path} is now "
                f"version {version}; the data changed, so the run cannot resume exactly (start a new run_dir)")
        # The saved settings with today's defaults filled in: a field added since (e.g. augment.grayscale) must not
        # make an older run unresumable when its default keeps the old behaviour.
        saved, now = TrainConfig.model_validate(payload["config"]).model_dump(mode="json"), cfg.model_dump(mode="json")
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
        if changed:
            raise CheckpointError(
                f"{ckpt}: cannot resume with a different {', '.join(changed)} "
                f"(checkpoint: {', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); start a new run_dir")
        step = int(payload["step"])
        seconds_before = float((payload.get("provenance") or {}).get("train_seconds", 0.0))
        _set_rng_state(payload["rng"])
    metrics_path = run.metrics
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, step)
        if validator is not None:
            validator.truncate(step)

    net = wrap_model(objective, dist)
    sampler = make_sampler(len(dataset), cfg.seed, step * cfg.batch_size, dist)
    workers = cfg.num_workers
    loader = DataLoader(
        dataset, batch_size=per_rank, sampler=sampler, num_workers=workers, drop_last=True,
        pin_memory=device.startswith("cuda"), persistent_workers=workers > 0,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        worker_init_fn=worker_init if workers > 0 else None,
        timeout=DATA_TIMEOUT_S if workers > 0 else 0,  # a hung worker fails the run instead of stalling it
    )
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    last: dict[str, float] = {}
    written: Path | None = ckpt if resume else None
    batches = iter(loader)
    t_prev = t_start = time.perf_counter()
    try:
        with open(metrics_path, "a") if dist.is_main else _NullFile() as log:
            while step < end:
                images, flow = next(batches)
                t_data = time.perf_counter()
                images = images.to(device, non_blocking=True)
                flow = flow.to(device, non_blocking=True)
                h, w = images.shape[-2:]
                points = sample_points(per_rank, h, w, cfg.points_per_image, generator=points_generator(cfg.seed, dist.rank, step))
                m = train_one_step(net, optimizer, scheduler, scaler, images, flow, points.to(device),
                                   amp_dtype=amp_dtype, grad_clip=cfg.optimizer.grad_clip)
                step += 1
                if step % cfg.log_every == 0 or step == end:
                    m = mean_across_ranks(m, dist)
                    t_now = time.perf_counter()
                    # Throughput and data wait of this step (wall clock; not part of the deterministic record).
                    m.update(step=step, images_per_s=cfg.batch_size / max(t_now - t_prev, 1e-9), data_wait_s=t_data - t_prev)
                    last = m
                    if dist.is_main:
                        log.write(json.dumps(m) + "\n")
                        log.flush()
                else:  # not logged: the progress bar still shows this step's own throughput
                    m["images_per_s"] = cfg.batch_size / max(time.perf_counter() - t_prev, 1e-9)
                if progress is not None and dist.is_main:
                    progress(step, cfg.steps, m)
                if dist.is_main and (step % cfg.checkpoint_every == 0 or step == end):
                    payload = {
                        "format": CHECKPOINT_FORMAT,
                        "format_version": CHECKPOINT_VERSION,
                        "step": step,
                        "model": objective.model.state_dict(),
                        "sigma": objective.learned_sigma.state_dict() if objective.learned_sigma is not None else None,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                        "rng": _rng_state(),
                        "sampler": {"seed": cfg.seed, "start": step * cfg.batch_size},
                        "config": cfg.model_dump(mode="json"),
                        "store_version": version,
                        "split": {part: [[r.video_id, r.start, r.stop] for r in ranges]
                                  for part, ranges in (("train", split.train), ("heldout", split.heldout))},
                        "architecture": describe_architecture(objective.model),
                        "world_size": dist.world_size,
                        "provenance": {"videos": videos_seen, "hardware": _hardware(device, dist.world_size),
                                       "train_seconds": seconds_before + time.perf_counter() - t_start},
                    }
                    written = save_checkpoint(run.checkpoint(step), payload)
                    prune_checkpoints(run_dir, cfg.keep_checkpoints)
                    if validator is not None and validator.due(step, cfg.checkpoint_every, end):
                        validator.record(validator.measure(objective.model, step), written)
                t_prev = time.perf_counter()
    finally:
        del batches  # shuts the worker processes down
    broadcast_buffers(net, dist)
    return TrainResult(run_dir=run_dir, checkpoint=written if dist.is_main else None, steps=step, metrics=last,
                       heldout=split.heldout, model=unwrap_model(net).model)


def _hardware(device: str, world_size: int) -> dict[str, Any]:
    """The machine a checkpoint was trained on, for its model card: device, its name, processes, torch."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else (platform.processor() or platform.machine())
    return {"device": device, "name": name, "processes": world_size, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": str(torch.__version__)}


def _validator(cfg: TrainConfig, store_cfg: StoreConfig, split: DataSplit, run_dir: Path) -> Validator | None:
    """The run's validator (``cpfs.training.validation``) when ``cfg.validation.davis`` is set; its sequences are checked
    against the training videos before any step."""
    if cfg.validation.davis is None:
        return None
    sources = video_sources(store_cfg, sorted({r.video_id for r in split.train}))
    names = validation_sequences(cfg.validation, [s for s in sources if s])
    return Validator(cfg.validation, names, run_dir)


class _NullFile:
    """A do-nothing stand-in for the metrics file on ranks other than 0."""

    def __enter__(self) -> "_NullFile":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, _text: str) -> None:
        return None

    def flush(self) -> None:
        return None
