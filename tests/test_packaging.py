"""The project's top-level packages (`cpfs`, `storage`, `tasks`, `flows`) cannot be shadowed by a folder of
the same name that another program puts on sys.path: a Dask worker inserts its scratch folder, which holds a
`storage/` spill folder, at sys.path[0]. Python's path finder takes such a folder for a namespace package
only when no regular package of that name is on sys.path, so every install must put the packages on
sys.path as regular packages: site-packages for a regular install, the checkout itself (a static .pth)
for an editable one, in any editable mode (pyproject.toml maps package-dir "" = ".")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cpfs", "storage", "tasks", "flows")


def test_a_folder_named_like_a_package_first_on_sys_path_does_not_shadow_it(tmp_path):
    scratch = tmp_path / "dask-scratch-space" / "worker-x"
    for name in PACKAGES:
        (scratch / name).mkdir(parents=True)  # like the worker's `storage/` spill folder: no __init__.py
    code = (f"import sys; sys.path.insert(0, {str(scratch)!r}); "
            "import cpfs, storage, tasks, flows, storage.store; "
            "print('\\n'.join(str(getattr(m, '__file__', None)) for m in (cpfs, storage, tasks, flows)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = [Path(line) for line in r.stdout.split()]
    assert files == [REPO / name / "__init__.py" for name in PACKAGES], r.stdout


def test_an_editable_install_in_the_default_mode_puts_the_checkout_on_sys_path(tmp_path):
    """Without the package-dir mapping setuptools installs an import hook (``__editable___*_finder.py``)
    that Python consults after its path finder: the shadowing above then happens."""
    project = tmp_path / "project"
    project.mkdir()
    for name in PACKAGES:
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    out = tmp_path / "wheel"
    code = f"from setuptools import build_meta; print(build_meta.build_editable({str(out)!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with zipfile.ZipFile(out / r.stdout.split()[-1]) as whl:
        names = [n for n in whl.namelist() if ".dist-info/" not in n]
        assert not [n for n in names if n.endswith("_finder.py")], names
        (pth,) = [n for n in names if n.endswith(".pth")]
        assert whl.read(pth).decode().split() == [str(project)]
