"""The code's shape: the largest and most complex functions, and the import circles between files of src/.

    .venv/bin/python bench/shape.py [--top 10]

Complexity is McCabe's, as ruff's C901 counts it. An import circle is a cycle in the graph whose nodes are the
files of src/modelfusion and whose edges are every import between them, at module level or inside a function
(a lazy import hides a circle from Python, not from a reader). `from . import name` from a package's
`__init__` counts as an import of the `__init__` file.
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


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, files: dict[str, Path]) -> str | None:
    """The longest prefix of `module` that is one of our files."""
    parts = module.split(".")
    while parts:
        name = ".".join(parts)
        if name in files:
            return name
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
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
    found = circles(import_graph())
    report = {"complexity": complexities()[: args.top], "lines": lengths()[: args.top], "circles": found}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print("most complex functions (McCabe):")
    print("\n".join(f"  {value:3d}  {where}" for value, where in report["complexity"]))
    print("longest functions (lines):")
    print("\n".join(f"  {value:3d}  {where}" for value, where in report["lines"]))
    print(f"import circles between files of src/: {len(found)}")
    print("\n".join("  " + " <-> ".join(component) for component in found))


if __name__ == "__main__":
    main()
