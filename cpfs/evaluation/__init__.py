"""Evaluation of a frozen CPFS network (and of baselines) on downstream protocols.

Every protocol is a pure function that returns a plain dict of numbers, with a ``"summary"`` entry
``{metric: {"mean": float, "std": float}}`` that ``cpfs.evaluation.report`` tabulates:

- ``linear_probe``: layer-wise linear classifiers on pooled conv1..conv5 features (Zhang et al. 2016's
  protocol, Table 2 of the CPFS paper).
- ``segmentation``: a per-pixel linear classifier on frozen features, mean IoU (Pascal VOC layout).
- ``davis``: video object segmentation by label propagation in feature space, J and F (DAVIS layout).
- ``foreground``: a per-pixel foreground/background linear classifier per layer, fitted on other DAVIS
  sequences' masks (``davis_train``) and scored on the DAVIS ones, mean IoU.
- ``flow_alignment``: how well the embedding kernel matches the flow kernel on held-out video.
- ``motion_segmentation``: per-pixel linear classifier for "moves independently of the dominant motion".

Feature sources share one interface (``cpfs.evaluation.features.FeatureFn``) so every dense protocol runs
identically on a CPFS checkpoint, a random-init network and the trivial baselines of ``baselines``.
This package never imports Prefect; reporting (``report``) is a separate module.

The stage around them: ``context`` (the one ``EvalContext`` of an evaluation: checkpoints, held-out pairs of
``heldout``, random-init networks, a feature memo), ``sources`` (the rows: trained, random init, baseline),
``paired`` (rows over seeds, the paired comparison against random init), ``protocols/`` (one runner per
protocol: ``run(ctx)`` and its ``HEADLINE``) and ``run`` (``evaluate``, ``run_protocol``, the report).
"""
