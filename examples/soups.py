"""Model soups on digits: fine-tune copies of one pretrained MLP, then merge their weights.

    .venv/bin/python examples/soups.py [--seed 0]

Prints a table of test accuracy and NLL for each fine-tune, the uniform and greedy soups, TIES and the output
ensemble. The greedy soup's choices and every merge parameter use the validation split only.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import torch

from modelfusion.datasets import load_dataset
from modelfusion.ensemble import make_combiner
from modelfusion.evaluate import evaluate
from modelfusion.members import TorchMember
from modelfusion.merge import greedy_soup, merge_state_dicts, uniform_soup
from modelfusion.predictions import collect_predictions
from modelfusion.training import RECIPES

FINETUNES = [(1e-3, 0), (1e-3, 1), (3e-3, 2), (3e-3, 3), (3e-4, 4), (1e-2, 5)]  # (learning rate, seed)


def accuracy(model, split) -> float:
    with torch.no_grad():
        return (model.eval()(split.X).argmax(1) == split.y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_dataset("digits", seed=args.seed)
    recipe = RECIPES["digits-mlp"]  # the settings that reach digits' published accuracy
    pretrained = recipe.train(data, seed=args.seed)
    finetunes = []
    for lr, seed in FINETUNES:
        finetune = dataclasses.replace(recipe, lr=lr, epochs=20)
        finetunes.append(finetune.fit(copy.deepcopy(pretrained), data.train, data.val, seed=100 + seed))

    candidates = {f"finetune lr={lr:g} seed={seed}": m for (lr, seed), m in zip(FINETUNES, finetunes, strict=True)}
    candidates["uniform soup"] = uniform_soup(finetunes)
    greedy = greedy_soup(finetunes, lambda m: accuracy(m, data.val))
    candidates[f"greedy soup ({len(greedy.ingredients)} of {len(finetunes)})"] = greedy.model
    ties = copy.deepcopy(pretrained)
    ties.load_state_dict(merge_state_dicts(finetunes, method="ties", base=pretrained, density=0.5))
    candidates["TIES (density 0.5)"] = ties

    members = [TorchMember(m, name=name) for name, m in candidates.items()]
    test = collect_predictions(members, data.test.X, data.test.y, "test", progress=False)
    finetune_names = [n for n in candidates if n.startswith("finetune")]
    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False).select(finetune_names)
    ensemble = make_combiner("mean").fit(val).fuse(test.select(finetune_names))
    report = evaluate(test, {"output ensemble (mean of 6)": ensemble}, best_member=finetune_names[0])
    print(f"digits seed {args.seed}: one MLP trained with recipe {recipe.name}, six fine-tunes; test split")
    print("| model | test accuracy % | NLL | forward passes |")
    print("|---|---|---|---|")
    for row in report.rows:
        passes = len(finetune_names) if row.kind == "fusion" else 1
        print(f"| {row.name} | {row.metrics['accuracy'] * 100:.2f} | {row.metrics['nll']:.3f} | {passes} |")


if __name__ == "__main__":
    main()
