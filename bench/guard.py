"""The input guard on digits and mnist1d: label issues against cleanlab, cleaning, and OOD detection.

    OMP_NUM_THREADS=1 .venv/bin/python bench/guard.py [--datasets digits mnist1d] [--seeds 3]
        [--held-out-seeds 100 101 102 103 104] [--parts noise,ood,held-out] [--out FILE.json]

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
  of the score a choice on validation would take ("proxy choice": the best worst case over the proxy
  outliers of validation, feature-shuffled, uniform in the training ranges, Gaussian noise; the guard no longer
  offers it, see the held-out family), and of the best single member's (by validation accuracy) max-softmax.
- Held-out OOD: the same guard on other data seeds (`--held-out-seeds`) and a family of shifts it was not tuned
  on (neither the scores, `combined`, auto's proxies nor the shifts above were designed with them; fixed before
  their first run): 30% of the features set to their training minimum ("zeroed", for digits: pixels off),
  scaled by 3, transposed (digits) / circularly shifted by half (mnist1d), a block set to the training maximum
  (digits: a random 3x3 patch; mnist1d: 10 consecutive steps), and two test samples of different classes
  blended half and half; drawn with seed 1000 + the data seed. AUROC with a t-interval over the seeds.
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
from modelfusion.guard import InputGuard, clean, inject_label_noise
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


def held_out_shifts(data: Dataset, seed: int) -> dict[str, torch.Tensor]:
    """The held-out family (see the module docstring), from the test split and the training split's ranges."""
    X, generator = data.test.X, torch.Generator().manual_seed(1000 + seed)
    low, high = data.train.X.min(0).values, data.train.X.max(0).values
    n, width = X.shape
    zeroed = torch.where(torch.rand(X.shape, generator=generator) < 0.3, low, X)
    occluded = X.clone()
    if data.name == "digits":
        moved = X.reshape(-1, 8, 8).transpose(1, 2).reshape(n, -1)
        rows, cols = torch.arange(64) // 8, torch.arange(64) % 8
        for i, (row, col) in enumerate(torch.randint(0, 6, (n, 2), generator=generator).tolist()):
            patch = (rows >= row) & (rows < row + 3) & (cols >= col) & (cols < col + 3)
            occluded[i, patch] = high[patch]
    else:
        moved = X.roll(width // 2, dims=1)
        for i, start in enumerate(torch.randint(0, width - 10, (n,), generator=generator).tolist()):
            occluded[i, start : start + 10] = high[start : start + 10]
    y = data.test.y
    partners = torch.randperm(n, generator=generator)
    other = y[partners] != y  # a blend of two samples of the same class is still that class
    blended = (X[other] + X[partners][other]) / 2
    return {
        "zeroed 30%": zeroed,
        "scaled x3": X * 3,
        "transposed / shifted": moved,
        "occluded": occluded,
        "two classes blended": blended,
    }


def guard_rows(guard: InputGuard, single: InputGuard, data: Dataset, shifts: dict[str, torch.Tensor]) -> dict:
    """Per shift, the detection figures of every score, the default, auto's choice and the single member's."""
    auto = max(guard.val_auroc_, key=guard.val_auroc_.get)  # the best worst case over the proxy outliers
    auto = auto if guard.val_auroc_[auto] > 0.5 else "combined"
    inlier = {s: guard.score(data.test.X, name=s) for s in guard.val_auroc_}
    inlier_single = single.score(data.test.X)
    rows = {}
    for shift, X in shifts.items():
        row = {s: detection(inlier[s], guard.score(X, name=s)) for s in guard.val_auroc_}
        row["default"] = row[guard.score_]
        row["proxy choice"] = row[auto]
        row["single max_softmax"] = detection(inlier_single, single.score(X))
        rows[shift] = row
    return {"auto": auto, "default": guard.score_, "ood": rows}


def fitted_guards(data: Dataset, members: list) -> tuple[InputGuard, InputGuard]:
    guard = InputGuard(members).fit(data.train, data.val)
    best = max(members, key=lambda m: accuracy(m, data.val))
    return guard, InputGuard([best], ood_score="max_softmax").fit(data.train, data.val)


def run_held_out(name: str, seed: int) -> dict:
    data = load_dataset(name, seed=seed)
    members = train_members(RECIPES[RECIPE[name]], data, method="kfold", n=FOLDS, seed=seed).members
    guard, single = fitted_guards(data, members)
    return guard_rows(guard, single, data, held_out_shifts(data, seed))


def run_seed(name: str, seed: int, parts: str) -> dict:
    data = load_dataset(name, seed=seed)
    recipe = RECIPES[RECIPE[name]]
    original = train_members(recipe, data, method="kfold", n=FOLDS, seed=seed)
    out = {"clean_accuracy": accuracy(original.bag(), data.test), "noise": {}, "ood": {}}
    for rate in RATES if "noise" in parts else ():
        noisy, flipped = inject_label_noise(data.train, rate, seed=seed)
        result = clean(dataclasses.replace(data, train=noisy), recipe=recipe, folds=FOLDS, seed=seed)
        probs = result.issues.oof.probabilities(torch.float64).mean(0).numpy()
        theirs = np.flatnonzero(cleanlab_issues(probs, noisy.y.numpy()))
        out["noise"][rate] = {
            "ours": prf(result.issues.label_issues, flipped),
            "cleanlab": prf(theirs, flipped),
            "same_flags": bool(np.array_equal(result.issues.label_issues, theirs)),
            "outliers": len(result.issues.outliers),
            "strategy": result.strategy,
            "noisy_accuracy": result.accuracy["test"]["before"] * 100,
            "cleaned_accuracy": result.accuracy["test"]["after"] * 100,
        }
    if "ood" in parts:
        out.update(guard_rows(*fitted_guards(data, original.members), data, shifted_sets(data, seed)))
    return out


def mean_sd_ci(values: list[float]) -> str:
    low, high = t_interval(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f} [{low:.1f}, {high:.1f}]"


def report(name: str, runs: list[dict], held_out: list[dict], held_out_seeds: list[int]) -> None:
    print(f"\n### {name} ({len(runs)} seeds, recipe {RECIPE[name]}, {FOLDS} folds)\n")
    if runs and runs[0]["noise"]:
        noise_tables(runs)
    if runs and runs[0]["ood"]:
        ood_table("OOD, the tuned family", runs)
    if held_out:
        seeds = ", ".join(map(str, held_out_seeds))
        ood_table(f"OOD, the held-out family (new kinds, data seeds {seeds})", held_out)


def noise_tables(runs: list[dict]) -> None:
    print("| noise | method | precision % | recall % | F1 % [t-interval] | flagged | same flags as cleanlab |")
    print("|---|---|---|---|---|---|---|")
    for rate in RATES:
        for method in ("ours", "cleanlab"):
            rows = [r["noise"][rate][method] for r in runs]
            cells = [f"{statistics.mean(x[k] for x in rows):.1f}" for k in ("precision", "recall")]
            flagged = statistics.mean(x["flagged"] for x in rows)
            f1 = mean_sd_ci([x["f1"] for x in rows])
            same = sum(r["noise"][rate]["same_flags"] for r in runs) if method == "ours" else ""
            same = f"{same} of {len(runs)} seeds" if method == "ours" else ""
            print(f"| {rate:.0%} | {method} | {cells[0]} | {cells[1]} | {f1} | {flagged:.0f} | {same} |")
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


def ood_table(title: str, runs: list[dict]) -> None:
    defaults, autos = sorted({r["default"] for r in runs}), [r["auto"] for r in runs]
    chosen = ", ".join(f"{name} {autos.count(name)}" for name in sorted(set(autos)))
    print(
        f"\n{title}: AUROC % mean [t-interval over {len(runs)} seeds] / FPR at 95% TPR % (mean); default: "
        f"{', '.join(defaults)}; proxy choice (the best worst case over the proxy outliers of validation), per seed: "
        f"{chosen}\n"
    )
    shifts = list(runs[0]["ood"])
    print("| score | " + " | ".join(shifts) + " |")
    print("|---|" + "---|" * len(shifts))
    for score in [*runs[0]["ood"][shifts[0]]]:
        cells = []
        for shift in shifts:
            auroc = [r["ood"][shift][score]["auroc"] for r in runs]
            low, high = t_interval(auroc) if len(auroc) > 1 else (float("nan"),) * 2
            fpr = statistics.mean(r["ood"][shift][score]["fpr95"] for r in runs)
            cells.append(f"{statistics.mean(auroc):.1f} [{low:.1f}, {high:.1f}] / {fpr:.1f}")
        label = "best single member: max_softmax" if score == "single max_softmax" else score
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"], choices=sorted(RECIPE))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--held-out-seeds", type=int, nargs="*", default=[100, 101, 102, 103, 104])
    parser.add_argument("--parts", default="noise,ood,held-out", help="which parts to run")
    parser.add_argument("--out", help="write every figure here as JSON")
    args = parser.parse_args()
    results = {}
    for name in args.datasets:
        results[name] = {"tuned": [], "held_out": []}
        if "noise" in args.parts or "ood" in args.parts.replace("held-out", ""):
            for seed in range(args.seeds):
                results[name]["tuned"].append(run_seed(name, seed, args.parts))
                print(f"{name} seed {seed} done", flush=True)
                if args.out:  # after every seed, so a long run stopped early keeps what it finished
                    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
        for seed in args.held_out_seeds if "held-out" in args.parts else ():
            results[name]["held_out"].append(run_held_out(name, seed))
            print(f"{name} held-out seed {seed} done", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, runs in results.items():
        report(name, runs["tuned"], runs["held_out"], args.held_out_seeds)


if __name__ == "__main__":
    main()
