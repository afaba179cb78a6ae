"""The layers import downhill only: ``flows/`` -> ``tasks/`` -> ``cpfs/`` and ``storage/``.

- ``cpfs/`` and ``storage/`` (the library) never import Prefect, ``tasks`` or ``flows``: they stay usable
  without an orchestrator;
- ``tasks/`` never imports ``flows`` (a task calls the library, never a flow);
- ``storage/`` owns the Zarr layout and takes from ``cpfs`` only its leaf modules (the configuration,
  errors, records and motion statistics), none of which imports ``storage`` back.

Checked on the source (every import statement, inside functions too) and, for Prefect, at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What storage/ may take from cpfs (the package itself is for ``cpfs.__version__``).
STORAGE_MAY_USE = {"cpfs", "cpfs.config", "cpfs.errors", "cpfs.records", "cpfs.motion", "cpfs.locks"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``; ``from cpfs import motion`` gives ``cpfs.motion``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _violations(folder: str, forbidden) -> list[str]:  # noqa: ANN001 - a predicate on module names
    return [f"{p.relative_to(REPO)}:{line}: imports {mod}"
            for p in sorted((REPO / folder).rglob("*.py")) for line, mod in _imports(p) if forbidden(mod)]


def _top(mod: str) -> str:
    return mod.split(".")[0]


@pytest.mark.parametrize("folder", ["cpfs", "storage"])
def test_the_library_imports_no_orchestration(folder):
    assert _violations(folder, lambda m: _top(m) in {"prefect", "prefect_dask", "tasks", "flows"}) == []


def test_tasks_never_import_flows():
    assert _violations("tasks", lambda m: _top(m) == "flows") == []


def test_storage_takes_only_leaf_modules_of_cpfs():
    def forbidden(mod: str) -> bool:
        if _top(mod) != "cpfs":
            return False
        # "from cpfs.config import StoreConfig" also yields "cpfs.config.StoreConfig": judge by module prefix.
        return not any(mod == ok or mod.startswith(ok + ".") for ok in STORAGE_MAY_USE - {"cpfs"}) and mod != "cpfs"

    assert _violations("storage", forbidden) == []
    # ...and those leaf modules never import storage back.
    leaves = [REPO / "cpfs" / "errors.py", REPO / "cpfs" / "records.py", REPO / "cpfs" / "motion.py", REPO / "cpfs" / "locks.py",
              *(REPO / "cpfs" / "config").rglob("*.py")]
    assert [f"{p.relative_to(REPO)}: {m}" for p in leaves for _, m in _imports(p) if _top(m) == "storage"] == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from flows.ingest import ingest\n    import prefect\n")
    assert {m for _, m in _imports(f)} >= {"flows.ingest", "prefect"}


def test_library_does_not_import_prefect():
    code = ("import sys, cpfs.ingest, cpfs.train, cpfs.data, cpfs.distributed_train, cpfs.pipeline, cpfs.launch, "
            "cpfs.config, cpfs.evaluation.run, cpfs.flow.torch_tvl1, storage; "
            "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
