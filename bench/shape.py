"""The code's shape: the largest and most complex functions, imports that point up a floor, import circles, and
the files touched to add one thing.

    .venv/bin/python bench/shape.py [--top 10] [--no-extensions]

Complexity is McCabe's, as ruff's C901 counts it. The import graph's nodes are the files of src/modelfusion and
its edges every import between them, at module level, inside a function or under `TYPE_CHECKING` (a lazy import
hides an arrow from Python, not from a reader); `from . import name` from a package's `__init__` counts as an
import of the `__init__` file. An upward import is an edge from a file to a file on a higher floor of `FLOORS`
(DESIGN.md's packages, lowest first); an import circle is a cycle of files, a package circle a cycle of the
graph with each package's files taken as one node.

"Files touched to add one thing" is measured, not claimed: for each kind of thing (a combiner, a merge method,
an auto family, ...) a plugin of one file is written outside the package, in a temporary folder, that registers
one; a fresh interpreter imports it and then uses the thing the way the package's own code would (fits the
combiner, merges with the method, runs `auto` with the family). "1 (no package file)" means that one file
was enough.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
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
    ("command line", ("cli", "__main__")),  # `modelfusion` and `python -m modelfusion` (torchrun)
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


def _decisions(function: ast.AST) -> int:
    """McCabe's number of `function` counting what radon counts and ruff's C901 does not: each boolean operand
    after the first, conditional expressions, and the `for`/`if` clauses of comprehensions (nested functions
    count on their own)."""
    count = 1
    pending = list(ast.iter_child_nodes(function))
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If | ast.IfExp | ast.For | ast.AsyncFor | ast.While | ast.ExceptHandler | ast.Assert):
            count += 1
        elif isinstance(node, ast.BoolOp):
            count += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            count += 1 + len(node.ifs)
        elif isinstance(node, ast.match_case):
            count += 1
        pending.extend(ast.iter_child_nodes(node))
    return count


def decision_counts() -> list[tuple[int, str]]:
    """Every function's `_decisions`, largest first."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((_decisions(node), f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def lengths() -> list[tuple[int, str]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


# what a plugin file holds to add one thing, and how a fresh interpreter uses it after importing the file
EXTENSIONS = {
    "a combiner": (
        """
        from modelfusion.ensemble import COMBINERS, Combiner
        from modelfusion.ensemble.base import probabilities

        @COMBINERS.register("planted")
        class Planted(Combiner):
            tasks = ("classification",)

            def _fit(self, outputs, y, X=None):
                pass

            def _fuse(self, outputs, X=None):
                return probabilities(outputs).mean(0)
        """,
        """
        import torch
        from modelfusion.ensemble import fuse_and_evaluate
        from modelfusion.predictions import Predictions
        labels = torch.arange(60) % 3
        val = Predictions(torch.randn(2, 60, 3), labels, ("a", "b"), "classification", "val")
        test = Predictions(torch.randn(2, 60, 3), labels, ("a", "b"), "classification", "test")
        assert fuse_and_evaluate(val, test, ["planted"]).results().candidate("planted").test["accuracy"] >= 0
        """,
    ),
    "a merge method": (
        """
        from modelfusion.merge.methods.base import register_method

        @register_method("planted", base="none")
        def planted(tensors, base=None):
            return tensors[0].clone()
        """,
        """
        import torch
        from modelfusion.merge import merge_state_dicts
        merged = merge_state_dicts([{"w": torch.ones(2)}, {"w": torch.zeros(2)}], method="planted")
        assert merged["w"].tolist() == [1.0, 1.0]
        """,
    ),
    "a model factory": (
        """
        from torch import nn
        from modelfusion.models import MODELS

        @MODELS.register("planted")
        def planted(width: int = 4):
            return nn.Linear(width, 2)
        """,
        """
        from modelfusion.io.factory import build_named_model
        assert build_named_model("planted", {"width": 3}, "a file").in_features == 3
        """,
    ),
    "a training recipe": (
        """
        from modelfusion.training import RECIPES, TrainingRecipe
        RECIPES.register("planted")(TrainingRecipe("planted", "mlp", {"hidden": [8]}, epochs=1))
        """,
        """
        from modelfusion.datasets import load_dataset
        from modelfusion.training import RECIPES
        assert RECIPES["planted"].train(load_dataset("wine")) is not None
        """,
    ),
    "an auto family": (
        """
        from modelfusion.auto import FamilyResult, family

        @family("planted", requires=("output",))
        def planted(inputs):
            best = max(inputs.found["output"].candidates, key=lambda c: c.val["accuracy"])
            return FamilyResult([best.updated(name="planted " + best.name, family="planted", export=None)])
        """,
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.naive_bayes import GaussianNB
        from modelfusion.auto import auto
        from modelfusion.datasets import load_dataset
        from modelfusion.members import SklearnMember
        data = load_dataset("wine")
        X, y = data.train.X.numpy(), data.train.y.numpy()
        members = [SklearnMember(LogisticRegression(max_iter=500).fit(X, y), name="lr"),
                   SklearnMember(GaussianNB().fit(X, y), name="nb")]
        result = auto(members, data, families=["planted", "output"], progress=False, log=lambda line: None)
        assert any(c.family == "planted" for c in result.results.leaderboard)
        """,
    ),
}


def files_to_add_one(kind: str) -> str:
    """How many files adding one `kind` took: "1 (no package file)" when a plugin of one file outside the
    package registered it and the package used it; otherwise the first line of why not."""
    plugin, use = EXTENSIONS[kind]
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "planted_plugin.py").write_text(textwrap.dedent(plugin))
        code = "import planted_plugin\n" + textwrap.dedent(use)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=folder)
    if done.returncode == 0:
        return "1 (no package file)"
    last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
    return f"not from one file: {last}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-extensions", action="store_true", help="skip the table of files touched")
    args = parser.parse_args()
    graph = import_graph()
    found, upward = circles(graph), upward_imports(graph)
    package_circles = circles(package_graph(graph))
    report = {
        "complexity": complexities()[: args.top],
        "over_15_with_boolean_operators": [row for row in decision_counts() if row[0] > 15],
        "lines": lengths()[: args.top],
        "upward_imports": upward,
        "circles": found,
        "package_circles": package_circles,
        "files_to_add_one": {} if args.no_extensions else {kind: files_to_add_one(kind) for kind in EXTENSIONS},
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print("most complex functions (McCabe, as ruff's C901 counts it):")
    print("\n".join(f"  {value:3d}  {where}" for value, where in report["complexity"]))
    over = report["over_15_with_boolean_operators"]
    print(f"functions over 15 counting boolean operands, conditional expressions and comprehensions too: {len(over)}")
    print("\n".join(f"  {value:3d}  {where}" for value, where in over))
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
    if report["files_to_add_one"]:
        print("files touched to add one thing (a plugin of one file, then used as the package uses it):")
        print("\n".join(f"  {kind:<20} {files}" for kind, files in report["files_to_add_one"].items()))


if __name__ == "__main__":
    main()
