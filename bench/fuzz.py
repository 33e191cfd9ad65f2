"""A long fuzzing campaign: the slow fuzz tests of tests/test_fuzz.py and tests/test_fuzz_data.py with many more
examples per target.

    .venv/bin/python bench/fuzz.py [--examples 100000] [--targets member_bytes,cli_arguments] [--seed 0]

Each target (a reader, the merge-config parser, the CLI's arguments) gets `--examples` generated or mutated
inputs; the property is that reading gives a valid object or a `ModelFusionError`, never another exception.
Prints one row per target (examples, wall time, result) for docs/security.md. Hypothesis's own seed makes a
campaign repeatable (`--seed`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


FILES = ("test_fuzz.py", "test_fuzz_data.py")  # the readers of models and configs; the readers of data


def targets() -> dict[str, str]:
    """Target name -> the test file that holds its slow test."""
    found = {}
    for name in FILES:
        text = (ROOT / "tests" / name).read_text()
        slow = set(re.findall(r"^def test_(\w+)_slow\(", text, re.M)) | set(re.findall(r"test_(\w+)_slow[ ,]", text))
        found.update(dict.fromkeys(slow, name))
    return dict(sorted(found.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--targets", default="", help="comma-separated target names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = targets()
    chosen = args.targets.split(",") if args.targets else list(files)
    env = {**os.environ, "MODELFUSION_FUZZ_EXAMPLES": str(args.examples), "OMP_NUM_THREADS": "1"}
    print(f"fuzzing {len(chosen)} targets, {args.examples:,} examples each (hypothesis seed {args.seed})\n")
    print("| target | examples | wall (s) | result |")
    print("|---|---|---|---|")
    failures = 0
    for target in chosen:
        start = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--hypothesis-seed={args.seed}",
                f"tests/{files.get(target, 'test_fuzz.py')}::test_{target}_slow",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if result.returncode == 0:
            verdict = "only ModelFusionError"
        else:
            failures += 1
            falsifying = [line for line in result.stdout.splitlines() if "Falsifying" in line or line.startswith("E ")]
            verdict = "FAILED: " + (falsifying[0] if falsifying else result.stdout.strip().splitlines()[-1])[:200]
        print(f"| {target} | {args.examples:,} | {seconds:.0f} | {verdict} |", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
