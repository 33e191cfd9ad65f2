"""Output fusion and training-time ensembles against torchensemble and scikit-learn, under one protocol.

    .venv/bin/python bench/ensembles.py [--datasets digits,mnist1d,breast_cancer,wine] [--seeds 5] [--out FILE]

Protocol, per dataset and seed (fixed splits from `load_dataset(name, seed)`):
- every network is the dataset's recipe (`recipe_for(data)`: mnist1d and digits CNNs at their published
  accuracy), trained on the train split with the validation split choosing the epoch;
- our pools: 5 networks by `train_members` with seeds, bagging, snapshot and swa; 5 scikit-learn members
  (LR, RF, MLP, SVC, k-NN) fitted on train; networks + scikit-learn; and cross-fitted bags (the CNN by
  `kfold`, the scikit-learn members by `cross_val_predict`) stacked by a logistic regression fitted on their
  out-of-fold training outputs plus validation outputs;
- every combiner is fitted on validation; the fusion we report per pool is the one `choose_combiner` picks by
  5-fold cross-validated NLL on the validation split; "best member" is chosen by validation accuracy;
  a best-on-test row appears only labelled "oracle";
- anchors get the same data and epoch selection: scikit-learn's Voting and Stacking (which cross-fits itself)
  are fitted on train + val; torchensemble's Voting, Bagging, Snapshot and GradientBoosting train the same
  recipe network with its optimizer, rate, schedule, batch size and epochs on the train split, with the
  validation split as the hold-out that picks their epoch (never the test split);
- across seeds: mean ± std and a 95% t-interval over the seeds; paired tests per seed on that seed's test
  set (McNemar), never pooled over a shared test set.
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
from scipy import stats
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier, StackingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

from modelfusion.datasets import Dataset, load_dataset
from modelfusion.ensemble import choose_combiner, combiners_for, fuse_and_evaluate, make_combiner, train_members
from modelfusion.evaluate.metrics import classification_metrics
from modelfusion.evaluate.stats import mcnemar_exact, t_interval
from modelfusion.members import SklearnMember
from modelfusion.predictions import Predictions, collect_predictions
from modelfusion.training import recipe_for

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = 5
TRAINING_METHODS = ("seeds", "bagging", "snapshot", "swa")  # pools of 5 networks


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
    return {"accuracy": m["accuracy"], "nll": m["nll"], "ece": m["ece"], "correct": (proba.argmax(1) == y).tolist()}


def pool_rows(val: Predictions, test: Predictions, label: str, seconds: float) -> dict:
    """Rows of one pool: best member (by val), every combiner, the fusion chosen on val, the test oracle."""
    run = fuse_and_evaluate(val, test, "all")
    y_val, y_test = val.labels.numpy(), test.labels.numpy()
    val_proba, test_proba = val.probabilities(torch.float64).numpy(), test.probabilities(torch.float64).numpy()
    keys = [(-classification_metrics(p, y_val)["accuracy"], classification_metrics(p, y_val)["nll"]) for p in val_proba]
    best = min(range(len(keys)), key=keys.__getitem__)
    rows = {f"{label}: best member (by val)": {**score(test_proba[best], y_test), "seconds": seconds}}
    fused = {}
    for name, combiner in run.combiners.items():
        fused[name] = combiner.fuse(test).double().numpy()
        rows[f"{label}: {name}"] = {**score(fused[name], y_test), "seconds": seconds + run.fit_seconds[name]}
    choice = choose_combiner(val, list(run.combiners))
    rows[f"{label}: chosen on val"] = {
        **rows[f"{label}: {choice.name}"],
        "chosen": choice.name,
        "cv_nll": choice.scores[choice.name]["nll"],
    }
    oracle = max(run.combiners, key=lambda n: rows[f"{label}: {n}"]["accuracy"])
    rows[f"{label}: oracle (best on test, not a result)"] = {**rows[f"{label}: {oracle}"], "chosen": oracle}
    return rows


def networks_pool(data: Dataset, method: str, seed: int) -> tuple[Predictions, Predictions, float]:
    start = time.perf_counter()
    trained = train_members(recipe_for(data), data, method=method, n=MEMBERS, seed=seed)
    seconds = time.perf_counter() - start
    val = collect_predictions(trained.members, data.val.X, data.val.y, "val", progress=False)
    test = collect_predictions(trained.members, data.test.X, data.test.y, "test", progress=False)
    return val, test, seconds


def cross_fitted_stack(data: Dataset, seed: int) -> dict:
    """AutoGluon-style: bags of cross-fitted members, a logistic-regression stacker on their out-of-fold
    training outputs and their validation outputs (all out-of-sample for the bags)."""
    start = time.perf_counter()
    kfold = train_members(recipe_for(data), data, method="kfold", n=MEMBERS, seed=seed)
    bag = kfold.bag()
    X_train, y_train = data.train.X.numpy(), data.train.y.numpy()
    folds = StratifiedKFold(MEMBERS, shuffle=True, random_state=seed)
    oof = [kfold.oof.outputs[0].log_softmax(-1)]
    members = [bag]
    for name, estimator in sklearn_estimators(seed).items():
        proba = cross_val_predict(clone(estimator), X_train, y_train, cv=folds, method="predict_proba")
        oof.append(torch.as_tensor(np.log(np.clip(proba, 1e-12, None)), dtype=torch.float32))
        members.append(SklearnMember(clone(estimator).fit(X_train, y_train), name=name))
    names = tuple(m.name for m in members)
    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)
    test = collect_predictions(members, data.test.X, data.test.y, "test", progress=False)
    fit_on = Predictions(
        torch.cat([torch.stack(oof), val.outputs], dim=1),
        torch.cat([data.train.y, data.val.y]),
        names,
        "classification",
        "train+val",
        val.classes,
    )
    stacker = make_combiner("stacking").fit(fit_on)
    seconds = time.perf_counter() - start
    return {
        f"ours, cross-fitted bags ({len(names)}) + stacking on train OOF + val": {
            **score(stacker.fuse(test).double().numpy(), data.test.y.numpy()),
            "seconds": seconds,
        }
    }


def run_one(dataset: str, seed: int, python: Path | None, methods: list[str]) -> dict:
    data = load_dataset(dataset, seed=seed)
    y_test = data.test.y.numpy()
    results = {}
    pools = {}
    for method in methods:
        val, test, seconds = networks_pool(data, method, seed)
        pools[method] = (val, test, seconds)
        results.update(pool_rows(val, test, f"ours, 5 networks ({method})", seconds))

    X_train, y_train = data.train.X.numpy(), data.train.y.numpy()
    start = time.perf_counter()
    fitted = {name: est.fit(X_train, y_train) for name, est in sklearn_estimators(seed).items()}
    sk_seconds = time.perf_counter() - start
    sk_members = [SklearnMember(est, name=name) for name, est in fitted.items()]
    sk_val = collect_predictions(sk_members, data.val.X, data.val.y, "val", progress=False)
    sk_test = collect_predictions(sk_members, data.test.X, data.test.y, "test", progress=False)
    results.update(pool_rows(sk_val, sk_test, "ours, 5 scikit-learn members", sk_seconds))
    net_val, net_test, net_seconds = pools["seeds"]
    results.update(
        pool_rows(
            net_val.join(sk_val),
            net_test.join(sk_test),
            "ours, 10 members (networks + scikit-learn)",
            net_seconds + sk_seconds,
        )
    )
    results.update(cross_fitted_stack(data, seed))

    # scikit-learn's own ensembles get train + val: StackingClassifier cross-fits on all of it.
    X_fit = np.concatenate([X_train, data.val.X.numpy()])
    y_fit = np.concatenate([y_train, data.val.y.numpy()])
    for name, reference in (
        (
            "scikit-learn VotingClassifier (soft)",
            VotingClassifier(list(sklearn_estimators(seed).items()), voting="soft"),
        ),
        ("scikit-learn StackingClassifier", StackingClassifier(list(sklearn_estimators(seed).items()), cv=5)),
    ):
        start = time.perf_counter()
        reference = clone(reference).fit(X_fit, y_fit)
        seconds = time.perf_counter() - start
        results[name] = {**score(reference.predict_proba(data.test.X.numpy()), y_test), "seconds": seconds}

    if python is not None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "te.npz"
            command = [str(python), str(ROOT / "bench" / "torchensemble_runner.py"), "--dataset", dataset]
            command += ["--seed", str(seed), "--members", str(MEMBERS), "--out", str(out)]
            subprocess.run(command, check=True, capture_output=True, text=True)
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
    lines = [
        f"### {dataset} ({len(runs)} seeds; mean ± std, 95% t-interval over seeds)",
        "",
        "| method | test accuracy % | 95% t-interval | NLL | ECE | seconds | chosen (per seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in runs[0]:
        if ": " in method and method.split(": ", 1)[1] in combiners_for("classification"):
            continue  # every combiner's row is in the JSON; the table shows the choice, the member, the oracle
        cells = []
        for key, scale, fmt in (("accuracy", 100, ".2f"), ("nll", 1, ".3f"), ("ece", 1, ".3f"), ("seconds", 1, ".1f")):
            values = [run[method][key] * scale for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):{fmt}} ± {spread:{fmt}}")
            if key == "accuracy":
                low, high = t_interval(values)
                cells.append(f"[{low:.2f}, {high:.2f}]")
        chosen = ", ".join(run[method].get("chosen", "") for run in runs).strip(", ")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {chosen} |")
    return "\n".join(lines)


def paired(dataset: str, runs: list[dict], ours: str, other: str) -> str:
    """Per seed, McNemar of `ours` against `other` on that seed's test set; and a paired t-test over seeds."""
    cells, diffs = [], []
    for seed, run in enumerate(runs):
        test = mcnemar_exact(np.array(run[ours]["correct"]), np.array(run[other]["correct"]))
        diffs.append(100 * (run[ours]["accuracy"] - run[other]["accuracy"]))
        wins, losses = test["a_only_correct"], test["b_only_correct"]
        cells.append(f"seed {seed}: {diffs[-1]:+.2f} (+{wins}/-{losses}, p={test['p_value']:.2g})")
    t_test = stats.ttest_rel([r[ours]["accuracy"] for r in runs], [r[other]["accuracy"] for r in runs])
    low, high = t_interval(diffs)
    return (
        f"- {dataset}: {ours} vs {other}: accuracy difference {statistics.mean(diffs):+.2f} points "
        f"[{low:+.2f}, {high:+.2f}] over seeds (paired t p={t_test.pvalue:.2g}); " + "; ".join(cells)
    )


