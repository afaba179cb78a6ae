"""Tests of cpfs.training.validation: which sequences validate a run, the best checkpoint it keeps, and that validating
changes nothing of the training itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpfs.training.checkpoint import resolve_checkpoint
from cpfs.config import StoreConfig, ValidationConfig
from cpfs.training.run_folder import RunFolder
from cpfs.training.train import train
from cpfs.training.validation import ValidationResult, Validator, validation_sequences
from storage.store import VideoStore
from tests.cpfs.training.test_data import add_video, synthetic_video
from tests.cpfs.training.test_train import tiny_config


def _davis_tree(root: Path, names: list[str], n_frames: int = 4, h: int = 48, w: int = 64) -> Path:
    """A DAVIS-layout tree: a square moving right over a striped background, its mask in Annotations."""
    for k, name in enumerate(names):
        fdir, mdir = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        fdir.mkdir(parents=True)
        mdir.mkdir(parents=True)
        for t in range(n_frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, ::4] = (40, 80, 120)
            mask = np.zeros((h, w), np.uint8)
            y, x = 12 + k, 8 + 4 * t
            img[y:y + 16, x:x + 16] = (200, 60, 30)
            mask[y:y + 16, x:x + 16] = 255
            Image.fromarray(img).save(fdir / f"{t:05d}.jpg", quality=95)
            Image.fromarray(mask).save(mdir / f"{t:05d}.png")
    return root


def test_sequences_default_to_those_not_trained_on(tmp_path: Path) -> None:
    root = _davis_tree(tmp_path / "d", ["a", "b", "c"], n_frames=2)
    frames = root / "JPEGImages" / "480p"
    cfg = ValidationConfig(davis=str(root))
    assert validation_sequences(cfg, [frames / "b", "/elsewhere/video.mp4"]) == ["a", "c"]
    assert validation_sequences(cfg.model_copy(update={"sequences": ["c"]}), [frames / "b"]) == ["c"]


def test_a_trained_or_unknown_sequence_is_refused(tmp_path: Path) -> None:
    root = _davis_tree(tmp_path / "d", ["a", "b"], n_frames=2)
    frames = root / "JPEGImages" / "480p"
    with pytest.raises(ValueError, match=r"\['b'\] are training videos of this run"):
        validation_sequences(ValidationConfig(davis=str(root), sequences=["a", "b"]), [frames / "b"])
    with pytest.raises(ValueError, match=r"\['zz'\] are not sequences of"):
        validation_sequences(ValidationConfig(davis=str(root), sequences=["zz"]), [])
    with pytest.raises(ValueError, match="every one is a training video"):
        validation_sequences(ValidationConfig(davis=str(root)), [frames / "a", frames / "b"])
    with pytest.raises(ValueError, match="validation.davis is not set"):
        validation_sequences(ValidationConfig(), [])


def test_the_best_checkpoint_follows_the_highest_score(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    files = {}
    for step in (1, 2, 3):
        files[step] = run.checkpoint(step)
        files[step].write_bytes(f"weights of step {step}".encode())
    v = Validator(ValidationConfig(davis="unused"), ["a"], run.path)
    assert v.best() is None
    new = [v.record(ValidationResult(step, score, 0.0, 0.0, {"a": score}), files[step])
           for step, score in ((1, 0.5), (2, 0.7), (3, 0.6))]
    assert new == [True, True, False]
    assert run.best_checkpoint.read_bytes() == b"weights of step 2" and v.best()["step"] == 2
    v.truncate(1)  # a resumed run redoes steps 2 and 3
    assert [r["step"] for r in v.history()] == [1]


def test_validation_reads_the_features_its_layers_name(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from cpfs.config import EvalConfig
    from cpfs.evaluation.baselines import random_init_model
    from cpfs.evaluation.davis import davis_protocol
    from cpfs.evaluation.features import hypercolumn_features, model_embedding_features

    # The default is the evaluation's DAVIS features, so the best checkpoint is the best by what is reported.
    assert list(ValidationConfig().layers) == EvalConfig(checkpoint="x").davis_layers == ["embedding", "conv1"]
    root = _davis_tree(tmp_path / "d", ["a"], n_frames=3)
    model = random_init_model(width=0.25, seed=3)
    kw = dict(size=64, max_frames=3)
    for layers, fn in ((("embedding",), model_embedding_features(model)),
                       (("conv1", "conv2"), hypercolumn_features(model.trunk, ("conv1", "conv2")))):
        got = Validator(ValidationConfig(davis=str(root), layers=layers, **kw), ["a"], tmp_path / "r").measure(model, 1)
        assert got.score == pytest.approx(davis_protocol(fn, str(root), ["a"], **kw)["JF_mean"], abs=1e-9)
    for bad in ((), ("conv9",), ("embedding", "embedding")):
        with pytest.raises(ValidationError, match="validation.layers must be a non-empty list of distinct names"):
            ValidationConfig(layers=bad)
        with pytest.raises(ValidationError, match="davis_layers must be"):
            EvalConfig(checkpoint="x", davis_layers=list(bad))


@pytest.fixture(scope="module")
def davis_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[StoreConfig, Path]:
    """A store of two synthetic videos, one of them ingested (as far as its attributes say) from the DAVIS
    tree's sequence ``a``; the tree also holds ``b`` and ``c``, which the run does not train on."""
    base = tmp_path_factory.mktemp("vs")
    root = _davis_tree(base / "davis", ["a", "b", "c"])
    cfg = StoreConfig(path=str(base / "s.zarr"), shard_frames=32)
    store = VideoStore.open(cfg, create=True)
    for i in range(2):
        frames, flow = synthetic_video(i)
        add_video(store, f"vid{i}", frames, flow, source_path=str(root / "JPEGImages" / "480p" / "a") if i == 0 else None)
    store.write_index()
    return cfg, root


