"""The input guard on digits and mnist1d: label issues against cleanlab, cleaning, and OOD detection.

    OMP_NUM_THREADS=1 .venv/bin/python bench/guard.py [--datasets digits mnist1d] [--seeds 3] [--out FILE.json]

Per dataset and seed, with a recipe of the dataset (`digits-mlp`; `mnist1d-cnn`, since mnist1d's MLP recipe
reaches only 74% and a label-issue finder is only as good as its out-of-fold probabilities) and 5 folds:

- Label issues: symmetric label noise of 10% and 20% injected into the training labels (`inject_label_noise`,
  seeded). `find_label_issues` reads the mislabels from the out-of-fold probabilities of the K-fold members;
  cleanlab 2.9's `find_label_issues` (defaults, in bench/.venv-cleanlab) gets the same probabilities. Precision,
  recall and F1 of the flagged mislabels against the flipped samples (outliers are reported apart). Then
  `clean` cleans the suspects (drops them, or relabels the mislabels with their out-of-fold prediction and
  drops the outliers: whichever gives the more accurate fusion on validation) and refits: test accuracy of
  the K-fold fusion trained on noisy vs cleaned data, against the same fusion trained on the original labels
  ("recovered": the share of the accuracy lost to noise that cleaning won back).
- OOD: the K-fold members trained on the original labels; `InputGuard` fitted on train (scores) and
  validation (default score, threshold); shifted sets built from the test split only: Gaussian noise (sigma 1 in
  standardized units), inversion (each feature reflected within its training range), a spatial transform
  (digits: a 90-degree rotation; mnist1d: time reversal) and, for mnist1d, a set generated with other noise
  settings. AUROC and FPR at 95% TPR (shifted = positive) of each score, of the guard's default (`combined`),
  of the score `ood_score="auto"` chooses on validation (the best against feature-shuffled validation
  samples), and of the best single member's (by validation accuracy) max-softmax.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from reference_venvs import ROOT, ensure_venv
from sklearn.metrics import roc_auc_score, roc_curve

from modelfusion.datasets import Dataset, load_dataset
from modelfusion.ensemble.train import train_members
from modelfusion.evaluate.stats import t_interval
from modelfusion.guard import SCORES, InputGuard, clean, inject_label_noise
from modelfusion.training import RECIPES

RECIPE = {"digits": "digits-mlp", "mnist1d": "mnist1d-cnn"}  # mnist1d: the MLP recipe reaches only 74%
FOLDS = 5
RATES = (0.1, 0.2)


def cleanlab_issues(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    python = ensure_venv("cleanlab", [["-c", str(ROOT / "constraints.txt"), "cleanlab==2.9.0"]]) / "python"
    with tempfile.TemporaryDirectory() as tmp:
        given, mask = Path(tmp) / "in.npz", Path(tmp) / "out.npy"
        np.savez(given, probs=probs, labels=labels)
        subprocess.run([str(python), str(ROOT / "bench" / "cleanlab_runner.py"), str(given), str(mask)], check=True)
        return np.load(mask)


def prf(flagged: np.ndarray, truth: np.ndarray) -> dict:
    hits = len(np.intersect1d(flagged, truth))
    precision = hits / len(flagged) if len(flagged) else 0.0
    recall = hits / len(truth) if len(truth) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision * 100, "recall": recall * 100, "f1": f1 * 100, "flagged": len(flagged)}


def accuracy(member, split) -> float:
    return float((member.predict(split.X).argmax(1) == split.y).double().mean()) * 100


def mnist1d_other_noise(seed: int) -> torch.Tensor:
    """mnist1d test samples generated with stronger noise (iid 0.1 instead of 0.02, correlated 0.6 instead of
    0.25, another seed), standardized with the training split's statistics like the real ones."""
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    from modelfusion.datasets import _raw, _split_indices

    raw = _raw("mnist1d")
    train = raw.X[_split_indices(raw, seed)["train"]]
    mean, std = train.mean(0), train.std(0)
    args = get_dataset_args()
    args.iid_noise_scale, args.corr_noise_scale, args.seed = 0.1, 0.6, 1000 + seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        shifted = make_dataset(args)["x_test"]
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return torch.as_tensor((shifted - mean) / np.where(std == 0, 1.0, std), dtype=torch.float32)


def shifted_sets(data: Dataset, seed: int) -> dict[str, torch.Tensor]:
    X = data.test.X
    low, high = data.train.X.min(0).values, data.train.X.max(0).values
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(seed))
    sets = {"noise": X + noise, "inversion": low + high - X}
    if data.name == "digits":
        sets["rotation"] = torch.rot90(X.reshape(-1, 8, 8), 1, (1, 2)).reshape(len(X), -1)
    else:
        sets["reversal"] = X.flip(-1)
        sets["other noise"] = mnist1d_other_noise(data.seed)
    return sets


def detection(inlier: np.ndarray, shifted: np.ndarray) -> dict:
    truth = np.r_[np.zeros(len(inlier)), np.ones(len(shifted))]
    scores = np.r_[inlier, shifted]
    fpr, tpr, _ = roc_curve(truth, scores)
    return {"auroc": roc_auc_score(truth, scores) * 100, "fpr95": float(fpr[np.searchsorted(tpr, 0.95)]) * 100}


