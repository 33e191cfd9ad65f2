"""`modelfusion auto` from a dataset alone, against the anchors measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/auto.py [--datasets digits mnist1d] [--seeds 5] [--out FILE.json]

Per dataset and seed: `auto(None, data)` (members trained from the recipes, every family, ranked on validation)
and its wall time; then the anchors, which get the same split:
- scikit-learn's StackingClassifier (logistic regression, random forest, MLP, SVC, k-NN; 5-fold cross-fitting)
  fitted on train + validation;
- an AutoGluon-style stack (bench/ensembles.py `cross_fitted_stack`): the dataset's recipe network bagged over 5
  folds and the five scikit-learn models cross-fitted, a logistic-regression stacker on their out-of-fold
  training outputs and their validation outputs.
Reported on test: mean ± std over seeds and the t-interval of the per-seed difference between auto's chosen
model and the best anchor (the anchor with the higher mean), with the chosen candidates and families.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from ensembles import cross_fitted_stack, sklearn_estimators
from sklearn.base import clone
from sklearn.ensemble import StackingClassifier

from modelfusion.auto import auto
from modelfusion.datasets import load_dataset
from modelfusion.evaluate.metrics import classification_metrics
from modelfusion.evaluate.stats import t_interval


def anchors(data, seed: int) -> dict[str, dict]:
    X_fit = np.concatenate([data.train.X.numpy(), data.val.X.numpy()])
    y_fit = np.concatenate([data.train.y.numpy(), data.val.y.numpy()])
    started = time.perf_counter()
    stacking = clone(StackingClassifier(list(sklearn_estimators(seed).items()), cv=5)).fit(X_fit, y_fit)
    metrics = classification_metrics(stacking.predict_proba(data.test.X.numpy()), data.test.y.numpy())
    rows = {
        "scikit-learn StackingClassifier (train + val)": {
            "accuracy": metrics["accuracy"],
            "nll": metrics["nll"],
            "seconds": time.perf_counter() - started,
        }
    }
    for name, row in cross_fitted_stack(data, seed).items():
        rows[f"AutoGluon-style: {name.removeprefix('ours, ')}"] = {k: row[k] for k in ("accuracy", "nll", "seconds")}
    return rows


def one_run(dataset: str, seed: int) -> dict:
    data = load_dataset(dataset, seed=seed)
    started = time.perf_counter()
    result = auto(None, data, seed=seed, progress=False, log=lambda line: None)
    seconds = time.perf_counter() - started
    chosen, best_member = result.chosen, result.best_member
    families = sorted({row.family for row in result.results.leaderboard})
    return {
        "auto (chosen on validation)": {
            "accuracy": chosen.test["accuracy"],
            "nll": chosen.test["nll"],
            "seconds": seconds,
            "chosen": f"{chosen.name} ({chosen.family})",
            "families": families,
            "p_vs_best_member": result.results.verdict.p_value,
        },
        "auto's best member (by validation)": {
            "accuracy": best_member.test["accuracy"],
            "nll": best_member.test["nll"],
            "seconds": seconds,
        },
        **anchors(data, seed),
    }


def report(dataset: str, runs: list[dict]) -> None:
    print(f"\n#### {dataset} ({len(runs)} seeds; test split; mean ± std over seeds)\n")
    print("| | accuracy % | NLL | seconds |")
    print("|---|---|---|---|")
    for name in runs[0]:

        def values(key, name=name):
            return [run[name][key] for run in runs]

        accuracy = [v * 100 for v in values("accuracy")]
        spread = statistics.stdev(accuracy) if len(runs) > 1 else 0.0
        print(
            f"| {name} | {statistics.mean(accuracy):.2f} ± {spread:.2f} | {statistics.mean(values('nll')):.3f} "
            f"| {statistics.mean(values('seconds')):.0f} |"
        )
    chosen = [run["auto (chosen on validation)"] for run in runs]
    print(
        "\nchosen per seed: " + "; ".join(f"{c['chosen']} (p vs best member {c['p_vs_best_member']})" for c in chosen)
    )
    print(f"families on the leaderboard: {', '.join(chosen[0]['families'])}")
    anchor_names = [n for n in runs[0] if n.startswith(("scikit-learn", "AutoGluon"))]
    best = max(anchor_names, key=lambda n: statistics.mean(run[n]["accuracy"] for run in runs))
    differences = [(run["auto (chosen on validation)"]["accuracy"] - run[best]["accuracy"]) * 100 for run in runs]
    low, high = t_interval(differences) if len(runs) > 1 else (float("nan"), float("nan"))
    print(
        f"auto - {best}: {statistics.mean(differences):+.2f} points [t-interval {low:+.2f}, {high:+.2f}]; "
        f"auto's wall time: max {max(c['seconds'] for c in chosen):.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", help="write every figure here as JSON")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for dataset in args.datasets:
        for seed in range(args.seeds):
            results.setdefault(dataset, []).append(one_run(dataset, seed))
            print(f"{dataset} seed {seed}: {results[dataset][-1]['auto (chosen on validation)']}", flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"args": vars(args), "results": results}, f, indent=1)
    for dataset, runs in results.items():
        report(dataset, runs)


if __name__ == "__main__":
    main()
