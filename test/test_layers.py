"""The package's layers hold: every import (module level or inside a function) goes downward.

The fused graph's contract (``pebal_ros.graph``) sits below both the exporter and the runtimes; the
runtimes never reach up into ``export``; and no two parts of the package import each other.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pebal_ros"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> pebal_ros modules it imports anywhere in its body."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in PKG.rglob("*.py"):
        mod = _module(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out[mod] |= {a.name for a in node.names if a.name.startswith("pebal_ros")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("pebal_ros"):
                    out[mod].add(target)
                    out[mod] |= {f"{target}.{a.name}" for a in node.names}   # `from . import x`
    return out


def _part(mod: str) -> str:
    """The layer a module belongs to: pebal_ros.<first component>."""
    parts = mod.split(".")
    return ".".join(parts[:2])


def _existing(mods: set[str]) -> set[str]:
    known = {_module(p) for p in PKG.rglob("*.py")}
    return {m for m in mods if m in known}


def test_graph_contract_is_below_export_and_runtime() -> None:
    imports = _imports()
    for mod, targets in imports.items():
        if mod.startswith("pebal_ros.graph"):
            bad = {t for t in _existing(targets) if _part(t) in ("pebal_ros.export", "pebal_ros.runtime")}
            assert not bad, f"{mod} reaches up into {bad}"
        if mod.startswith("pebal_ros.runtime"):
            bad = {t for t in _existing(targets) if _part(t) in ("pebal_ros.export", "pebal_ros.open_model")}
            assert not bad, f"{mod} reaches up into {bad}"


def test_no_import_cycles_between_parts() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, targets in _imports().items():
        for t in _existing(targets):
            if _part(t) != _part(mod):
                edges[_part(mod)].add(_part(t))
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        seen[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            assert seen.get(m) != 1, "import cycle: " + " -> ".join(stack[stack.index(m):] + [m])
            if m not in seen:
                visit(m)
        stack.pop()
        seen[n] = 2

    for n in sorted(edges):
        if n not in seen:
            visit(n)
