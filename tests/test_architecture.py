"""Architecture rules checked from the source: no import cycles among lowrank's modules.

Every ``import`` statement counts, module-level or inside a function (an import hidden in a function
is how a cycle stays unnoticed), with relative imports resolved against the importing module.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import lowrank

ROOT = Path(lowrank.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ["lowrank", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The lowrank module ``name`` refers to (itself, or its longest module prefix), else None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """``{module: {lowrank modules it imports}}`` over every import statement of every module."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
                targets.update(f"{base}.{alias.name}" for alias in node.names)
                targets.add(base)
        graph[name] = {t for t in map(lambda t: _resolve(t, modules), targets) if t and t != name}
    return graph


def _package_of(module: str, graph: dict[str, set[str]]) -> set[str]:
    """A module's enclosing packages (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))} & graph.keys()


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _without_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges from a module to its own enclosing packages.

    ``lowrank/solvers/nmf.py`` doing ``from ..registry import register`` touches ``lowrank/__init__``
    only because Python runs a package's ``__init__`` first; a package's ``__init__`` importing its
    submodules (to register them) is the normal direction, so edges up to an enclosing package are
    not dependencies of their own.
    """
    return {m: deps - _package_of(m, graph) for m, deps in graph.items()}


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "lowrank.registry" in graph["lowrank.build"]  # from .registry import ...
    assert "lowrank.solvers.base" in graph["lowrank.solvers.nmf"]  # from .base import ...
    # the checker itself finds a planted cycle, also through a function-level import
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(planted) == [["a", "b", "c"]]


def test_no_import_cycles_among_lowrank_modules():
    cycles = find_cycles(_without_package_edges(import_graph()))
    assert not cycles, "import cycles among lowrank modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _registered_classes() -> list[tuple[str, str, type]]:
    out = []
    for entry in lowrank.list_parts():
        kind, name = entry.split(":")
        obj = lowrank.registry.get_part_info(kind, name).obj
        if isinstance(obj, type):
            out.append((kind, name, obj))
    return out


def test_every_registered_part_class_is_importable_from_its_subpackage():
    classes = _registered_classes()
    assert len(classes) > 20
    for kind, name, cls in classes:
        subpackage = ".".join(cls.__module__.split(".")[:2])
        package = importlib.import_module(subpackage)
        assert getattr(package, cls.__name__, None) is cls, (
            f"{kind} {name}: from {subpackage} import {cls.__name__}"
        )
        assert cls.__name__ in package.__all__


def test_subpackage_imports_users_write():
    from lowrank.blocks import Factorizer, Hamburger  # noqa: F401
    from lowrank.convs import CPConv, DenseConv  # noqa: F401
    from lowrank.matricize import SwinMatricize  # noqa: F401
    from lowrank.nets import SwinFactorizer
    from lowrank.solvers import NMF

    assert SwinFactorizer is lowrank.registry.get_part_info("net", "swin_factorizer").obj
    assert NMF is lowrank.registry.get_part_info("solver", "nmf").obj


def test_importing_lowrank_leaves_torch_global_state_unchanged():
    """No FLOP formulas registered into torch at import (lowrank.flops scopes them)."""
    script = (
        "import torch, torch.utils.flop_counter as fc\n"
        "before = set(fc.flop_registry)\n"
        "import lowrank, lowrank.flops\n"
        "assert set(fc.flop_registry) == before, set(fc.flop_registry) ^ before\n"
        "with lowrank.flops.count_flops():\n"
        "    assert torch.ops.aten.baddbmm_ in fc.flop_registry\n"
        "assert set(fc.flop_registry) == before\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
