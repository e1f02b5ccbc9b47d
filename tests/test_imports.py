"""Module hygiene: every module of the project imports on its own, and no two import each other.

A module that imports only because another one was imported first, or two modules that import each
other (working, or not, by statement order), break as soon as someone reorders imports. The cycle
check reads the source with ``ast``: every ``import`` statement (at module level and inside
functions, since a deferred import still makes two modules depend on each other) and every
``importlib.import_module("...")`` with a literal name, resolved to the project's own modules.
Importing ``a.b.c`` counts as depending on ``a.b.c`` only, not on the packages ``a`` and ``a.b``
whose ``__init__`` run first: a package that re-exports its submodules is not a cycle.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pruning_env", "agents", "benchmarks")


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of :data:`PACKAGES` (a package is its ``__init__.py``)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports (see the module docstring for what counts)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in modules:  # ``import a.b.func``-like names: the longest module prefix
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, sorted for stable output)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles_and_resolves_relative_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    modules = {"p": tmp_path / "__init__.py", "p.x": tmp_path / "x.py", "p.y": tmp_path / "y.py"}
    modules["p.x"].write_text("import os\nfrom . import y\n\ndef f():\n    from p.y import thing\n")
    modules["p.y"].write_text("import importlib\n\ndef g():\n    importlib.import_module('p.x')\n")
    modules["p"].write_text("from .x import f\n")
    assert imported_modules("p.x", modules["p.x"], modules) == {"p.y"}
    assert imported_modules("p.y", modules["p.y"], modules) == {"p.x"}
    assert imported_modules("p", modules["p"], modules) == {"p.x"}


def test_the_project_has_no_import_cycles():
    modules = project_modules()
    assert {"pruning_env.env", "agents.factory", "benchmarks.criteria"} <= set(modules)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["agents.amc"] and graph["pruning_env.features"]  # the parser does see the imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Third-party libraries are imported once, before the fork: each child then imports one project
# module into an interpreter that holds none of the project's modules, in a fraction of a second.
_ISOLATED_IMPORTS = textwrap.dedent("""
    import importlib, json, os, sys, traceback
    sys.path.insert(0, ROOT)
    for lib in ("numpy", "torch", "torchvision", "torch_pruning", "gymnasium", "stable_baselines3", "pandas",
                "matplotlib", "yaml", "tqdm", "scipy.stats", "sklearn"):
        try:
            importlib.import_module(lib)
        except ImportError:
            pass
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in PACKAGES)
    assert not leaked, f"project modules imported before the fork: {leaked}"
    failures = {}
    for name in MODULES:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code, msg = 0, ""
            try:
                mod = importlib.import_module(name)
                if not os.path.abspath(mod.__file__).startswith(ROOT + os.sep):
                    code, msg = 1, f"imported from {mod.__file__}, not from {ROOT}"
            except BaseException:
                code, msg = 1, traceback.format_exc()
            os.write(w, msg.encode())
            os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode()
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failures[name] = msg or f"exit status {status}"
    print(json.dumps(failures))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_alone_in_a_fresh_interpreter():
    modules = sorted(project_modules())
    script = f"ROOT = {str(ROOT)!r}\nPACKAGES = {PACKAGES!r}\nMODULES = {modules!r}\n" + _ISOLATED_IMPORTS
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(f"import {name} failed:\n{msg}" for name, msg in failures.items())


def test_importing_the_agents_registry_does_not_import_stable_baselines3():
    """``import agents`` and listing the agents stay cheap: the SB3 agents load when one is built."""
    code = ("import sys, agents\nnames = agents.available_agents()\n"
            "print('ppo' in names and 'cem' in names, 'stable_baselines3' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "False"]
