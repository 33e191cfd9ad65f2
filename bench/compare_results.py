"""Compare two results.json value by value: is a run the same as another, apart from what a clock measured?

    .venv/bin/python bench/compare_results.py BEFORE/results.json AFTER/results.json [--tolerance 0]

Every value of BEFORE must be in AFTER at the same place and equal (numbers within `--tolerance`, relative;
0 means exactly); keys only AFTER has are listed apart. Values measured with a clock are reported but not
compared: batch-1 latencies, a cascade's mean cost (its stages' latencies), the wall time, and the chosen
export's path when the two runs wrote to different folders. Exit code 1 when anything else differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# keys whose values come from a clock, compared by neither value nor presence of a difference
TIMED = {"latency_batch_1_us", "wall_seconds", "mean_cost", "path"}


def _walk(before, after, where: str, tolerance: float, found: dict[str, list[str]]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in before.items():
            here = f"{where}.{key}" if where else str(key)
            if key not in after:
                found["missing"].append(here)
            elif key in TIMED:
                if value != after[key]:
                    found["timed"].append(here)
            else:
                _walk(value, after[key], here, tolerance, found)
        found["added"] += [f"{where}.{key}" if where else str(key) for key in after if key not in before]
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            found["different"].append(f"{where}: {len(before)} entries before, {len(after)} after")
        for k, (a, b) in enumerate(zip(before, after, strict=False)):
            _walk(a, b, f"{where}[{k}]", tolerance, found)
    elif not _same(before, after, tolerance):
        found["different"].append(f"{where}: {before!r} before, {after!r} after")


def _same(a, b, tolerance: float) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) and math.isnan(b):
            return True
        return a == b or abs(a - b) <= tolerance * max(abs(a), abs(b))
    return a == b


def compare(before: dict, after: dict, *, tolerance: float = 0.0) -> dict[str, list[str]]:
    """Where `after` differs from `before`: "different" values, "missing" keys, "added" keys, and "timed"
    values (measured with a clock: not compared)."""
    found: dict[str, list[str]] = {"different": [], "missing": [], "added": [], "timed": []}
    _walk(before, after, "", tolerance, found)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0, help="relative tolerance of numbers (0: exact)")
    args = parser.parse_args()
    found = compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()), tolerance=args.tolerance)
    for kind in ("different", "missing", "added"):
        print(f"{kind}: {len(found[kind])}")
        for line in found[kind][:50]:
            print(f"  {line}")
    print(f"timed (not compared; they differ from run to run): {len(found['timed'])} values")
    sys.exit(1 if found["different"] or found["missing"] else 0)


if __name__ == "__main__":
    main()
