"""Configuration of the whole pipeline: ingest -> train -> evaluate on one store.

``cpfs run``'s flags are derived from these fields, each stage's under the name its own command gives it
(``--backend``, ``--steps``, ``--seeds``); a name two stages share carries each one's stage in front
(``--train-threads``, ``--evaluate-threads``). The help shows them in one panel group per stage.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from cpfs.config.base import Cli, ConfigModel
from cpfs.config.evaluate import EvalConfig, eval_dir
from cpfs.config.ingest import IngestConfig
from cpfs.config.store import StoreConfig
from cpfs.config.train import DEFAULT_RUN_DIR, TrainStageConfig

Stage = Literal["ingest", "train", "evaluate"]
STAGES: tuple[str, ...] = ("ingest", "train", "evaluate")


class PipelineConfig(ConfigModel):
    """ingest -> train -> evaluate on one store. ``train.store`` and ``evaluate.store`` always equal
    ``ingest.store`` (given there too, they must be the same store); ``evaluate.checkpoint`` defaults to the
    training run folder (its latest checkpoint) and ``evaluate.out`` to ``<run_dir>/eval``."""

    cli_panels: ClassVar[dict[str, tuple[str, ...]]] = {
        "Ingest": ("ingest",), "Training": ("train",), "Evaluation": ("evaluate",), "Export": ("export",)}
    ingest: Annotated[IngestConfig, Cli(prefix="")] = Field(default_factory=IngestConfig)
    train: Annotated[TrainStageConfig, Cli(prefix="")] = Field(default_factory=TrainStageConfig)
    evaluate: Annotated[EvalConfig | None, Cli(prefix="")] = Field(
        default=None, description="Evaluation (None: the run folder's checkpoint, out <run_dir>/eval)")
    # After a successful training and evaluation: safetensors weights, architecture, ONNX graph and MODEL_CARD.md
    # into <run_dir>/export (cpfs.export.exporter; an earlier export there is replaced, any other content is an error).
    export: bool = Field(default=False, description="Export the trained network with its model card into <run_dir>/export")

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
        train = data.get("train") or {}
        run_dir = (train.run_dir if isinstance(train, BaseModel) else train.get("run_dir")) or DEFAULT_RUN_DIR
        for stage in ("train", "evaluate"):
            sub = data.get(stage)
            sub = sub.model_dump(mode="json", by_alias=True) if isinstance(sub, BaseModel) else dict(sub or {})
            if stage == "evaluate":
                sub.setdefault("checkpoint", run_dir)
                sub.setdefault("out", eval_dir(run_dir))
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

    def for_store_version(self, version: str) -> "PipelineConfig":
        """This configuration training into the run folder of store index ``version`` when
        ``train.version_runs`` is set, and evaluating that run when it evaluates the default one."""
        train = self.train.for_store_version(version)
        if train is self.train:
            return self
        ev = self.evaluate
        if ev is not None and ev.checkpoint == self.train.run_dir:
            ev = ev.model_copy(update={"checkpoint": train.run_dir, "out": eval_dir(train.run_dir)})
        return self.model_copy(update={"train": train, "evaluate": ev})
