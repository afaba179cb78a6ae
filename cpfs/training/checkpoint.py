"""Training checkpoints: the one place that writes, reads, finds, prunes and checks them.

A checkpoint is ``<run>/checkpoints/step-XXXXXXXX.pt`` (the name from ``cpfs.training.run_folder.RunFolder``): a
``torch.save`` dict with ``format`` ``"cpfs-train-checkpoint"``, the step, the network (``model``), the
optimiser, scheduler, AMP scaler and RNG states, the training config, the store's index version, the split and
the ``architecture`` record (``describe_architecture``; ``architecture_config`` is its inverse) and the
``provenance`` of the data and machine (``cpfs.training.train``: video names, flow backends, hardware, wall time).

Reading order: ``save_checkpoint`` (atomic), ``read_checkpoint`` (the payload, checked format),
``load_checkpoint`` (into a model, with the architecture check: every mismatched key named), ``load_model``
(a ready ``CPFSModel`` and its ``Checkpoint`` record from one read of the file: loaded and hashed once), then
``latest_checkpoint`` / ``resolve_checkpoint`` / ``prune_checkpoints``.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from cpfs.errors import CPFSError
from cpfs.training.model import AlexNetConfig, CPFSModel, CPFSModelConfig
from cpfs.training.run_folder import RunFolder

CHECKPOINT_FORMAT = "cpfs-train-checkpoint"
CHECKPOINT_VERSION = 1
# Test hook: seconds to sleep between writing a checkpoint's temporary file and renaming it into place, so a
# test can SIGKILL the process inside that window. Unset in normal runs.
CHECKPOINT_DELAY_ENV = "CPFS_TEST_CHECKPOINT_DELAY_S"


class CheckpointError(CPFSError):
    """A checkpoint cannot be used: unreadable, another format, another architecture, or another store."""


@dataclass(frozen=True)
class Checkpoint:
    """Where a network's weights came from: enough to find and verify them again."""

    path: Path  # resolved file path
    sha256: str  # of the file's bytes
    step: int
    store_version: str | None  # index version of the store it was trained on
    train_config: dict  # the TrainConfig it was trained with (JSON form)
    architecture: dict  # ``describe_architecture`` record
    # {"train": [[video_id, start, stop], ...], "heldout": [...]}: the frames trained on and held out
    split: dict = field(default_factory=dict)
    # What training recorded of its data and machine (``cpfs.training.train``): video names and flow backends, hardware,
    # wall time. Empty for checkpoints written before it was recorded.
    provenance: dict = field(default_factory=dict)

    @property
    def run(self) -> RunFolder:
        return RunFolder.of_checkpoint(self.path)


# -----------------------------------------------------------------------------------------------------------
# The architecture record and its inverse


def describe_architecture(model: CPFSModel) -> dict[str, Any]:
    """What a checkpoint's weights fit: the model config and every state-dict entry's shape."""
    c = model.config
    return {
        "class": type(model).__name__,
        "width": c.trunk.width,
        "batch_norm": c.trunk.batch_norm,
        "hypercolumn_layers": list(c.hypercolumn_layers),
        "hidden": c.hidden,
        "embed_dim": c.embed_dim,
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
    }


