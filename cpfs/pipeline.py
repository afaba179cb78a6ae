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
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import cpfs
from cpfs.config import IngestConfig, StoreConfig, TrainStageConfig
from cpfs.errors import BackendUnavailableError, CPFSError
from cpfs.evaluation.config import EvalConfig

Stage = Literal["ingest", "train", "evaluate"]
STAGES: tuple[str, ...] = ("ingest", "train", "evaluate")


class PipelineConfig(BaseModel):
    """ingest -> train -> evaluate on one store. ``train.store`` and ``evaluate.store`` always equal
    ``ingest.store`` (given there too, they must be the same store); ``evaluate.checkpoint`` defaults to the training run folder (its latest checkpoint)."""

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
            given = sub.get("store")
            if given is not None and StoreConfig.model_validate(given) != StoreConfig.model_validate(store):
                # One store for the whole pipeline: a different one given to a later stage is a mistake
                # to name, not a value to replace silently.
                raise ValueError(f"{stage}.store ({StoreConfig.model_validate(given).path}) differs from ingest.store "
                                 f"({StoreConfig.model_validate(store).path}): the pipeline trains and "
                                 "evaluates on the store it ingests into; give the store once, as ingest.store")
            sub["store"] = store
            data[stage] = sub
        return data


class PreflightError(CPFSError):
    """A pipeline parameter is wrong; the message names it. ``parameter`` is the configuration field
    (``ingest.store.path``) and ``reason`` what is wrong, for a command line to name its own flag."""

    def __init__(self, message: str, *, parameter: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.reason = reason or message


def _fail(parameter: str, reason: str) -> PreflightError:
    return PreflightError(f"parameter {parameter}: {reason}", parameter=parameter, reason=reason)


def writable_error(path: str) -> str | None:
    """Why nothing can be written at ``path`` (a folder to create or fill), or None when it can.

    Tried for real: a probe file is created and removed in ``path`` when it exists, else in its nearest
    existing ancestor (so nothing is left behind, and no folder is created). Permission bits are not
    enough: ``os.access`` says yes to root everywhere, /proc included. Object-store URLs are left to the
    store's own opening."""
    if "://" in path and not path.startswith("file://"):
        return None
    p = Path(path.removeprefix("file://")).expanduser().absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{path} cannot be created: {probe} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".cpfs-write-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return f"{path} is not writable: cannot create a file in {probe} ({e.strerror or e})"
    return None


def _writable(path: str, what: str) -> None:
    reason = writable_error(path)
    if reason:
        raise _fail(what, reason)


def check_inputs_exist(inputs: list[str], *, watch: bool, prefix: str = "") -> None:
    """Every named input exists (a watched folder may not exist yet: nothing new is not an error)."""
    for i, item in enumerate(inputs):
        if not watch and not Path(item).exists():
            raise _fail(f"{prefix}inputs[{i}]", f"{item} does not exist")


def check_evaluation_data(ev: EvalConfig, prefix: str = "") -> None:
    """The evaluation's data sets, cheaply (layout, class count, a header read of each image): a wrong
    folder is named here, at the start, not minutes into the run by the protocol that reads it."""
    from cpfs.evaluation.datasets import check_davis, check_image_folder, check_voc

    checks = {"imagefolder": check_image_folder, "imagefolder_val": check_image_folder, "voc": check_voc}
    for name, check in checks.items():
        value = getattr(ev, name)
        if value is not None:
            try:
                check(value)
            except (OSError, ValueError) as e:
                raise _fail(f"{prefix}{name}", str(e)) from None
    if ev.davis is not None:
        try:
            check_davis(ev.davis, ev.davis_sequences)
        except (OSError, ValueError) as e:
            raise _fail(f"{prefix}davis", str(e)) from None


def preflight(config: PipelineConfig) -> None:
    """Reject wrong parameters before any stage runs: missing inputs, an unavailable flow backend, an
    unwritable store or run folder, missing evaluation data folders."""
    from cpfs.flow import resolve_backend

    check_inputs_exist(config.ingest.inputs, watch=config.ingest.watch, prefix="ingest.")
    try:
        resolve_backend(config.ingest.flow)
    except BackendUnavailableError as e:
        raise _fail("ingest.flow.backend", str(e)) from None
    _writable(config.ingest.store.path, "ingest.store.path")
    _writable(config.train.run_dir, "train.run_dir")
    ev = config.evaluate
    assert ev is not None
    _writable(ev.out, "evaluate.out")
    check_evaluation_data(ev, prefix="evaluate.")
    check_store_contents(config.ingest)


def check_store_contents(config: IngestConfig) -> None:
    """An existing store must be fit to train on after this run's ingest: every complete video intact
    (``VideoStore.verify``'s quick check: each stored object present with its recorded size) or about to be
    repaired by this ingest (its source is one of the inputs), and no input already stored with other
    settings (``cpfs.ingest.check_stored_settings``). Raises PreflightError naming the store."""
    from cpfs.errors import StoreError
    from cpfs.ingest import SettingsConflictError, check_stored_settings
    from cpfs.video import discover, sample_videos
    from storage import VideoStore

    try:
        store = VideoStore.open(config.store, create=False)
    except StoreError:
        return  # no store yet (or not one): the ingest creates it, or names the problem
    report = store.verify(full=False)
    if report.damaged:
        sources, _ = discover(config.inputs or [str(p) for p in sample_videos()])
        inputs = {s.path for s in sources}
        lost = {vid: problems for vid, problems in report.damaged.items()
                if store.video_attrs(vid).get("source_path") not in inputs}
        if lost:
            raise _fail("ingest.store.path", f"{config.store.path} holds {len(lost)} damaged video(s) whose source "
                        "is not among this run's inputs: " + "; ".join(
                            f"{vid} ({store.video_attrs(vid).get('source_path')}): {problems[0]}"
                            for vid, problems in lost.items())
                        + f". Ingest their sources again to repair them (cpfs ingest SOURCE --store {config.store.path}), "
                          "or use another store")
    try:
        check_stored_settings(config)
    except SettingsConflictError as e:
        raise _fail("ingest.store.path", str(e)) from None


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
