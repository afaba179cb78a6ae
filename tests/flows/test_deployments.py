"""``prefect.yaml``: every entrypoint resolves to a flow, every parameter set validates, and the
deployments run end to end on a real server, work pool and process worker."""

from __future__ import annotations

import importlib
import time
import uuid
from pathlib import Path

import pytest
import yaml

from cpfs.config import StoreConfig
from storage import VideoStore
from tests.flows.conftest import REPO, api_of, run_cli, wait_until
from tests.helpers import cut_clip

# Spawns process groups and tears them down: one xdist worker runs every such test, one after the other.
pytestmark = pytest.mark.xdist_group("process-groups")

PREFECT_YAML = REPO / "prefect.yaml"
POOL = "cpfs-process"


def _load() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def _deployments() -> list[dict]:
    return _load()["deployments"]


def _import_entrypoint(entrypoint: str):  # noqa: ANN202
    """``flows/ingest.py:ingest`` -> the object ``flows.ingest.ingest`` (imported as a module, the way
    the installed package sees it)."""
    path, _, name = entrypoint.partition(":")
    assert path.endswith(".py") and name, f"{PREFECT_YAML}: entrypoint {entrypoint!r} is not path/to/file.py:function"
    assert (REPO / path).is_file(), f"{PREFECT_YAML}: entrypoint file {path} does not exist"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def _all_parameter_sets(dep: dict) -> list[dict]:
    """The deployment's parameters, and each schedule's parameters laid over them."""
    base = dep.get("parameters") or {}
    sets = [base]
    for sched in dep.get("schedules") or []:
        if sched.get("parameters"):
            sets.append({**base, **sched["parameters"]})
    return sets


def test_prefect_yaml_is_a_valid_project_file():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(_load())
    names = [(d.entrypoint, d.name) for d in model.deployments]
    assert len(names) == len(set(names)), f"duplicate deployment names in {PREFECT_YAML}: {names}"
    for d in model.deployments:
        assert d.work_pool is not None and d.work_pool.name == POOL, d.name
    pull = _load()["pull"]
    assert any("prefect.deployments.steps.set_working_directory" in step for step in pull)


@pytest.mark.parametrize("dep", _deployments(), ids=lambda d: f"{d['entrypoint']}/{d['name']}")
def test_entrypoint_resolves_to_a_flow_and_parameters_validate(dep):
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    obj = _import_entrypoint(dep["entrypoint"])
    assert isinstance(obj, Flow), f"{dep['entrypoint']} is a {type(obj).__name__}, not a Prefect flow"
    # The way `prefect deploy` and the worker load it: by file path.
    path, _, name = dep["entrypoint"].partition(":")
    assert load_flow_from_entrypoint(f"{REPO / path}:{name}").name == obj.name
    schema = parameter_schema(obj).model_dump_for_openapi()
    for params in _all_parameter_sets(dep):
        errors = validate(params, schema, raise_on_error=False, preprocess=True)
        assert not errors, f"{dep['name']}: parameters {params} fail the schema of {obj.name}: {errors}"
        obj.validate_parameters(params)  # pydantic: the same check the flow run does


def test_watch_folder_deployment_polls_every_15_minutes_one_run_at_a_time():
    dep = next(d for d in _deployments() if d["name"] == "watch-folder")
    (sched,) = dep["schedules"]
    assert sched.get("interval") == 900 or sched.get("cron") == "*/15 * * * *"
    assert dep["concurrency_limit"]["limit"] == 1
    from flows.ingest import ingest

    cfg = ingest.validate_parameters(dep["parameters"])["config"]
    assert cfg.inputs and not Path(cfg.inputs[0]).is_absolute()  # relative to the checkout (pull step)


def test_schema_check_rejects_bad_parameters():
    """The check above can fail: a typo'd key and an out-of-range value are both rejected."""
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.ingest import ingest

    schema = parameter_schema(ingest).model_dump_for_openapi()
    for bad in ({"config": {"inputz": ["x"]}}, {"config": {"decode": {"step": 0}}}):
        assert validate(bad, schema, raise_on_error=False), bad
        with pytest.raises(ParameterTypeError):
            ingest.validate_parameters(bad)


# ---------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory, sample_videos) -> Path:
    bikes = next(p for p in sample_videos if p.name == "bikes.mp4")
    return cut_clip(bikes, tmp_path_factory.mktemp("e2e-input") / "bikes6.mp4", 8)


def _final_state(client, run_id: uuid.UUID, timeout_s: float, check) -> object:  # noqa: ANN001
    box = {}

    def done() -> bool:
        run = client.read_flow_run(run_id)
        box["run"] = run
        return run.state is not None and run.state.is_final()

    wait_until(done, timeout_s, f"flow run {run_id} to finish", every_s=2.0, check=check)
    return box["run"]


@pytest.mark.slow
def test_deploy_all_then_a_process_worker_runs_ingest(real_prefect_server, client_env, processes, tmp_path,
                                                       tiny_video):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterParentFlowRunId)
    from prefect.deployments import run_deployment

    t0 = time.perf_counter()
    run_cli(["work-pool", "create", POOL, "--type", "process"], client_env)
    # The worker starts up (an import of Prefect: seconds) while `prefect deploy` runs.
    processes.start("worker", _prefect("worker", "start", "--pool", POOL, "--limit", "1"), client_env, cwd=tmp_path)
    out = run_cli(["--no-prompt", "deploy", "--all"], client_env, cwd=REPO).stdout
    assert "ingest/on-demand" in out and "ingest/watch-folder" in out, out[-2000:]
    t_deployed = time.perf_counter()

    store = tmp_path / "store.zarr"
    params = {"config": {"inputs": [str(tiny_video)], "store": {"path": str(store), "shard_frames": 2},
                         "decode": {"short_side": 48, "max_frames": 6}, "flow": {"backend": "opencv-dis"},
                         "n_workers": 1, "shards_per_task": 1}}
    with api_of(real_prefect_server), get_client(sync_client=True) as client:
        watch = client.read_deployment_by_name("ingest/watch-folder")
        assert [s.schedule.interval.total_seconds() for s in watch.schedules] == [900.0]
        (step,) = watch.pull_steps
        assert Path(step["prefect.deployments.steps.set_working_directory"]["directory"]).samefile(REPO)

        run = run_deployment("ingest/on-demand", parameters=params, timeout=0)
        run = _final_state(client, run.id, 300, processes.check_alive)
        t_done = time.perf_counter()
        assert run.state.is_completed(), (run.state, processes.log("worker"))

        subs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
        assert [client.read_flow(s.flow_id).name for s in subs] == ["ingest-videos"]
        assert subs[0].state.is_completed(), subs[0].state

        ids = [run.id, subs[0].id]
        keys = set()

        def artifacts_recorded() -> bool:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
            keys.update(a.key for a in arts)
            return {"ingest-progress", "ingest-results", "ingest-summary"} <= keys

        wait_until(artifacts_recorded, 30, f"artifacts of flow run {run.id} (have {keys})")

    stored = VideoStore.open(StoreConfig(path=str(store), shard_frames=2), create=False)
    assert len(stored.complete_ids()) == 1
    print(f"\ndeploy (pool + deploy --all + worker start): {t_deployed - t0:.1f} s; "
          f"run through the worker: {t_done - t_deployed:.1f} s")


def _prefect(*args: str) -> list[str]:
    from flows.server_process import prefect_command

    return prefect_command(*args)
