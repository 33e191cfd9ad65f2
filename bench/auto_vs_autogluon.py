"""`modelfusion auto` against AutoGluon (medium_quality) on a tabular task, side by side, given the same time.
(Not named autogluon.py: bench/ is the runner's first import path, and that name would hide the package.)

    nice -n 10 .venv/bin/python bench/auto_vs_autogluon.py [--seeds 3] [--budget 600] [--out FILE.json]

The task (issue 24): scikit-learn's `make_classification`, 20,000 samples, 40 features of which 20 informative,
5 classes, `class_sep=0.8`, one dataset per seed (`random_state=seed`), split 60/20/20 stratified with the seed.
Per seed, in the same run and one after the other (so both share the machine's load):
1. `auto(None, data, budget_s=--budget)`: members trained from the tabular plans (the tabular MLPs, histogram
   gradient boosting, a linear model, a forest; the optional boosters that are installed), every family, ranked
   on validation; its wall time is measured;
2. AutoGluon 1.6.3 `TabularPredictor.fit(train, tuning_data=val, presets="medium_quality", time_limit=auto's
   wall time)` in bench/.venv-autogluon (installed once by this script, never a dependency of modelfusion).
Both see train and validation only; test scores once. Reported: test accuracy per seed, the mean ± std, and
the t-interval (from the seeds) of the per-seed difference auto - AutoGluon. Target: within 1 point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from reference_venvs import ROOT, ensure_venv
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split

from modelfusion.auto import auto
from modelfusion.datasets import Dataset
from modelfusion.evaluate.stats import t_interval

TASK = {"n_samples": 20_000, "n_features": 40, "n_informative": 20, "n_classes": 5, "class_sep": 0.8}


def autogluon_python() -> Path:
    constraints = ["-c", str(ROOT / "constraints.txt")]
    extras = "autogluon.tabular[lightgbm,catboost,xgboost,fastai]==1.6.3"
    return ensure_venv("autogluon", [[*constraints, "torch==2.13.0", extras]]) / "python"


def split(seed: int) -> dict[str, np.ndarray]:
    X, y = make_classification(**TASK, random_state=seed)
    rest, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
    train, val = train_test_split(rest, test_size=0.25, random_state=seed, stratify=y[rest])
    return {
        f"{a}_{s}": v[i] for s, i in (("train", train), ("val", val), ("test", test)) for a, v in (("X", X), ("y", y))
    }


def run_auto(arrays: dict, seed: int, budget: float) -> dict:
    data = Dataset.from_arrays(
        arrays["X_train"],
        arrays["y_train"],
        X_val=arrays["X_val"],
        y_val=arrays["y_val"],
        X_test=arrays["X_test"],
        y_test=arrays["y_test"],
        seed=seed,
        name="make_classification",
    )
    lines = []
    started = time.perf_counter()
    result = auto(None, data, budget_s=budget, seed=seed, progress=False, log=lines.append)
    seconds = time.perf_counter() - started
    return {
        "accuracy": result.chosen.test["accuracy"],
        "seconds": seconds,
        "chosen": f"{result.chosen.name} ({result.chosen.family})",
        "best_member": f"{result.best_member.name}: {result.best_member.test['accuracy']:.4f}",
        "members": result.results.config["members"],
        "log": lines,
    }


def run_autogluon(python: Path, arrays: dict, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        np.savez(Path(folder) / "split.npz", **arrays)
        out = Path(folder) / "result.json"
        command = [str(python), str(ROOT / "bench" / "autogluon_runner.py"), "--split", str(Path(folder) / "split.npz")]
        subprocess.run([*command, "--time-limit", f"{seconds:.0f}", "--out", str(out)], check=True)
        result = json.loads(out.read_text())
    result.pop("proba")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=600.0, help="auto's --budget in seconds")
    parser.add_argument("--out", default="autogluon_bench.json")
    args = parser.parse_args()
    python = autogluon_python()
    runs = []
    for seed in range(args.seeds):
        arrays = split(seed)
        load = os.getloadavg()[0]
        ours = run_auto(arrays, seed, args.budget)
        theirs = run_autogluon(python, arrays, ours["seconds"])
        runs.append(
            {"seed": seed, "load_before": load, "load_after": os.getloadavg()[0], "auto": ours, "autogluon": theirs}
        )
        print(
            f"seed {seed}: auto {ours['accuracy']:.4f} ({ours['chosen']}, {ours['seconds']:.0f}s), AutoGluon "
            f"{theirs['accuracy']:.4f} ({theirs['best']}, {theirs['seconds']:.0f}s); load {load:.1f}",
            flush=True,
        )
        Path(args.out).write_text(json.dumps(runs, indent=2))
    report(runs)


def report(runs: list[dict]) -> None:
    ours = [r["auto"]["accuracy"] * 100 for r in runs]
    theirs = [r["autogluon"]["accuracy"] * 100 for r in runs]
    differences = [a - b for a, b in zip(ours, theirs, strict=True)]

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    print(f"\n| | test accuracy % (mean ± std, {len(runs)} seeds) | per seed | seconds (mean) |")
    print("|---|---|---|---|")
    for name, values, key in (
        ("auto (chosen on validation)", ours, "auto"),
        ("AutoGluon medium_quality", theirs, "autogluon"),
    ):
        seconds = statistics.mean(r[key]["seconds"] for r in runs)
        print(
            f"| {name} | {statistics.mean(values):.2f} ± {spread(values):.2f} | "
            f"{', '.join(f'{v:.2f}' for v in values)} | {seconds:.0f} |"
        )
    low, high = t_interval(differences) if len(runs) > 1 else (float("nan"), float("nan"))
    mean = statistics.mean(differences)
    verdict = "reached" if mean >= -1.0 else "not reached"
    print(
        f"\nauto - AutoGluon: {mean:+.2f} points [t-interval {low:+.2f}, {high:+.2f}]; target within 1 point: {verdict}"
    )


if __name__ == "__main__":
    main()
