"""The training recipes: each registered recipe against the candidates it was chosen from, on validation.

    .venv/bin/python bench/recipes.py [--recipes mnist1d-cnn,mnist1d-mlp,digits-cnn] [--seeds 5] [--no-candidates]

For every registered recipe and each alternative setting considered for it, trains one model per seed
(`load_dataset(name, seed)` splits; validation chooses the epoch) and prints validation and test accuracy
per seed and their means. The recipe is the candidate with the best mean validation accuracy; the test column
is only reported, and is what the published figures (mnist1d paper: CNN 94%, MLP 68%) are compared with.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from modelfusion.datasets import load_dataset
from modelfusion.training import RECIPES, TrainingRecipe, score_classifier

# The alternatives each recipe was chosen against (what a demanding user would try first).
CANDIDATES: dict[str, dict[str, dict]] = {
    "mnist1d-cnn": {
        "paper: 25 channels, no BatchNorm, 150 epochs at 1e-2": {
            "architecture": {"channels": 25},
            "epochs": 150,
            "lr": 1e-2,
            "weight_decay": 0.0,
            "cosine": False,
        },
        "64 channels, no BatchNorm": {"architecture": {"channels": 64}},
        "64 channels + BatchNorm, 150 epochs": {"epochs": 150},
    },
    "mnist1d-mlp": {
        "MLP 256-256, dropout 0.3, 150 epochs at 1e-3": {
            "architecture": {"hidden": [256, 256], "dropout": 0.3},
            "epochs": 150,
            "lr": 1e-3,
            "weight_decay": 1e-4,
        },
        "MLP 3 x 512, dropout 0.5, 150 epochs at 1e-3": {"epochs": 150, "lr": 1e-3},
    },
    "digits-cnn": {
        "cnn2d without dropout, 40 epochs, constant 1e-3": {
            "architecture": {},
            "epochs": 40,
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "cosine": False,
        },
        "cnn2d, dropout 0.3, 60 epochs": {"architecture": {"dropout": 0.3}, "epochs": 60},
    },
}
DATASETS = {"mnist1d-cnn": "mnist1d", "mnist1d-mlp": "mnist1d", "digits-cnn": "digits"}


def evaluate(recipe: TrainingRecipe, dataset: str, seeds: int) -> dict:
    rows = []
    for seed in range(seeds):
        data = load_dataset(dataset, seed=seed)
        start = time.perf_counter()
        model = recipe.train(data, seed=seed)
        seconds = time.perf_counter() - start
        val, test = score_classifier(model, data.val)["accuracy"], score_classifier(model, data.test)["accuracy"]
        rows.append({"val": val, "test": test, "seconds": seconds})
    return {
        "rows": rows,
        "val": statistics.mean(r["val"] for r in rows),
        "test": statistics.mean(r["test"] for r in rows),
        "test_std": statistics.stdev(r["test"] for r in rows) if len(rows) > 1 else 0.0,
        "seconds": statistics.mean(r["seconds"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-candidates", action="store_true", help="only the registered recipes")
    args = parser.parse_args()
    report = {}
    print("| recipe / candidate | val accuracy % (mean) | test accuracy % (mean ± std) | seconds per model | chosen |")
    print("|---|---|---|---|---|")
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        results = {f"{name} (registered)": evaluate(recipe, DATASETS[name], args.seeds)}
        for label, changes in () if args.no_candidates else CANDIDATES[name].items():
            results[label] = evaluate(dataclasses.replace(recipe, **changes), DATASETS[name], args.seeds)
        best = max(results, key=lambda k: results[k]["val"])
        for label, r in results.items():
            print(
                f"| {label} | {r['val'] * 100:.2f} | {r['test'] * 100:.2f} ± {r['test_std'] * 100:.2f} | "
                f"{r['seconds']:.1f} | {'yes' if label == best else ''} |",
                flush=True,
            )
        report[name] = results
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
