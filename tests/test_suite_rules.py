"""Rules the suite keeps about itself: tests assert behaviour, never the machine's speed."""

from __future__ import annotations

import ast
from pathlib import Path

from .limits import HANG_GUARD_S

TESTS = Path(__file__).parent


def _short_waits(tree: ast.AST) -> list[int]:
    """Lines that wait on a literal number of seconds below the hang guard: a `timeout=` keyword, or a deadline
    `time.monotonic() + N` / `time.time() + N`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "timeout" and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, int | float) and node.value.value < HANG_GUARD_S:
                lines.append(node.value.lineno)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            clock = node.left
            if (
                isinstance(clock, ast.Call)
                and isinstance(clock.func, ast.Attribute)
                and clock.func.attr in ("monotonic", "time", "perf_counter")
                and isinstance(node.right, ast.Constant)
                and node.right.value < HANG_GUARD_S
            ):
                lines.append(node.lineno)
    return sorted(lines)


def test_no_test_fails_because_the_machine_is_slow():
    found = {
        path.name: lines
        for path in sorted(TESTS.glob("*.py"))
        if (lines := _short_waits(ast.parse(path.read_text(), filename=str(path))))
    }
    assert not found, f"waits shorter than the hang guard (use limits.HANG_GUARD_S): {found}"


def test_the_rule_sees_a_short_timeout_and_a_short_deadline():
    tree = ast.parse("subprocess.run(args, timeout=300)\ndeadline = time.monotonic() + 60\n")
    assert _short_waits(tree) == [1, 2]
