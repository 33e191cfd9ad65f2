"""How much of an ensemble's gain a distilled student recovers.

    .venv/bin/python bench/distill.py [--datasets mnist1d,digits] [--seeds 5] [--epochs 60]

Per dataset and seed: five teachers (mnist1d: the paper's 1-D CNN; digits: MLP 64-128-10) trained on the
train split with the same AdamW + cosine schedule as the students; their mean-probability ensemble; a lone
student (mnist1d: the same 1-D CNN; digits: MLP 64-32-10) trained on labels only; and distilled students,
all with the same epochs and cosine schedule. The recipe
(loss, T, alpha, mixup) is chosen on seed 0's validation split among a few candidates, never on test, and
then used for every seed. Reported on test: accuracy, NLL, ECE (mean over seeds, and the 95% CI of the
pooled accuracy), the recovered fraction (distilled - lone) / (ensemble - lone), and McNemar of the
distilled against the lone student (pooled over seeds).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from modelfusion.datasets import load_dataset
from modelfusion.distill import ModelTeacher, distill
from modelfusion.evaluate.metrics import classification_metrics
from modelfusion.evaluate.stats import bootstrap_counts, bootstrap_means, mcnemar_exact, percentile_interval
from modelfusion.io.factory import build_model
from modelfusion.training import train_model

SETUPS = {
    "mnist1d": {
        "teacher": ("modelfusion.models:cnn1d", {"length": 40, "num_outputs": 10}),
        "student": ("modelfusion.models:cnn1d", {"length": 40, "num_outputs": 10}),
        "teacher_epochs": 60,
    },
    "digits": {
        "teacher": ("modelfusion.models:mlp", {"in_features": 64, "num_outputs": 10, "hidden": [128]}),
        "student": ("modelfusion.models:mlp", {"in_features": 64, "num_outputs": 10, "hidden": [32]}),
        "teacher_epochs": 40,
    },
}
RECIPES = {
    "hinton T=4 a=0.5": {"loss": "hinton", "loss_params": {"temperature": 4.0, "alpha": 0.5}, "mixup": 0.0},
    "hinton T=2 a=1 mixup": {"loss": "hinton", "loss_params": {"temperature": 2.0, "alpha": 1.0}, "mixup": 0.4},
    "hinton T=1 a=1 mixup": {"loss": "hinton", "loss_params": {"temperature": 1.0, "alpha": 1.0}, "mixup": 0.4},
    "mse a=1 mixup": {"loss": "mse", "loss_params": {"alpha": 1.0}, "mixup": 0.4},
}
LONE = {"loss": "hinton", "loss_params": {"temperature": 1.0, "alpha": 0.0}, "mixup": 0.0}  # labels only


def probabilities(model, X) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(X).double(), dim=1).numpy()


def student(setup, seed):
    torch.manual_seed(seed)
    return build_model(*setup["student"])


def run_student(setup, teacher, data, recipe, seed, epochs, lr):
    return distill(
        student(setup, seed), teacher, data.train, data.val, epochs=epochs, lr=lr, seed=seed, progress=False, **recipe
    ).student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist1d,digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    for dataset in args.datasets.split(","):
        setup = SETUPS[dataset]
        chosen = None
        scores = {"ensemble": [], "lone": [], "distilled": [], "teacher mean": []}
        correct = {"lone": [], "distilled": [], "ensemble": []}
        for seed in range(args.seeds):
            data = load_dataset(dataset, seed=seed)
            teachers = []
            for i in range(5):
                torch.manual_seed(seed * 100 + i)
                net = build_model(*setup["teacher"])
                teachers.append(
                    train_model(
                        net,
                        data.train,
                        data.val,
                        epochs=setup["teacher_epochs"],
                        lr=args.lr,
                        seed=seed * 100 + i,
                        cosine=True,
                    )
                )
            teacher = ModelTeacher(teachers)
            if chosen is None:  # the recipe, on validation of the first seed
                val_acc = {}
                for name, recipe in RECIPES.items():
                    model = run_student(setup, teacher, data, recipe, seed, args.epochs, args.lr)
                    val_acc[name] = (probabilities(model, data.val.X).argmax(1) == data.val.y.numpy()).mean()
                chosen = max(val_acc, key=val_acc.get)
                print(
                    f"{dataset}: validation accuracy per recipe (seed 0): "
                    + ", ".join(f"{k} {v:.3f}" for k, v in val_acc.items())
                    + f" -> {chosen}",
                    flush=True,
                )
            y = data.test.y.numpy()
            member_probs = [probabilities(t, data.test.X) for t in teachers]
            outputs = {
                "ensemble": np.mean(member_probs, axis=0),
                "lone": probabilities(run_student(setup, teacher, data, LONE, seed, args.epochs, args.lr), data.test.X),
                "distilled": probabilities(
                    run_student(setup, teacher, data, RECIPES[chosen], seed, args.epochs, args.lr), data.test.X
                ),
            }
            for name, proba in outputs.items():
                scores[name].append(classification_metrics(proba, y))
                correct[name].append(proba.argmax(1) == y)
            scores["teacher mean"].append(
                {
                    "accuracy": float(np.mean([(p.argmax(1) == y).mean() for p in member_probs])),
                    "nll": float("nan"),
                    "ece": float("nan"),
                }
            )
            print(
                f"{dataset} seed {seed}: " + ", ".join(f"{k} {v[-1]['accuracy']:.4f}" for k, v in scores.items()),
                flush=True,
            )
        print(f"\n### {dataset}: {args.seeds} seeds, recipe '{chosen}', student epochs {args.epochs}\n")
        print("| model | test accuracy % (mean ± std) | pooled 95% CI | NLL | ECE |")
        print("|---|---|---|---|---|")
        for name in ("teacher mean", "ensemble", "lone", "distilled"):
            accs = [s["accuracy"] * 100 for s in scores[name]]
            ci = ""
            if name in correct:
                pooled = np.concatenate(correct[name]).astype(float)
                low, high = percentile_interval(bootstrap_means(pooled, bootstrap_counts(len(pooled), seed=0)))
                ci = f"[{low * 100:.2f}, {high * 100:.2f}]"
            nll = statistics.mean(s["nll"] for s in scores[name])
            ece = statistics.mean(s["ece"] for s in scores[name])
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {name} | {statistics.mean(accs):.2f} ± {spread:.2f} | {ci} | {nll:.3f} | {ece:.3f} |")
        gains = [
            (d["accuracy"] - lone["accuracy"]) / (e["accuracy"] - lone["accuracy"])
            for d, lone, e in zip(scores["distilled"], scores["lone"], scores["ensemble"], strict=True)
            if e["accuracy"] != lone["accuracy"]
        ]
        mean_gain = (
            statistics.mean(s["accuracy"] for s in scores["distilled"])
            - statistics.mean(s["accuracy"] for s in scores["lone"])
        ) / (
            statistics.mean(s["accuracy"] for s in scores["ensemble"])
            - statistics.mean(s["accuracy"] for s in scores["lone"])
        )
        test = mcnemar_exact(np.concatenate(correct["distilled"]), np.concatenate(correct["lone"]))
        print(
            f"\nrecovered fraction of the ensemble's gain: {mean_gain:.0%} (of the means); per seed "
            + ", ".join(f"{g:.0%}" for g in gains)
        )
        print(
            f"McNemar distilled vs lone (pooled): distilled-only right {test['a_only_correct']}, lone-only right "
            f"{test['b_only_correct']}, p = {test['p_value']:.3g}\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