def run_seed(name: str, seed: int) -> dict:
    data = load_dataset(name, seed=seed)
    recipe = RECIPES[RECIPE[name]]
    original = train_members(recipe, data, method="kfold", n=FOLDS, seed=seed)
    out = {"clean_accuracy": accuracy(original.bag(), data.test), "noise": {}, "ood": {}}
    for rate in RATES:
        noisy, flipped = inject_label_noise(data.train, rate, seed=seed)
        result = clean(dataclasses.replace(data, train=noisy), recipe=recipe, folds=FOLDS, seed=seed)
        probs = result.issues.oof.probabilities(torch.float64).mean(0).numpy()
        theirs = np.flatnonzero(cleanlab_issues(probs, noisy.y.numpy()))
        out["noise"][rate] = {
            "ours": prf(result.issues.label_issues, flipped),
            "cleanlab": prf(theirs, flipped),
            "outliers": len(result.issues.outliers),
            "strategy": result.strategy,
            "noisy_accuracy": result.accuracy["test"]["before"] * 100,
            "cleaned_accuracy": result.accuracy["test"]["after"] * 100,
        }
    guard = InputGuard(original.members).fit(data.train, data.val)
    best = max(original.members, key=lambda m: accuracy(m, data.val))
    single = InputGuard([best], ood_score="max_softmax").fit(data.train, data.val)
    out["default"] = guard.score_
    out["auto"] = max(guard.val_auroc_, key=guard.val_auroc_.get)  # what ood_score="auto" would have chosen
    inlier = {s: guard.score(data.test.X, name=s) for s in SCORES}
    inlier_single = single.score(data.test.X)
    for shift, X in shifted_sets(data, seed).items():
        row = {s: detection(inlier[s], guard.score(X, name=s)) for s in SCORES}
        row["default"] = row[guard.score_]
        row["auto"] = row[out["auto"]]
        row["single max_softmax"] = detection(inlier_single, single.score(X))
        out["ood"][shift] = row
    return out


def mean_sd_ci(values: list[float]) -> str:
    low, high = t_interval(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f} [{low:.1f}, {high:.1f}]"


def report(name: str, runs: list[dict]) -> None:
    print(f"\n### {name} ({len(runs)} seeds, recipe {RECIPE[name]}, {FOLDS} folds)\n")
    print("| noise | method | precision % | recall % | F1 % [t-interval] | flagged |")
    print("|---|---|---|---|---|---|")
    for rate in RATES:
        for method in ("ours", "cleanlab"):
            rows = [r["noise"][rate][method] for r in runs]
            cells = [f"{statistics.mean(x[k] for x in rows):.1f}" for k in ("precision", "recall")]
            flagged = statistics.mean(x["flagged"] for x in rows)
            f1 = mean_sd_ci([x["f1"] for x in rows])
            print(f"| {rate:.0%} | {method} | {cells[0]} | {cells[1]} | {f1} | {flagged:.0f} |")
    print(
        "\n| noise | original labels % | noisy % | cleaned % | recovered % of the loss | outliers dropped "
        "| strategy chosen on validation |"
    )
    print("|---|---|---|---|---|---|---|")
    for rate in RATES:
        rows = [(r["clean_accuracy"], r["noise"][rate]) for r in runs]
        recovered = [
            100 * (n["cleaned_accuracy"] - n["noisy_accuracy"]) / (c - n["noisy_accuracy"])
            if c != n["noisy_accuracy"]
            else float("nan")
            for c, n in rows
        ]
        finite = [v for v in recovered if np.isfinite(v)]
        print(
            f"| {rate:.0%} | {mean_sd_ci([c for c, _ in rows])} | {mean_sd_ci([n['noisy_accuracy'] for _, n in rows])}"
            f" | {mean_sd_ci([n['cleaned_accuracy'] for _, n in rows])} | "
            f"{mean_sd_ci(finite) if finite else 'n/a'} | {statistics.mean(n['outliers'] for _, n in rows):.0f} | "
            + ", ".join(f"{s} {sum(n['strategy'] == s for _, n in rows)}" for s in ("drop", "relabel"))
            + " |"
        )
    defaults, autos = sorted({r["default"] for r in runs}), [r["auto"] for r in runs]
    chosen = ", ".join(f"{name} {autos.count(name)}" for name in sorted(set(autos)))
    print(
        f"\nOOD: AUROC % / FPR at 95% TPR % (mean over seeds); default: {', '.join(defaults)}; auto (chosen on "
        f"validation against its feature-shuffled copy, per seed): {chosen}\n"
    )
    shifts = list(runs[0]["ood"])
    print("| score | " + " | ".join(shifts) + " |")
    print("|---|" + "---|" * len(shifts))
    for score in [*SCORES, "default", "auto", "single max_softmax"]:
        cells = []
        for shift in shifts:
            auroc = [r["ood"][shift][score]["auroc"] for r in runs]
            fpr = statistics.mean(r["ood"][shift][score]["fpr95"] for r in runs)
            cells.append(
                f"{statistics.mean(auroc):.1f} ± {statistics.stdev(auroc) if len(auroc) > 1 else 0:.1f} / {fpr:.1f}"
            )
        label = "best single member: max_softmax" if score == "single max_softmax" else score
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"], choices=sorted(RECIPE))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", help="write every figure here as JSON")
    args = parser.parse_args()
    results = {}
    for name in args.datasets:
        results[name] = []
        for seed in range(args.seeds):
            results[name].append(run_seed(name, seed))
            print(f"{name} seed {seed} done", flush=True)
            if args.out:  # after every seed, so a long run stopped early keeps what it finished
                Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, runs in results.items():
        report(name, runs)


if __name__ == "__main__":
    main()
