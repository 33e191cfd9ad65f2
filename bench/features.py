"""Fusion inside the network on the embedded data: transfer learning, feature fusion, and a cascade.

    .venv/bin/python bench/features.py [--parts transfer,fusion,cascade] [--seeds 5] [--out FILE.json]
                                       [--plot docs/cascade.png]

Every network that is not being fused is trained with its dataset's recipe (modelfusion.training.RECIPES).
transfer: the digits-cnn recipe's 2-D CNN pretrained on digits 0-4 (train split) learns digits 5-9 from 10 (and
    3) labelled samples per class (validation: as many again from the validation split; test: every 5-9 test sample),
    from scratch or spliced after its conv blocks with a new head and trained by each `finetune` schedule;
    the same epochs everywhere.
fusion: the recipes' CNN and MLP trained apart on the train split, then fused with frozen backbones (each one's last
    hidden layer projected to 64 and fused by attention, concatenation, gating or sum, with a new linear
    head trained on the train split), against output averaging and each model alone; digits and mnist1d.
cascade: logistic regression, then the CNN (digits and mnist1d); each model's cost is its measured CPU time
    per sample; the thresholds reach the CNN's validation accuracy at the lowest validation cost.
Everything is chosen on validation; the test split only scores. Accuracy: mean ± std over seeds and the 95%
t-interval over seeds (mnist1d's test split is shared by every seed, so its samples are not pooled).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from modelfusion.datasets import Split, load_dataset
from modelfusion.evaluate.stats import t_interval
from modelfusion.features import Cascade, FeatureFusion, finetune, measured_costs, plot_cascade_curve, splice
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.models import cnn2d
from modelfusion.predictions import collect_predictions
from modelfusion.training import RECIPES, train_model

LR = 3e-3
SCHEDULES = ("linear_probe", "full", "probe_then_finetune", "gradual")


def correct_of(model, split: Split) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return (model(split.X).argmax(1) == split.y).numpy()


def summary(correct: list[np.ndarray]) -> dict:
    accs = [c.mean() * 100 for c in correct]
    return {
        "mean": statistics.mean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "ci": list(t_interval(accs)),
        "per_seed": accs,
    }


def row(name: str, s: dict) -> str:
    return f"| {name} | {s['mean']:.2f} ± {s['std']:.2f} | [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] |"


def subset(split: Split, classes: range, per_class: int | None, seed: int) -> Split:
    """The samples of `classes` (relabelled from 0), at most `per_class` of each, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in classes:
        index = np.flatnonzero(split.y.numpy() == label)
        keep.extend(index if per_class is None else rng.choice(index, per_class, replace=False))
    keep = torch.as_tensor(np.sort(np.asarray(keep)))
    return Split(split.name, split.X[keep], split.y[keep] - classes.start)


def transfer(seeds: int, epochs: int, shots: int) -> dict:
    results: dict[str, list] = {}
    for seed in range(seeds):
        data = load_dataset("digits", seed=seed)
        old, new = range(0, 5), range(5, 10)
        torch.manual_seed(seed)
        pretrained = RECIPE.fit(
            cnn2d(num_outputs=5, **RECIPE.architecture),
            subset(data.train, old, None, seed),
            subset(data.val, old, None, seed),
            seed=seed,
        )
        train, val = subset(data.train, new, shots, seed), subset(data.val, new, shots, seed + 1000)
        test = subset(data.test, new, None, seed)
        torch.manual_seed(seed)
        scratch = train_model(
            cnn2d(num_outputs=5, **RECIPE.architecture), train, val, epochs=epochs, lr=LR, seed=seed, cosine=True
        )
        results.setdefault("from scratch", []).append(correct_of(scratch, test))
        for schedule in SCHEDULES:
            torch.manual_seed(seed)
            # cut after the conv blocks (the flattened 64 x 4 x 4 maps): they transfer; the hidden layer is 0-4's
            model = splice(pretrained, 5, at="8", example_input=train.X[:2])
            finetune(model, train, val, schedule=schedule, epochs=epochs, lr=LR, seed=seed)
            results.setdefault(schedule, []).append(correct_of(model, test))
        progress = ", ".join(f"{k} {v[-1].mean():.3f}" for k, v in results.items())
        print(f"transfer {shots}-shot seed {seed}: {progress}", flush=True)
    return {name: summary(c) for name, c in results.items()}


RECIPE = RECIPES["digits-cnn"]
FUSED_LAYERS = {  # per dataset, the layer of each recipe's network whose output is fused: its last hidden one
    "digits": {"cnn": "11", "mlp": "1"},
    "mnist1d": {"cnn": "10", "mlp": "7"},
}


def fusion(dataset: str, seeds: int, epochs: int) -> dict:
    results: dict[str, list] = {}
    for seed in range(seeds):
        data = load_dataset(dataset, seed=seed)
        models = {}
        for i, name in enumerate(FUSED_LAYERS[dataset]):
            models[name] = RECIPES[f"{dataset}-{name}"].train(data, seed=seed * 10 + i)
            results.setdefault(f"{name} alone", []).append(correct_of(models[name], data.test))
        with torch.no_grad():
            mean = torch.stack([torch.softmax(m.eval()(data.test.X), 1) for m in models.values()]).mean(0)
        results.setdefault("output averaging", []).append((mean.argmax(1) == data.test.y).numpy())
        layers = list(FUSED_LAYERS[dataset].values())
        for method in ("attention", "concat", "gating", "sum"):
            torch.manual_seed(seed)
            fused = FeatureFusion(models, data.train.X[:8], layers=layers, fusion=method, width=64, head=10)
            train_model(fused, data.train, data.val, epochs=epochs, lr=LR, seed=seed, cosine=True)
            results.setdefault(f"feature fusion: {method}", []).append(correct_of(fused, data.test))
        print(
            f"fusion {dataset} seed {seed}: " + ", ".join(f"{k} {v[-1].mean():.3f}" for k, v in results.items()),
            flush=True,
        )
    return {name: summary(c) for name, c in results.items()}


