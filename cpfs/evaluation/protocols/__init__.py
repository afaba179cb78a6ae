"""The evaluation protocols as runners over every source, one module each.

Each module exports ``run(ctx: EvalContext) -> dict`` (``{source: result}``: the protocol on every checkpoint,
random-init network and baseline of ``ctx``) and ``HEADLINE``, the metric its summary line reports. The
measurements themselves are the pure functions of ``cpfs.evaluation.flow_alignment``, ``motion_segmentation``,
``linear_probe``, ``segmentation``, ``davis`` and ``foreground``; these modules choose the sources and seeds and
add the paired comparison against random init.
"""
