"""What a user takes home: a trained network as a frozen feature extractor and as an exported model.

- ``backbone``: ``load_backbone`` (also ``cpfs.load_backbone``): a run folder, checkpoint or export folder as
  a frozen PyTorch feature extractor;
- ``exporter``: ``export_model``: safetensors weights, architecture.json, an ONNX graph checked against
  PyTorch, and the model card, into an export folder;
- ``model_card``: MODEL_CARD.md from the checkpoint's provenance and the evaluation's verdicts.

The names below are the package's public face; each module is imported on first use.
"""

from __future__ import annotations

_PUBLIC = {
    "load_backbone": "backbone", "Backbone": "backbone",
    "export_model": "exporter", "ExportError": "exporter", "ExportResult": "exporter", "ExportSummary": "exporter",
    "load_exported_model": "exporter",
    "verdict_markdown": "model_card",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the public face, each module imported on first use
    if name in _PUBLIC:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
