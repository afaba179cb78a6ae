"""Stage tasks of the pipeline: each runs one stage's flow as a subflow, and is cached on a content key
(``cpfs.pipeline`` fingerprints: inputs, configuration, code, store index version, checkpoint hash), never
on the flow-run id. A retried or repeated pipeline run therefore skips every stage whose outputs already
exist for the same inputs, and ``force`` recomputes one stage (``refresh_cache``)."""

from __future__ import annotations

from prefect import task

from cpfs.config import IngestConfig, TrainStageConfig
from cpfs.evaluation.config import EvalConfig
from cpfs.records import IngestSummary


def _key(prefix: str):  # noqa: ANN202
    def key(_ctx, params: dict) -> str:  # noqa: ANN001
        return f"cpfs-{prefix}-{params['fingerprint']}"

    return key


@task(name="ingest-stage", cache_key_fn=_key("ingest"), persist_result=True)
def ingest_stage(config: IngestConfig, fingerprint: str) -> IngestSummary:
    """The ``ingest`` flow as a subflow. Its summary (bad videos included) is the cached result."""
    from flows.ingest import ingest

    state = ingest(config, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, IngestSummary):  # the flow itself broke, not just some videos
        raise RuntimeError(f"ingest failed: {state.message}")
    return summary


@task(name="train-stage", cache_key_fn=_key("train"), persist_result=True)
def train_stage(config: TrainStageConfig, fingerprint: str):  # noqa: ANN201 - tasks.train.TrainSummary
    from flows.train import train

    return train(config)


@task(name="evaluate-stage", cache_key_fn=_key("evaluate"), persist_result=True)
def evaluate_stage(config: EvalConfig, fingerprint: str):  # noqa: ANN201 - cpfs.evaluation.run.EvalSummary
    from flows.evaluate import evaluate

    return evaluate(config)
