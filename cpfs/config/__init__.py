"""One typed configuration tree for the whole pipeline, defined once.

Every stage takes one of these models, built once at the boundary (the CLI, a Prefect flow's parameters)
and validated there; nothing below the boundary receives a raw dict or an argparse namespace. Pydantic
models double as Prefect flow parameters, so the Prefect UI shows and validates the same schema. The
command-line flags are derived from the same fields (``flows.model_options``).

- ``base``: ``ConfigModel`` (the one base class), ``Cli`` (a field's flag), ``deep_merge``, ``load_config_file``
- ``store``: ``StoreConfig``, shared by every stage
- ``ingest``: decoding, optical flow, shot cuts, ``IngestConfig``
- ``train``: ``TrainConfig`` and its presets, ``TrainStageConfig``
- ``evaluate``: ``EvalConfig``
- ``pipeline``: ``PipelineConfig`` (ingest -> train -> evaluate on one store)
"""

from cpfs.config.base import Cli, ConfigFileError, ConfigModel, deep_merge, load_config_file
from cpfs.config.evaluate import PROTOCOL_NAMES, EvalConfig, eval_dir
from cpfs.config.ingest import (
    FLOW_BACKENDS,
    CutConfig,
    DecodeConfig,
    DISParams,
    FarnebackParams,
    FlowBackendName,
    FlowConfig,
    IngestConfig,
    TVL1Params,
    parse_size,
)
from cpfs.config.pipeline import STAGES, PipelineConfig, Stage
from cpfs.config.store import StoreConfig
from cpfs.config.train import (
    DEFAULT_RUN_DIR,
    PRESETS,
    AugmentConfig,
    LossName,
    OptimizerConfig,
    PresetName,
    ScheduleConfig,
    TrainConfig,
    TrainStageConfig,
    ValidationConfig,
)

__all__ = [
    "DEFAULT_RUN_DIR", "FLOW_BACKENDS", "PRESETS", "PROTOCOL_NAMES", "STAGES", "AugmentConfig", "Cli",
    "ConfigFileError", "ConfigModel", "CutConfig", "DISParams", "DecodeConfig", "EvalConfig", "FarnebackParams",
    "FlowBackendName", "FlowConfig", "IngestConfig", "LossName", "OptimizerConfig", "PipelineConfig", "PresetName",
    "ScheduleConfig", "Stage", "StoreConfig", "TVL1Params", "TrainConfig", "TrainStageConfig", "ValidationConfig", "deep_merge",
    "eval_dir", "load_config_file", "parse_size",
]