def cascade(dataset: str, seeds: int) -> tuple[dict, list]:
    rows, curve = [], []
    for seed in range(seeds):
        data = load_dataset(dataset, seed=seed)
        cnn = RECIPES[f"{dataset}-cnn"].train(data, seed=seed)
        members = [
            SklearnMember(LogisticRegression(max_iter=2000).fit(data.train.X.numpy(), data.train.y.numpy()), name="lr"),
            TorchMember(cnn, name="cnn"),
        ]
        costs = measured_costs(members, data.test.X)  # microseconds per sample
        val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)
        test = collect_predictions(members, data.test.X, data.test.y, "test", progress=False)
        fitted = Cascade(costs=costs).fit(val)  # target: the CNN's validation accuracy
        started = time.perf_counter()
        run = fitted.predict(members, data.test.X)
        lazy_seconds = time.perf_counter() - started
        started = time.perf_counter()
        members[1].predict(data.test.X)
        cnn_seconds = time.perf_counter() - started
        alone = (test.outputs.argmax(2) == test.labels).double().mean(1) * 100
        rows.append(
            {
                "logreg": alone[0].item(),
                "cnn": alone[1].item(),
                "cascade": run.accuracy(test.labels) * 100,
                "threshold": fitted.thresholds_[0],
                "to_cnn": (run.stage == 1).double().mean().item() * 100,
                "cost_us": costs,
                "mean_cost_us": run.mean_cost,
                "saved": 1 - run.mean_cost / costs[1],
                "lazy_s": lazy_seconds,
                "cnn_s": cnn_seconds,
            }
        )
        if seed == 0:
            curve = fitted.curve(test)
        print(f"cascade {dataset} seed {seed}: {rows[-1]}", flush=True)
    return rows, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="transfer,fusion,cascade")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--transfer-epochs", type=int, default=100)
    parser.add_argument("--shots", default="10,3", help="labels per class for the new digits")
    parser.add_argument("--fusion-epochs", type=int, default=30)
    parser.add_argument("--out", help="write every figure here as JSON")
    parser.add_argument("--plot", help="save the cascade curves here (PNG)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    report, lines = {}, []
    for shots in [int(s) for s in args.shots.split(",")] if "transfer" in parts else []:
        report[f"transfer {shots}-shot"] = transfer(args.seeds, args.transfer_epochs, shots)
        lines += [
            f"\n### Transfer: digits 0-4 -> 5-9 from {shots} labels per class ({args.seeds} seeds, "
            f"{args.transfer_epochs} epochs)\n",
            "| regime | test accuracy % (mean ± std) | 95% t-interval over seeds |",
            "|---|---|---|",
        ] + [row(name, s) for name, s in report[f"transfer {shots}-shot"].items()]
    if "fusion" in parts:
        for dataset in ("digits", "mnist1d"):
            report[f"fusion {dataset}"] = fusion(dataset, args.seeds, args.fusion_epochs)
            lines += [
                f"\n### Fusion of a CNN and an MLP on {dataset} ({args.seeds} seeds, fusion trained "
                f"{args.fusion_epochs} epochs)\n",
                "| model | test accuracy % (mean ± std) | 95% t-interval over seeds |",
                "|---|---|---|",
            ] + [row(name, s) for name, s in report[f"fusion {dataset}"].items()]
    if "cascade" in parts:
        curves = {}
        for dataset in ("digits", "mnist1d"):
            rows, curves[f"{dataset}: logreg -> CNN"] = cascade(dataset, args.seeds)
            report[f"cascade {dataset}"] = rows

            def mean(key, rows=rows):
                return statistics.mean(r[key] for r in rows)

            lines += [
                f"\n### Cascade on {dataset}: logistic regression, then the CNN ({args.seeds} seeds; thresholds "
                "reach the CNN's validation accuracy at the lowest validation cost)\n",
                "| logreg % | CNN % | cascade % | samples sent to the CNN | cost per sample, logreg / CNN (µs) | "
                "cascade mean cost (µs) | cost saved vs CNN alone | lazy run / CNN alone, wall (ms) |",
                "|---|---|---|---|---|---|---|---|",
                f"| {mean('logreg'):.2f} | {mean('cnn'):.2f} | {mean('cascade'):.2f} | {mean('to_cnn'):.1f}% | "
                f"{statistics.mean(r['cost_us'][0] for r in rows):.2f} / "
                f"{statistics.mean(r['cost_us'][1] for r in rows):.2f} | {mean('mean_cost_us'):.2f} | "
                f"{mean('saved'):.0%} | {mean('lazy_s') * 1e3:.1f} / {mean('cnn_s') * 1e3:.1f} |",
            ]
        if args.plot:
            plot_cascade_curve(curves, args.plot, title="Cascade: accuracy against cost (test, seed 0)")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), **report}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