def report(dataset: str, runs: list[dict]) -> None:
    """The table of `dataset` and the paired tests of each chosen fusion against its best member and the anchors."""
    print(table(dataset, runs), flush=True)
    print(flush=True)
    anchors = [m for m in runs[0] if m.startswith(("scikit-learn ", "torchensemble"))]
    for ours in [m for m in runs[0] if m.endswith("chosen on val") or "stacking on train OOF" in m]:
        own_best = ours.replace("chosen on val", "best member (by val)")
        for other in [own_best] * (own_best in runs[0]) + anchors:
            print(paired(dataset, runs, ours, other), flush=True)
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist1d,breast_cancer,wine")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(TRAINING_METHODS), help="training-time ensemble pools")
    parser.add_argument("--skip-torchensemble", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write all results as JSON here")
    parser.add_argument("--from-json", type=Path, help="only print the tables of an earlier run's --out file")
    args = parser.parse_args()
    if args.from_json:
        for dataset, runs in json.loads(args.from_json.read_text()).items():
            if dataset != "combiner_timing":
                report(dataset, runs)
        return
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
            runs.append(run_one(dataset, seed, python, args.methods.split(",")))
            print(f"{dataset} seed {seed}: {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
            if args.out:
                args.out.write_text(json.dumps({**everything, dataset: runs}))
        everything[dataset] = runs
        report(dataset, runs)
    if args.out:
        args.out.write_text(json.dumps(everything))


if __name__ == "__main__":
    main()