def architecture_config(arch: Any, path: str | Path) -> CPFSModelConfig:
    """The ``CPFSModelConfig`` an ``architecture`` record describes (the inverse of ``describe_architecture``).

    Raises:
        CheckpointError: naming ``path``, when the record is not a ``CPFSModel``'s or is incomplete.
    """
    if not isinstance(arch, Mapping) or arch.get("class") != CPFSModel.__name__:
        found = arch.get("class") if isinstance(arch, Mapping) else None
        raise CheckpointError(f"{path}: not a CPFSModel checkpoint (architecture class {found!r})")
    try:
        return CPFSModelConfig(
            trunk=AlexNetConfig(width=float(arch["width"]), batch_norm=bool(arch["batch_norm"])),
            hypercolumn_layers=tuple(arch["hypercolumn_layers"]),
            hidden=int(arch["hidden"]),
            embed_dim=int(arch["embed_dim"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: architecture record is incomplete or invalid ({exc})") from None


def _arch_summary(payload: Mapping[str, Any]) -> str:
    a = payload.get("architecture", {})
    return f"{a.get('class')}(width={a.get('width')}, embed_dim={a.get('embed_dim')}, hidden={a.get('hidden')})"


def _check_state(path: Path, expected: Mapping[str, Tensor], found: Mapping[str, Tensor], what: str) -> None:
    """The architecture check: CheckpointError naming ``path`` and every missing, unexpected or misshapen key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(found)) if tuple(found[k].shape) != tuple(expected[k].shape)]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            problems.append(f"{label}: " + ", ".join(items[:6]) + (f", ... ({len(items) - 6} more)" if len(items) > 6 else ""))
    if problems:
        raise CheckpointError(f"{path}: {what} does not fit this architecture; " + "; ".join(problems))


# -----------------------------------------------------------------------------------------------------------
# Write, read, load


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically: ``torch.save`` to a temporary file in the same folder, fsync, ``os.replace``,
    fsync the folder. A crash at any point leaves either the old file set or the complete new file, never a
    truncated ``step-*.pt`` (a stray ``.step-*.pt.tmp-<pid>`` may remain; ``latest_checkpoint`` ignores it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        delay = os.environ.get(CHECKPOINT_DELAY_ENV)
        if delay:
            time.sleep(float(delay))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (a checkpoint's content key for caching and provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _payload(source: Any, path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a CPFS training checkpoint (format {found!r})")
    return payload


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a training checkpoint's payload (CheckpointError naming the path when unusable)."""
    path = Path(path)
    return _payload(path, path, map_location)


def restore_checkpoint(
    path: str | Path,
    payload: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Put a payload read from ``path`` into ``model`` (a ``CPFSModel``, or a training objective with ``.model``
    and ``.learned_sigma`` to also restore a learned sigma) and the optional optimiser, scheduler and scaler,
    after the architecture check (CheckpointError naming the path and every mismatched key)."""
    path = Path(path)
    objective = model if hasattr(model, "learned_sigma") else None
    net = objective.model if objective is not None else model
    _check_state(path, net.state_dict(), payload["model"], f"network (saved as {_arch_summary(payload)})")
    sigma = objective.learned_sigma if objective is not None else None
    if objective is not None:
        _check_state(path, sigma.state_dict() if sigma is not None else {}, payload.get("sigma") or {},
                     f"sigma (saved mode {payload['config'].get('sigma')!r})")
    net.load_state_dict(payload["model"])
    if sigma is not None:
        sigma.load_state_dict(payload["sigma"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` and, when given, the optimiser, scheduler and AMP scaler
    (``restore_checkpoint``). Returns the payload (step, rng, sampler, config, store_version, architecture).
    Raises CheckpointError naming the path and every mismatched key when the checkpoint comes from another
    architecture."""
    payload = read_checkpoint(path, map_location)
    restore_checkpoint(path, payload, model, optimizer, scheduler, scaler)
    return payload


def load_model(path: str | Path) -> tuple[CPFSModel, Checkpoint]:
    """A training checkpoint (a file or a run folder: its latest) as a ``CPFSModel`` of the architecture it
    records, in eval mode, with its ``Checkpoint`` record. The file is read once: the SHA-256 and the payload
    come from the same bytes.

    Raises:
        CheckpointError: missing or unreadable file, not a CPFS training checkpoint, or weights that do not fit
        the recorded architecture (the message names the path and the mismatched keys).
    """
    ckpt = resolve_checkpoint(path)
    data = ckpt.read_bytes()
    payload = _payload(io.BytesIO(data), ckpt, "cpu")
    model = CPFSModel(architecture_config(payload.get("architecture"), ckpt))
    restore_checkpoint(ckpt, payload, model)
    model.eval()
    record = Checkpoint(path=ckpt.resolve(), sha256=hashlib.sha256(data).hexdigest(), step=int(payload.get("step", 0)),
                        store_version=payload.get("store_version"), train_config=dict(payload.get("config") or {}),
                        architecture=dict(payload["architecture"]), split=dict(payload.get("split") or {}),
                        provenance=dict(payload.get("provenance") or {}))
    return model, record


# -----------------------------------------------------------------------------------------------------------
# Find and prune


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in the run folder ``run_dir`` (None when there is none)."""
    return RunFolder(run_dir).latest_checkpoint()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a training run folder's checkpoint: its best validated one
    (``checkpoints/best.pt``, written when training validates: ``cpfs.training.validation``), else its latest.

    Raises:
        CheckpointError: the path does not exist, or is a folder without ``checkpoints/step-*.pt``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        best = RunFolder(p).best_checkpoint
        if best.is_file():
            return best
        found = RunFolder(p).latest_checkpoint()
        if found is None:
            raise CheckpointError(f"{p}: training run folder holds no checkpoint (expected checkpoints/step-*.pt)")
        return found
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    return p


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Keep the ``keep`` latest checkpoints of ``run_dir``; remove temporary files left by a killed writer
    (never this process's own)."""
    run = RunFolder(run_dir)
    for _, p in run.checkpoint_files()[:-keep]:
        p.unlink(missing_ok=True)
    for p in run.checkpoints.glob(".step-*.pt.tmp-*"):
        if not p.name.endswith(f"-{os.getpid()}"):
            p.unlink(missing_ok=True)