def test_training_validates_keeps_the_best_and_trains_the_same(davis_store, tmp_path: Path) -> None:
    store_cfg, root = davis_store
    cfg = tiny_config(steps=4, checkpoint_every=2, holdout_fraction=0.0)
    with_val = cfg.model_copy(update={"validation": ValidationConfig(davis=str(root), size=64, max_frames=3)})
    plain = train(cfg, store_cfg, tmp_path / "plain")
    checked = train(with_val, store_cfg, tmp_path / "val")
    for k, v in plain.model.state_dict().items():  # validating changed nothing of the training
        torch.testing.assert_close(checked.model.state_dict()[k], v, rtol=0, atol=0)
    run = RunFolder(tmp_path / "val")
    rows = [json.loads(line) for line in run.validation.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(0.0 <= r["J&F"] <= 1.0 and set(r["per_sequence"]) == {"b", "c"} for r in rows)
    best = max(rows, key=lambda r: (r["J&F"], -r["step"]))["step"]
    assert torch.load(run.best_checkpoint, weights_only=False)["step"] == best
    assert not RunFolder(tmp_path / "plain").best_checkpoint.exists()
    # A run folder given to the evaluation (or any reader) means its best validated checkpoint, else its latest.
    assert resolve_checkpoint(tmp_path / "val") == run.best_checkpoint
    assert resolve_checkpoint(tmp_path / "plain").name == "step-00000004.pt"


def test_the_preflight_names_a_validation_sequence_that_is_trained_on(davis_store, tmp_path: Path) -> None:
    from cpfs.config import TrainStageConfig
    from cpfs.pipeline import PreflightError, check_train

    store_cfg, root = davis_store
    stage = TrainStageConfig(store=store_cfg, run_dir=str(tmp_path / "r"),
                             train=tiny_config(heldout_videos=["vid1"], validation={"davis": str(root), "sequences": ["a"]}))
    with pytest.raises(PreflightError, match=r"train.validation: validation.sequences \['a'\] are training videos"):
        check_train(stage)  # vid0, a training video, was ingested from sequence a
    ok = stage.model_copy(update={"train": stage.train.model_copy(update={"validation": ValidationConfig(davis=str(root), sequences=["b"])})})
    assert check_train(ok).train.heldout_videos == ["vid1"]
    missing = stage.model_copy(update={"train": stage.train.model_copy(update={"validation": ValidationConfig(davis=str(tmp_path / "nope"))})})
    with pytest.raises(PreflightError, match="DAVIS frame folder is missing"):
        check_train(missing)
