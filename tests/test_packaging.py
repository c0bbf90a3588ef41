"""The distribution's layout: one import name, `cegraph`, whose layers (cli, storage, tasks,
flows, deployments) are top-level folders of the repository and subpackages once installed."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("cli", "storage", "tasks", "flows", "deployments")
# what each layer may import: data flows deployments -> flows -> tasks -> cegraph/storage
BELOW = {"storage": set(), "tasks": {"storage"}, "flows": {"storage", "tasks"},
         "deployments": {"storage", "tasks", "flows"}}
PROBE = ("import importlib, json, sys; names = sys.argv[1:]; "
         "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))")


def _run(*args: str, cwd: Path, pythonpath: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    # built from a copy: an in-tree build leaves build/ and an egg-info in the checkout
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("cegraph", *LAYERS):
        shutil.copytree(REPO / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--quiet", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, text=True)
    [built] = (tmp / "dist").glob("cegraph-*.whl")
    return built


def test_the_wheel_claims_only_the_cegraph_import_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cegraph"} and len(tops) == 2
    # every module of the checkout is in it, at its place under cegraph/
    sources = {p.relative_to(REPO).as_posix() for folder in ("cegraph", *LAYERS)
               for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts}
    installed = {n if n.startswith("cegraph/") and n.split("/")[1] not in LAYERS
                 else n.removeprefix("cegraph/") for n in names if n.endswith(".py")}
    assert sources == installed
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cegraph = cegraph.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_installed_wheel_imports_its_layers_from_itself(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    modules = ["cegraph", *(f"cegraph.{layer}" for layer in LAYERS), "cegraph.cli.main",
               "cegraph.tasks.batch"]
    found = _run("-c", PROBE, *modules, cwd=tmp_path, pythonpath=site)
    for module, file in __import__("json").loads(found).items():
        assert Path(file).is_relative_to(site), (module, file)
    # the console script's target
    script = _run("-c", "from cegraph.cli.main import main; print(callable(main))",
                  cwd=tmp_path, pythonpath=site)
    assert script.strip() == "True"


def test_a_checkout_on_the_path_imports_its_own_layers(tmp_path):
    # not another install's: a worktree first on PYTHONPATH, from any folder
    found = __import__("json").loads(_run("-c", PROBE, *(f"cegraph.{layer}" for layer in LAYERS),
                                          cwd=tmp_path, pythonpath=REPO))
    assert {m: Path(f).parent for m, f in found.items()} == {
        f"cegraph.{layer}": REPO / layer for layer in LAYERS}


def test_no_source_names_a_layer_outside_the_cegraph_package():
    # a merge can bring back a layer imported by its bare name: tools/namespace_imports.py
    # rewrites it
    check = subprocess.run([sys.executable, str(REPO / "tools" / "namespace_imports.py"),
                            "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return ({a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            | {n.module for n in ast.walk(tree)
               if isinstance(n, ast.ImportFrom) and n.module and not n.level})


@pytest.mark.parametrize("folder", ["cegraph", *BELOW])
def test_layers_import_only_downwards(folder):
    allowed = BELOW.get(folder, set())
    for path in (REPO / folder).rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if folder == "cegraph":  # the method: a library without Prefect or the layers
                assert parts[0] != "prefect", (path, name)
            if parts[0] == "cegraph" and len(parts) > 1 and parts[1] in LAYERS:
                assert parts[1] == folder or parts[1] in allowed, (path, name)
