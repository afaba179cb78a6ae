"""Thin Prefect tasks of the evaluation stage: each calls one library function of ``cpfs.evaluation.run``.

``check_inputs`` builds the evaluation's context once (``cpfs.evaluation.context.prepare``: each checkpoint
read and hashed once); one task per protocol runs that protocol on every source of it (the checkpoint(s), the
random-init networks and the baselines) and returns a small dict of numbers. Protocol tasks are cached by
their inputs except the context (``TASK_SOURCE + INPUTS - "ctx"``): the configuration, the checkpoints'
SHA-256 and the store's index version, all small typed values, never arrays. The hashes are arguments, unused
by the body, precisely so that they enter the cache key: a retrained checkpoint at the same path, or a
re-ingested store, is a cache miss. The configuration includes ``out``, so evaluating into another folder
recomputes.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from cpfs.evaluation import run as lib
from cpfs.evaluation.context import EvalContext, prepare
from cpfs.config import EvalConfig

# Protocol results are pure functions of (config, checkpoint bytes, store content): cache and persist them.
# TASK_SOURCE is part of the key because every protocol task takes the same inputs: INPUTS alone would let
# one protocol's cached result answer for another. The context (loaded networks, the store) is not part of the
# key: it is what config + hashes describe, built once per flow run by ``check_inputs``.
_cached = dict(cache_policy=TASK_SOURCE + INPUTS - "ctx", persist_result=True, retries=1, retry_delay_seconds=2,
               retry_condition_fn=lambda task, run, state: transient_failure(state))


def transient_failure(state) -> bool:  # noqa: ANN001 - a Prefect State
    """Retry only what may pass the second time: a missing file, an unreadable image, a wrong layout or
    value (``OSError`` of a missing path, ``ValueError``, the project's ``CPFSError``) fail the same way
    every time, so they are reported at once instead of after a retry."""
    from cpfs.errors import CPFSError

    try:
        state.result()
    except (CPFSError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError):
        return False
    except Exception:  # noqa: BLE001 - anything else (out of memory, a lost worker) may be transient
        return True
    return False


@task(name="check-inputs", cache_policy=NO_CACHE, persist_result=False)
def check_inputs(config: EvalConfig) -> EvalContext:
    """Load the checkpoints and the store, recover the held-out split: the evaluation's one context (every
    protocol task runs on it), or an early error naming the path."""
    return prepare(config)


@task(name="flow-alignment", **_cached)
def flow_alignment(config: EvalConfig, checkpoint_sha256: tuple[str, ...], store_version: str, ctx: EvalContext) -> dict:
    return lib.run_protocol("flow_alignment", ctx)


@task(name="motion-segmentation", **_cached)
def motion_segmentation(config: EvalConfig, checkpoint_sha256: tuple[str, ...], store_version: str, ctx: EvalContext) -> dict:
    return lib.run_protocol("motion_segmentation", ctx)


@task(name="linear-probe", **_cached)
def linear_probe(config: EvalConfig, checkpoint_sha256: tuple[str, ...], store_version: str, ctx: EvalContext) -> dict:
    return lib.run_protocol("linear_probe", ctx)


@task(name="voc-segmentation", **_cached)
def segmentation(config: EvalConfig, checkpoint_sha256: tuple[str, ...], store_version: str, ctx: EvalContext) -> dict:
    return lib.run_protocol("segmentation", ctx)


@task(name="davis", **_cached)
def davis(config: EvalConfig, checkpoint_sha256: tuple[str, ...], store_version: str, ctx: EvalContext) -> dict:
    return lib.run_protocol("davis", ctx)


@task(name="davis-foreground", **_cached)
def foreground(config: EvalConfig, checkpoint_sha256: tuple[str, ...], store_version: str, ctx: EvalContext) -> dict:
    return lib.run_protocol("foreground", ctx)


@task(name="finetune", **_cached)
def finetune(config: EvalConfig, checkpoint_sha256: tuple[str, ...], store_version: str, ctx: EvalContext) -> dict:
    return lib.run_protocol("finetune", ctx)


PROTOCOL_TASKS = {
    "flow_alignment": flow_alignment,
    "motion_segmentation": motion_segmentation,
    "linear_probe": linear_probe,
    "segmentation": segmentation,
    "davis": davis,
    "foreground": foreground,
    "finetune": finetune,
}


@task(name="write-report", cache_policy=NO_CACHE)
def write_report(ctx: EvalContext, protocols: dict, seconds: float) -> lib.EvalSummary:
    """Figures, results.json, report.md and report.html in ``config.out``; returns the summary."""
    return lib.summarize(lib.write_evaluation_report(ctx, protocols, seconds))
