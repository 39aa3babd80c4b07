"""The house's floors: no import circle between edgeres' modules, and no package importing one above it.

Imports inside functions count too: a circle that only closes at run time is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "edgeres"
# Top to bottom, as the house reads: a package may import those after it, never those before.
FLOORS = ("conversion", "targets", "quantization", "exporters", "runtime", "calibration")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The edgeres modules `name` imports, anywhere in it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_circle() -> None:
    graph = _graph()
    circles = []
    for start in graph:  # a path back to itself, found depth-first
        stack, seen = [(start, (start,))], set()
        while stack:
            name, trail = stack.pop()
            for target in graph[name]:
                if target == start:
                    circles.append(" -> ".join((*trail, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*trail, target)))
    assert not circles, "\n".join(sorted(set(circles))[:10])


def test_no_package_imports_one_above_it() -> None:
    def floor(name: str) -> int | None:
        parts = name.split(".")
        return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else None

    upward = [f"{name} -> {target}" for name, targets in _graph().items() for target in targets
              if floor(name) is not None and floor(target) is not None and floor(target) < floor(name)]
    assert not upward, "\n".join(upward)


def test_the_graph_sees_imports() -> None:
    """The check above checks something: the pipeline imports the targets, a function-level import counts."""
    graph = _graph()
    assert "edgeres.targets" in graph["edgeres.conversion.pipeline"]
    assert "edgeres.runtime.classifier" in graph["edgeres.runtime.record"]  # imported inside record_of
