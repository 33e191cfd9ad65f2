"""Output fusion against torchensemble and scikit-learn's ensembles, on the same splits and networks.

    .venv/bin/python bench/ensembles.py [--datasets digits,mnist1d,breast_cancer,wine] [--seeds 5] [--out FILE]

For each dataset and seed (fixed splits from `load_dataset(name, seed)`):
- ours, 5 networks: five networks trained with different seeds (train split; validation picks the epoch),
  then every combiner fitted on their validation predictions;
- ours, 5 scikit-learn members: LR, RF, MLP, SVC, k-NN fitted on train, every combiner on validation;
- scikit-learn's VotingClassifier (soft) and StackingClassifier (cv=5) over the same five estimators, fitted on
  train as scikit-learn intends (they never see the validation split);
- torchensemble's Voting, Bagging, Snapshot and GradientBoosting with the same five networks and epochs, run
  in its own venv (bench/.venv-torchensemble, created here) on the train split with no test_loader;
- ours, 10 members: both pools together (a bigger budget, reported apart).
The test split only scores. Also times fitting every combiner but stacking on a generated `Predictions` of
10 members x 10,000 samples x 10 classes (target: under 1 s in total).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from reference_venvs import ensure_venv
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier, StackingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

from modelfusion.datasets import load_dataset
from modelfusion.ensemble import combiners_for, fuse_and_evaluate, make_combiner
from modelfusion.evaluate.metrics import classification_metrics
from modelfusion.io.factory import build_model
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.predictions import Predictions, collect_predictions
from modelfusion.training import train_model

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = 5
NETWORKS = {
    "digits": ("modelfusion.models:mlp", {"in_features": 64, "num_outputs": 10, "hidden": [128]}, 40),
    "mnist1d": ("modelfusion.models:cnn1d", {"length": 40, "num_outputs": 10}, 40),
    "breast_cancer": ("modelfusion.models:mlp", {"in_features": 30, "num_outputs": 2, "hidden": [64]}, 40),
    "wine": ("modelfusion.models:mlp", {"in_features": 13, "num_outputs": 3, "hidden": [32]}, 60),
}


def sklearn_estimators(seed: int) -> dict:
    return {
        "logreg": LogisticRegression(max_iter=2000),
        "forest": RandomForestClassifier(300, random_state=seed, n_jobs=-1),
        "mlp": MLPClassifier((128,), max_iter=500, random_state=seed),
        "svc": SVC(probability=True, random_state=seed),
        "knn": KNeighborsClassifier(5),
    }


def ensure_torchensemble_venv() -> Path:
    constraints = ["-c", str(ROOT / "constraints.txt")]
    bin_dir = ensure_venv(
        "torchensemble", [[*constraints, "torch==2.13.0", "torchensemble"], [*constraints, "-e", str(ROOT)]]
    )
    return bin_dir / "python"


def score(proba: np.ndarray, y: np.ndarray) -> dict:
    m = classification_metrics(proba, y)
    return {"accuracy": m["accuracy"], "nll": m["nll"], "ece": m["ece"]}


def best_member_by_validation(val: Predictions, test: Predictions) -> dict:
    """The member with the best validation accuracy (then NLL), scored on test: no peeking at test."""
    val_proba, test_proba = val.probabilities(torch.float64).numpy(), test.probabilities(torch.float64).numpy()
    y_val = val.labels.numpy()
    keys = [(-score(p, y_val)["accuracy"], score(p, y_val)["nll"]) for p in val_proba]
    best = min(range(len(keys)), key=keys.__getitem__)
    return {**score(test_proba[best], test.labels.numpy()), "member": val.member_names[best]}


def ours(val: Predictions, test: Predictions, label: str, member_seconds: float) -> dict:
    run = fuse_and_evaluate(val, test, "all")
    rows = {f"{label}: best member (by val)": {**best_member_by_validation(val, test), "seconds": member_seconds}}
    for row in run.report.rows:
        if row.kind == "fusion":
            metrics = {k: row.metrics[k] for k in ("accuracy", "nll", "ece")}
            rows[f"{label}: {row.name}"] = {**metrics, "seconds": member_seconds + run.fit_seconds[row.name]}
    return rows


def run_one(dataset: str, seed: int, python: Path | None) -> dict:
    data = load_dataset(dataset, seed=seed)
    y_test = data.test.y.numpy()
    factory, kwargs, epochs = NETWORKS[dataset]
    results = {}

    start = time.perf_counter()
    networks = []
    for i in range(MEMBERS):
        member_seed = seed * 100 + i
        torch.manual_seed(member_seed)
        net = train_model(build_model(factory, kwargs), data.train, data.val, epochs=epochs, seed=member_seed)
        networks.append(TorchMember(net, name=f"net{i}"))
    net_seconds = time.perf_counter() - start
    net_val = collect_predictions(networks, data.val.X, data.val.y, "val", progress=False)
    net_test = collect_predictions(networks, data.test.X, data.test.y, "test", progress=False)
    results.update(ours(net_val, net_test, "ours, 5 networks", net_seconds))

    X_train, y_train = data.train.X.numpy(), data.train.y.numpy()
    start = time.perf_counter()
    fitted = {name: est.fit(X_train, y_train) for name, est in sklearn_estimators(seed).items()}
    sk_seconds = time.perf_counter() - start
    sk_members = [SklearnMember(est, name=name) for name, est in fitted.items()]
    sk_val = collect_predictions(sk_members, data.val.X, data.val.y, "val", progress=False)
    sk_test = collect_predictions(sk_members, data.test.X, data.test.y, "test", progress=False)
    results.update(ours(sk_val, sk_test, "ours, 5 scikit-learn members", sk_seconds))

    both_val, both_test = net_val.join(sk_val), net_test.join(sk_test)
    results.update(ours(both_val, both_test, "ours, 10 members (both pools)", net_seconds + sk_seconds))

    for name, reference in (
        (
            "scikit-learn VotingClassifier (soft)",
            VotingClassifier(list(sklearn_estimators(seed).items()), voting="soft"),
        ),
        ("scikit-learn StackingClassifier", StackingClassifier(list(sklearn_estimators(seed).items()), cv=5)),
    ):
        start = time.perf_counter()
        reference = clone(reference).fit(X_train, y_train)
        seconds = time.perf_counter() - start
        results[name] = {**score(reference.predict_proba(data.test.X.numpy()), y_test), "seconds": seconds}

    if python is not None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "te.npz"
            subprocess.run(
                [
                    str(python),
                    str(ROOT / "bench" / "torchensemble_runner.py"),
                    "--dataset",
                    dataset,
                    "--seed",
                    str(seed),
                    "--epochs",
                    str(epochs),
                    "--factory",
                    factory,
                    "--factory-kwargs",
                    json.dumps(kwargs),
                    "--members",
                    str(MEMBERS),
                    "--out",
                    str(out),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            arrays = np.load(out)
            for key in arrays.files:
                if not key.endswith("_seconds"):
                    results[key] = {**score(arrays[key], y_test), "seconds": float(arrays[key + "_seconds"])}
    return results


def combiner_fit_timing(repeats: int = 3) -> dict:
    """Fit + fuse of every combiner but stacking on 10 members x 10,000 samples x 10 classes."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (10_000,), generator=generator)
    signal = torch.nn.functional.one_hot(labels, 10) * torch.linspace(0.5, 3.0, 10)[:, None, None]
    outputs = torch.randn(10, 10_000, 10, generator=generator) * 2 + signal
    preds = Predictions(outputs, labels, tuple(f"m{k}" for k in range(10)), "classification", "val")
    names = [n for n in combiners_for("classification") if n != "stacking"]
    best = {}
    for name in names:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            make_combiner(name).fit(preds).fuse(preds)
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    start = time.perf_counter()
    make_combiner("stacking").fit(preds)
    return {"per_combiner": best, "total": sum(best.values()), "stacking": time.perf_counter() - start}


