"""Distributed data-parallel (DDP) helpers: process-group set-up from torchrun's environment, rank-aware
sampling, cross-rank averaging of logged numbers, and the rule that only rank 0 writes files.

torchrun (``torchrun --nproc_per_node=2 -m cpfs.training.distributed_train ...``) starts one process per GPU (or per
CPU slot) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``init_from_env`` reads them and joins the process group (backend ``nccl`` on CUDA, ``gloo`` on CPU). Without
those variables (a plain ``python`` process) it returns a single-process context and nothing is initialised,
so the same training code runs both ways.

Gradient averaging is DDP's (``torch.nn.parallel.DistributedDataParallel``): every rank starts from rank 0's
parameters and buffers (broadcast at wrap time) and applies the same averaged gradients, so parameters stay
identical across ranks. Each rank reads a disjoint share of every global batch (``InfiniteSampler`` with its
rank and the world size).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cpfs.training.data import InfiniteSampler


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly one-process) data-parallel job."""

    rank: int = 0  # global rank, 0 .. world_size-1
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (selects the GPU)
    backend: str | None = None  # "nccl", "gloo", or None when not distributed
    device: str = "cpu"  # torch device of this rank

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes checkpoints, metrics and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | None, local_rank: int = 0) -> str:
    """``None`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; a bare ``cuda`` gets the local rank."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but torch sees no CUDA device (torch {torch.__version__})")
    return device


def init_from_env(device: str | None = None, timeout_s: float = 300.0) -> DistContext:
    """Join the process group described by torchrun's environment, or return a single-process context.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` via ``init_method=
    "env://"``). Backend: ``nccl`` when this rank's device is CUDA, else ``gloo``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {missing} not set: launch with torchrun")
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                      timeout=timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, device=dev)


def shutdown(ctx: DistContext, *, graceful: bool = True, timeout_s: float = 60.0) -> None:
    """Leave the process group, every rank together (no-op for a single process).

    ``graceful`` (the normal end of a job; every rank must call it): a barrier, so no rank tears down
    while another still communicates; then each rank destroys its process group, and rank 0, which hosts
    the rendezvous store (``MASTER_ADDR:MASTER_PORT``), waits until every other rank reported through that
    store that it has left before it returns. Without that wait rank 0 could exit, and take the store
    down, while rank 1 was still inside its own teardown: gloo then aborted rank 1 with ``terminate called
    without an active exception`` (SIGABRT), once in two runs of the test suite.

    ``graceful=False`` (this rank failed): leave at once, no barrier; the other ranks then fail on their
    next collective instead of waiting for this one.
    """
    if not (ctx.distributed and torch_dist.is_initialized()):
        return
    if not graceful:
        torch_dist.destroy_process_group()
        return
    from torch.distributed.distributed_c10d import _get_default_store

    store = _get_default_store()  # held here, so rank 0's store server outlives destroy_process_group
    torch_dist.barrier()
    torch_dist.destroy_process_group()
    left = store.add("cpfs/left-process-group", 1)
    if ctx.rank != 0:
        return
    deadline = time.monotonic() + timeout_s
    while left < ctx.world_size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {left} of {ctx.world_size} ranks left the process group within "
                               f"{timeout_s:.0f} s of the final barrier")
        time.sleep(0.01)
        left = store.add("cpfs/left-process-group", 0)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.distributed:
        torch_dist.barrier()


def wrap_model(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(module)`` in a distributed job (parameters broadcast from rank 0), else ``module``."""
    if not ctx.distributed:
        return module
    ids = [torch.device(ctx.device).index] if ctx.device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap_model(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank (collective; no-op for one process).

    DDP broadcasts buffers at the start of each forward, so after the last step every rank still holds the
    statistics of its own last batch; this makes the final models identical, as rank 0's checkpoint is.
    """
    if not ctx.distributed:
        return
    for buf in unwrap_model(module).buffers():
        torch_dist.broadcast(buf.data, src=0)


def make_sampler(n: int, seed: int, start: int, ctx: DistContext) -> InfiniteSampler:
    """This rank's share of the seeded global stream of draws, starting after ``start`` consumed draws."""
    return InfiniteSampler(n, seed=seed, start=start, rank=ctx.rank, world_size=ctx.world_size)


def mean_across_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average each number over the ranks (every rank must call it with the same keys, in the same order)."""
    if not ctx.distributed or not values:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=ctx.device if ctx.backend == "nccl" else "cpu")
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    t /= ctx.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def parameters_in_sync(module: nn.Module, ctx: DistContext) -> bool:
    """True when every rank holds the same parameters (compares a float64 checksum per tensor; collective)."""
    if not ctx.distributed:
        return True
    params = [p.detach().double() for p in unwrap_model(module).parameters()]
    sums = torch.stack([p.sum() for p in params] + [p.square().sum() for p in params])  # (2P,)
    sums = sums.to(ctx.device if ctx.backend == "nccl" else "cpu")
    lo, hi = sums.clone(), sums.clone()
    torch_dist.all_reduce(lo, op=torch_dist.ReduceOp.MIN)
    torch_dist.all_reduce(hi, op=torch_dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))
