"""The layers import downhill only: ``flows/`` -> ``tasks/`` -> ``cpfs/`` and ``storage/``.

- ``cpfs/`` and ``storage/`` (the library) never import Prefect, ``tasks`` or ``flows``: they stay usable
  without an orchestrator;
- ``tasks/`` never imports ``flows`` (a task calls the library, never a flow);
- ``storage/`` owns the Zarr layout and takes from ``cpfs`` only its leaf modules (the configuration,
  errors, records and motion statistics), none of which imports ``storage`` back.

``cpfs/`` is grouped by stage (issue 22): ``ingest/``, ``flow/``, ``training/``, ``evaluation/``, ``export/`` and
``config/`` beside a few shared leaf modules; the stages import downhill too (ingest never imports training,
evaluation or export; training never imports export). Inside ``storage/`` no file calls another file's private
methods and the imports form no circle (``storage.io`` is the public ground the role modules stand on).

Checked on the source (every import statement, inside functions too, ``TYPE_CHECKING`` ones included) and, for
Prefect, at run time.
"""

from __future__ import annotations

import ast
import re
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
    code = ("import sys, cpfs.ingest.steps, cpfs.training.train, cpfs.training.data, cpfs.training.distributed_train, cpfs.pipeline, cpfs.training.launch, "
            "cpfs.config, cpfs.evaluation.run, cpfs.flow.torch_tvl1, storage; "
            "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# What ls cpfs/ shows: the stage packages and the shared modules beside them, nothing else.
STAGE_PACKAGES = {"ingest", "flow", "training", "evaluation", "export", "config"}
SHARED_MODULES = {"__init__", "errors", "records", "locks", "motion", "progress", "pipeline", "distributed_train"}


def test_cpfs_is_grouped_by_stage():
    packages = {p.name for p in (REPO / "cpfs").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in (REPO / "cpfs").glob("*.py")}
    assert (packages, modules) == (STAGE_PACKAGES, SHARED_MODULES)


@pytest.mark.parametrize("stage, forbidden", [
    ("ingest", {"training", "evaluation", "export"}),
    ("flow", {"ingest", "training", "evaluation", "export"}),
    ("training", {"export"}),
    # the configuration names the model's layers and the run folder's files (cpfs.training.model, .run_folder)
    ("config", {"ingest", "flow", "evaluation", "export"}),
])
def test_stages_import_downhill(stage, forbidden):
    bad = {f"cpfs.{f}" for f in forbidden}
    assert _violations(f"cpfs/{stage}", lambda m: any(m == b or m.startswith(b + ".") for b in bad)) == []


def test_each_stage_package_names_its_public_face():
    import importlib

    for stage in ("ingest", "training", "export"):
        pkg = importlib.import_module(f"cpfs.{stage}")
        assert pkg.__doc__ and pkg.__all__, stage
        for name in pkg.__all__:  # every advertised name resolves (modules are imported on first use)
            assert getattr(pkg, name) is not None, (stage, name)


def _storage_modules() -> dict[str, Path]:
    return {p.stem: p for p in (REPO / "storage").glob("*.py") if p.stem != "__init__"}


def _storage_imports(path: Path) -> set[str]:
    """The storage modules ``path`` imports (relative or absolute, TYPE_CHECKING ones included)."""
    out = set()
    names = _storage_modules()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 or mod.split(".")[0] == "storage":
                base = mod.removeprefix("storage").lstrip(".")
                if base:
                    out.add(base.split(".")[0])
                else:
                    out |= {a.name for a in node.names if a.name in names}
    return out


def test_storage_imports_form_no_circle():
    graph = {name: _storage_imports(path) - {name} for name, path in _storage_modules().items()}
    done: set[str] = set()

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, "import circle in storage/: " + " -> ".join((*stack, node))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, (*stack, node))
        done.add(node)

    for name in graph:
        visit(name, ())


def test_no_storage_file_calls_a_private_method_of_another_files_class():
    found = []
    for path in sorted((REPO / "storage").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert found == []


def _documented_module_entry_points() -> list[str]:
    """Every ``python -m MODULE`` / ``-m MODULE`` of this project named in the user and developer documents."""
    docs = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]
    found = set()
    for doc in docs:
        for mod in re.findall(r"-m ((?:cpfs|flows|storage|tasks)(?:\.\w+)+|cpfs|flows)\b", doc.read_text()):
            found.add(mod)
    return sorted(found)


def test_the_documents_name_the_torchrun_entry_point():
    assert "cpfs.distributed_train" in _documented_module_entry_points()


@pytest.mark.parametrize("module", _documented_module_entry_points())
def test_every_documented_python_m_entry_point_answers_help(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0 and "usage" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
