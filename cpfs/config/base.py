"""The one base class of every configuration model, how a field names its command-line flag, and the one
merge and config-file reader.

Every model is frozen and rejects unknown keys (a typo in a parameter fails loudly). A field may carry a
``Cli`` marker in its annotation, read by ``flows.model_options`` when it derives a command's flags from
the model: ``flag`` is what the user types for a leaf field (``--store`` for ``store.path``), ``prefix`` the
flag prefix of a nested model's fields (``""``: none, so ``decode.step`` is ``--step``). Without a marker a
flag is the field's path joined by dashes (``optimizer.lr`` is ``--optimizer-lr``). A model's ``cli_panels``
groups its fields' flags into the help's panels.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from cpfs.errors import CPFSError

# The help panel of the flags most runs set, shown first; never titled by a parent's panel (see cli_panels).
COMMON_PANEL = "Common"


class ConfigModel(BaseModel):
    """Base of every configuration model: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # The command-line help's panels: {title: field names}, read by flows.model_options. A nested model listed
    # puts all its fields there, unless it has panels of its own: those are then titled "<title>: <its title>"
    # ("Training: Model" in `cpfs run`). A field no model lists stays in its parent's panel. COMMON_PANEL gathers
    # the flags most runs set, from every model, first.
    cli_panels: ClassVar[dict[str, tuple[str, ...]]] = {}


@dataclass(frozen=True)
class Cli:
    """Command-line metadata of a field, put in its annotation: ``Annotated[str, Cli(flag="--store")]``.

    ``flag``: the flag of a leaf field. ``prefix``: the flag prefix of a nested model's fields (replaces the
    path above them; ``""`` drops it). ``parse``: turns the typed text into ``{sibling field: value}`` (``--size
    256`` sets ``short_side``, ``--size 320x240`` sets ``size``). ``metavar``: shown in the help."""

    flag: str | None = None
    prefix: str | None = None
    parse: Callable[[str], dict[str, Any]] | None = None


class ConfigFileError(CPFSError):
    """A configuration file cannot be read or is not a JSON object; the message names the file."""


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``; where both hold a mapping (or ``over`` a model) the merge recurses."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", by_alias=True)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


# The features label propagation reads by default (DAVIS in the evaluation, and the validation measure during
# training): the model's own embedding beside conv1. Chosen on held-out davis-train sequences, never on davis/
# (bench/davis_layers.py; docs/benchmarks.md, "Which features for DAVIS label propagation").
PROPAGATION_LAYERS: tuple[str, ...] = ("embedding", "conv1")


def feature_layers(value: Sequence[str], field: str) -> list[str]:
    """``value`` checked as the feature layers of a dense protocol: a non-empty list of distinct trunk layers
    (``cpfs.training.model.LAYER_NAMES``) and "embedding" (the model's unit embedding). Raises ValueError naming
    ``field`` otherwise."""
    from cpfs.training.model import EMBEDDING, LAYER_NAMES  # here: importing the configuration needs no torch

    known = [*LAYER_NAMES, EMBEDDING]
    unknown = [name for name in value if name not in known]
    if unknown or not value or len(set(value)) != len(value):
        raise ValueError(f"{field} must be a non-empty list of distinct names among {known}, got {list(value)}")
    return list(value)


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """The JSON object in ``path`` ({} for None). Raises ConfigFileError naming the file."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigFileError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
