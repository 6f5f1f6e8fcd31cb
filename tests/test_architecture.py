"""The import rules of the README's architecture section, read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nfvi"
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def nfvi_imports(path: Path, top_level_only: bool = False) -> set[str]:
    return {m for m in imports(path, top_level_only) if m.split(".")[0] == "nfvi"}


def in_package(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_nothing_imports_the_cli():
    for path in MODULES:
        assert not any(in_package(m, "nfvi.cli") for m in nfvi_imports(path)), path


@pytest.mark.parametrize("path", [p for p in MODULES if "flows" in p.parts], ids=str)
def test_flows_know_only_tensors(path):
    outside = {m for m in nfvi_imports(path) if not in_package(m, "nfvi.flows", "nfvi.native")}
    assert not outside, (path, outside)


@pytest.mark.parametrize("path", [p for p in MODULES if "native" in p.parts], ids=str)
def test_native_kernels_are_a_leaf(path):
    assert not nfvi_imports(path), path


@pytest.mark.parametrize("name", ["nfvi/vae/model.py", "nfvi/energy/model.py",
                                  "nfvi/vae/networks.py", "nfvi/vae/likelihoods.py",
                                  "nfvi/energy/targets.py"])
def test_models_import_no_data_no_loop_no_jobs(name):
    allowed = ("nfvi.flows", "nfvi.native", "nfvi.vae.networks", "nfvi.vae.likelihoods")
    outside = {m for m in nfvi_imports(PACKAGE.parent / name) if not in_package(m, *allowed)}
    assert not outside, (name, outside)


def test_tasks_do_not_import_each_other():
    for path in MODULES:
        mod = module_name(path)
        for task, other in (("nfvi.vae", "nfvi.energy"), ("nfvi.energy", "nfvi.vae")):
            if in_package(mod, task):
                assert not any(in_package(m, other) for m in nfvi_imports(path)), path


@pytest.mark.parametrize("name", ["rundir.py", "errors.py", "launch.py", "config.py",
                                  "jobs.py", "api.py", "cli.py", "report/collect.py",
                                  "report/aggregate.py", "report/main.py"])
def test_light_modules_do_not_import_torch_at_module_level(name):
    top = imports(PACKAGE / name, top_level_only=True)
    assert not any(in_package(m, "torch") for m in top), name


def test_rundir_imports_neither_torch_nor_hydra():
    found = imports(PACKAGE / "rundir.py")
    assert not any(in_package(m, "torch", "hydra", "omegaconf") for m in found)


def test_backward_is_called_in_exactly_one_place():
    calls = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "backward"):
                calls.append((path.name, node.lineno))
    assert len(calls) == 1 and calls[0][0] == "training.py", calls


def test_no_function_is_longer_than_sixty_lines_unless_it_says_why():
    long = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if n > 60 and "numeric kernel" not in doc.lower():
                    long.append(f"{path.name}:{node.name} ({n} lines)")
    assert not long, long
