"""The rows of every protocol: a trained checkpoint, random init (one network per seed) or a trivial baseline.

A ``Source`` names where a row's features come from; ``EvalContext.features`` turns it into a ``FeatureFn``
for a seed. A fixed source (a checkpoint, a baseline) is the same for every seed, so its features are
computed once; random-init network s is built with seed s (``EvalContext.random_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cpfs.evaluation.features import FeatureFn

RANDOM = "random-init"  # the random-init row's name in the results
SourceKind = Literal["trained", "random-init", "baseline"]


@dataclass(frozen=True)
class Source:
    """One row of a protocol's results."""

    name: str  # row name: "cpfs" (or a compared checkpoint's name), "random-init", "position", ...
    kind: SourceKind
    baseline: FeatureFn | None = None  # the features of a baseline (None for a network)

    def __post_init__(self) -> None:
        if (self.kind == "baseline") != (self.baseline is not None):
            raise ValueError(f"source {self.name!r}: a baseline needs its FeatureFn, and only a baseline has one")

    @property
    def fixed(self) -> bool:
        """True when the features do not depend on the seed (everything but random init)."""
        return self.kind != "random-init"