def table(dataset: str, runs: list[dict]) -> str:
    methods = list(runs[0])
    lines = [
        f"### {dataset} ({len(runs)} seeds; mean ± std)",
        "",
        "| method | test accuracy % | NLL | ECE | seconds |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        cells = []
        for key, scale, fmt in (("accuracy", 100, ".2f"), ("nll", 1, ".3f"), ("ece", 1, ".3f"), ("seconds", 1, ".1f")):
            values = [run[method][key] * scale for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):{fmt}} ± {spread:{fmt}}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist1d,breast_cancer,wine")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--skip-torchensemble", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write all results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    timing = combiner_fit_timing()
    print("combiner fit + fuse, 10 members x 10,000 samples x 10 classes:")
    print("  " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timing["per_combiner"].items()))
    print(
        f"  all but stacking: {timing['total']:.3f} s (target < 1 s); stacking: {timing['stacking']:.2f} s", flush=True
    )
    python = None if args.skip_torchensemble else ensure_torchensemble_venv()
    everything = {"combiner_timing": timing}
    for dataset in args.datasets.split(","):
        runs = []
        for seed in range(args.seeds):
            start = time.perf_counter()
            runs.append(run_one(dataset, seed, python))
            print(f"{dataset} seed {seed}: {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
        everything[dataset] = runs
        print(table(dataset, runs), flush=True)
        print(flush=True)
    if args.out:
        args.out.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
