"""Configuration of the fine-tuning protocol (``cpfs.evaluation.finetune``), a part of ``EvalConfig``.

Off by default: it trains every network it compares (each checkpoint and random init, once per seed). The
defaults are the smoke scale, a few CPU minutes on scikit-learn's digits; ``docs/finetune.md`` gives the GPU
(paper) scale on VOC 2007.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from cpfs.config.base import ConfigModel


class FinetuneConfig(ConfigModel):
    """Fine-tune the trunk plus a new head, trained network against random init of its seed, same schedule."""

    enabled: bool = Field(default=False, description="Run the fine-tuning protocol (trains each network compared, once per seed)")
    # VOC2007 root (JPEGImages/, ImageSets/Main/<class>_trainval.txt and _test.txt): fine-tuned on trainval,
    # scored on test by the devkit's 11-point mAP. None: scikit-learn's digits, half fitted, half scored (smoke).
    voc07: str | None = Field(default=None, description="VOC2007 root for fine-tuned classification (None: digits, smoke scale)")
    digits_per_class: int = Field(default=20, ge=2, description="Smoke scale: digits per class (half train, half test)")
    size: int = Field(default=64, ge=63, description="Images resized to this square side, px")
    layer: str = Field(default="fc7", description="The trunk is cut after this layer; a linear head reads it pooled")
    steps: int = Field(default=60, ge=1, description="SGD steps of each fine-tuning")
    batch_size: int = Field(default=16, ge=1, description="Images per fine-tuning step")
    lr: float = Field(default=0.01, gt=0, description="Peak learning rate (momentum 0.9, cosine decay to 0)")
    weight_decay: float = Field(default=5e-4, ge=0, description="SGD weight decay")

    @field_validator("layer")
    @classmethod
    def _known_layer(cls, v: str) -> str:
        from cpfs.training.model import LAYER_NAMES  # here, not at the top: importing the configuration needs no torch

        if v not in LAYER_NAMES:
            raise ValueError(f"layer must be one of {list(LAYER_NAMES)}, got {v!r}")
        return v
