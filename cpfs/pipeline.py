"""The whole pipeline's configuration and its pre-flight checks (no Prefect here).

``PipelineConfig`` is one tree for ingest -> train -> evaluate with a single store. ``preflight`` rejects,
before any work starts, every parameter that would make a stage fail later, naming the parameter.
Stage fingerprints are the content keys the Prefect cache policies use to skip a stage whose outputs
already exist for the same inputs, configuration and code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import cpfs
from cpfs.config import IngestConfig, TrainStageConfig
from cpfs.errors import BackendUnavailableError, CPFSError
from cpfs.evaluation.config import EvalConfig

Stage = Literal["ingest", "train", "evaluate"]
STAGES: tuple[str, ...] = ("ingest", "train", "evaluate")


class PipelineConfig(BaseModel):
    """ingest -> train -> evaluate on one store. ``train.store`` and ``evaluate.store`` always equal
    ``ingest.store``; ``evaluate.checkpoint`` defaults to the training run folder (its latest checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    train: TrainStageConfig = Field(default_factory=TrainStageConfig)
    evaluate: EvalConfig | None = Field(default=None, description="Evaluation (None: the run folder's checkpoint, out <run_dir>/eval)")

    @model_validator(mode="before")
    @classmethod
    def _one_store(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        ingest = data.get("ingest") or {}
        if isinstance(ingest, BaseModel):
            ingest = ingest.model_dump(mode="json", by_alias=True)
        store = ingest.get("store", {})
        for stage in ("train", "evaluate"):
            sub = data.get(stage)
            if sub is None and stage == "evaluate":
                train = data.get("train") or {}
                run_dir = (train.run_dir if isinstance(train, BaseModel) else train.get("run_dir")) or "runs/demo"
                sub = {"checkpoint": run_dir, "out": str(Path(run_dir) / "eval")}
            sub = sub.model_dump(mode="json", by_alias=True) if isinstance(sub, BaseModel) else dict(sub or {})
            sub["store"] = store
            data[stage] = sub
        return data


class PreflightError(CPFSError):
    """A pipeline parameter is wrong; the message names it."""


def _writable(path: str, what: str) -> None:
    if "://" in path and not path.startswith("file://"):
        return  # object storage: checked when the store opens
    p = Path(path.removeprefix("file://")).absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise PreflightError(f"parameter {what}: {path} is not writable ({probe} is not a writable folder)")


def preflight(config: PipelineConfig) -> None:
    """Reject wrong parameters before any stage runs: missing inputs, an unavailable flow backend, an
    unwritable store or run folder, missing evaluation data folders."""
    from cpfs.flow import resolve_backend

    for i, item in enumerate(config.ingest.inputs):
        if not Path(item).exists() and not config.ingest.watch:  # a watched folder may not exist yet
            raise PreflightError(f"parameter ingest.inputs[{i}]: {item} does not exist")
    try:
        resolve_backend(config.ingest.flow)
    except BackendUnavailableError as e:
        raise PreflightError(f"parameter ingest.flow.backend: {e}") from None
    _writable(config.ingest.store.path, "ingest.store.path")
    _writable(config.train.run_dir, "train.run_dir")
    ev = config.evaluate
    assert ev is not None
    _writable(ev.out, "evaluate.out")
    for name in ("imagefolder", "imagefolder_val", "voc", "davis"):
        value = getattr(ev, name)
        if value is not None and not Path(value).is_dir():
            raise PreflightError(f"parameter evaluate.{name}: {value} is not a folder")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def ingest_fingerprint(config: IngestConfig, inputs: list[str]) -> str:
    """Content key of an ingest: its settings, the code version, and each input's path, size and
    modification time (for a frame folder, of every file in it). Dask placement does not change outputs."""
    files = []
    for item in sorted(inputs):
        p = Path(item)
        entries = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for q in entries:
            st = q.stat()
            files.append((str(q), st.st_size, st.st_mtime_ns))
    settings = config.model_dump(mode="json", by_alias=True, exclude={"inputs", "dask_address", "n_workers"})
    return _digest({"settings": settings, "files": files, "code": cpfs.__version__})


def train_fingerprint(config: TrainStageConfig, store_version: str) -> str:
    """Content key of a training run: its configuration, the store's index version, the code version."""
    cfg = config.model_dump(mode="json", exclude={"fault_file", "resume"})
    return _digest({"config": cfg, "store": store_version, "code": cpfs.__version__})


def evaluate_fingerprint(config: EvalConfig, checkpoint_sha256: str, store_version: str) -> str:
    """Content key of an evaluation: its configuration, the checkpoint's hash, the store's index version."""
    return _digest({"config": config.model_dump(mode="json"), "checkpoint": checkpoint_sha256,
                    "store": store_version, "code": cpfs.__version__})
