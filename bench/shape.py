"""The code's shape: the largest and most complex functions, imports that point up a floor, and import circles.

    .venv/bin/python bench/shape.py [--top 10]

Complexity is McCabe's, as ruff's C901 counts it. The import graph's nodes are the files of src/modelfusion and
its edges every import between them, at module level, inside a function or under `TYPE_CHECKING` (a lazy import
hides an arrow from Python, not from a reader); `from . import name` from a package's `__init__` counts as an
import of the `__init__` file. An upward import is an edge from a file to a file on a higher floor of `FLOORS`
(DESIGN.md's packages, lowest first); an import circle is a cycle of files, a package circle a cycle of the
graph with each package's files taken as one node.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "modelfusion"

# DESIGN.md's floors, lowest first: a file imports from its own floor and those below it, never from one above.
# The foundation is every top-level module and package not named on a higher floor.
FLOORS = [
    ("foundation", ()),
    ("evaluation", ("evaluate",)),
    ("shared cores", ("ensemble", "align")),  # output fusion; permutation alignment (merge's align: step uses it)
    ("weight merging", ("merge",)),
    ("families", ("distill", "features", "compress", "guard")),
    ("presentation", ("report",)),
    ("workflows", ("auto", "demo")),
    ("command line", ("cli",)),
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """The top-level module or package of `module` under modelfusion (`modelfusion.merge.engine` -> `merge`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def floor_of(module: str) -> int:
    package = package_of(module)
    return next((i for i, (_, members) in enumerate(FLOORS) if package in members), 0)


def resolve(module: str, files: dict[str, Path]) -> str | None:
    """The longest prefix of `module` that is one of our files."""
    parts = module.split(".")
    while parts:
        name = ".".join(parts)
        if name in files:
            return name
        parts.pop()
    return None


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the file pkg/sub.py when there is one, else pkg/__init__.py
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                found = resolve(target, files)
                if found and found != name:
                    graph[name].add(found)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return sorted(found)


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every (importer, imported) whose imported file is on a higher floor than its importer."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if floor_of(b) > floor_of(a))


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph with each top-level package's files taken as one node."""
    packages: dict[str, set[str]] = {}
    for a, targets in graph.items():
        node = packages.setdefault(package_of(a), set())
        node.update(package_of(b) for b in targets if package_of(b) != package_of(a))
    return packages


def complexities() -> list[tuple[int, str]]:
    output = subprocess.run(
        [
            str(Path(sys.executable).with_name("ruff")),
            *("check", str(PACKAGE), "--select", "C901", "--output-format", "concise"),
            *("--config", "lint.mccabe.max-complexity=0"),
        ],
        capture_output=True,
        cwd=ROOT,
        text=True,
    ).stdout
    found = []
    for line in output.splitlines():
        match = re.match(r"(.+?):(\d+):\d+: C901 `(.+)` is too complex \((\d+) > 0\)", line)
        if match:
            path, lineno, name, value = match.groups()
            found.append((int(value), f"{Path(path).resolve().relative_to(ROOT)}:{lineno} {name}"))
    return sorted(found, reverse=True)


def lengths() -> list[tuple[int, str]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    graph = import_graph()
    found, upward = circles(graph), upward_imports(graph)
    package_circles = circles(package_graph(graph))
    report = {
        "complexity": complexities()[: args.top],
        "lines": lengths()[: args.top],
        "upward_imports": upward,
        "circles": found,
        "package_circles": package_circles,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print("most complex functions (McCabe):")
    print("\n".join(f"  {value:3d}  {where}" for value, where in report["complexity"]))
    print("longest functions (lines):")
    print("\n".join(f"  {value:3d}  {where}" for value, where in report["lines"]))
    floors = "  ".join(f"{i} {name}: {', '.join(members) or 'the rest'}" for i, (name, members) in enumerate(FLOORS))
    print(f"floors (lowest first): {floors}")
    print(f"upward imports (lazy ones counted): {len(upward)}")
    print("\n".join(f"  {a} -> {b} (floor {floor_of(a)} -> {floor_of(b)})" for a, b in upward))
    print(f"import circles between files of src/ (lazy imports counted): {len(found)}")
    print("\n".join("  " + " <-> ".join(component) for component in found))
    print(f"circles between packages of src/: {len(package_circles)}")
    print("\n".join("  " + " <-> ".join(component) for component in package_circles))


if __name__ == "__main__":
    main()
