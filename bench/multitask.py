"""Multi-task model merging on the CPU: one pretrained backbone, fine-tuned on K tasks, merged back into one.

    OMP_NUM_THREADS=1 .venv/bin/python bench/multitask.py [--seeds 3] [--out FILE.json]

The CPU-sized analogue of the 8-task ViT-B/32 benchmark (Ilharco et al., 2023; TIES, TSV-Merge, ...): an MLP
backbone (64-256-256) with a classification head is pretrained on digits; four tasks are digits seen
differently (rotated 90 degrees, rotated 180 degrees, mirrored with inverted intensities, and a fixed
permutation of the pixels), each with its own split of digits and its own 10-class head. Each task fine-tunes
the backbone and its new head from the pretrained weights; the backbones are then merged into one, which is
scored on every task with that task's own head (the heads are not merged, as in the literature).

Merges: weight averaging, task arithmetic, TIES, TSV-Merge (data-free, each with its scale chosen on the
validation splits), Fisher merging and RegMean (with each task's own training inputs, 256 per task); against
the individual fine-tunes (the ceiling a merge tries to reach) and one multi-task model trained on all four
tasks at once with the same epochs. Everything tuned or chosen uses the validation splits; the test splits only
score. Across seeds: mean and a t-interval over seeds of the mean accuracy over tasks; "gap closed" is
(merge - task arithmetic) / (individual - task arithmetic) per seed.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from modelfusion.datasets import Split, load_dataset
from modelfusion.evaluate.stats import t_interval
from modelfusion.merge import merge_modules
from modelfusion.training import score_classifier, train_model

TASKS = ("rotate 90", "rotate 180", "mirror + invert", "pixel permutation")
PRETRAIN_EPOCHS, FINETUNE_EPOCHS, LR = 40, 20, 1e-3
DATA_PER_TASK = 256  # training inputs each data-driven merge sees per task


def backbone() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())


def transform(task: int, X: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    images = X.reshape(-1, 8, 8)
    if task == 0:
        images = torch.rot90(images, 1, dims=(1, 2))
    elif task == 1:
        images = torch.rot90(images, 2, dims=(1, 2))
    elif task == 2:
        images = -torch.flip(images, dims=(2,))
    else:
        return X[:, permutation]
    return images.reshape(-1, 64)


def task_splits(seed: int) -> list[tuple[Split, Split, Split]]:
    """Per task, digits (split with its own seed, so tasks see different samples) seen that task's way."""
    permutation = torch.randperm(64, generator=torch.Generator().manual_seed(seed))
    tasks = []
    for task in range(len(TASKS)):
        data = load_dataset("digits", seed=seed * 10 + task + 1)
        tasks.append(
            tuple(Split(s.name, transform(task, s.X, permutation), s.y) for s in (data.train, data.val, data.test))
        )
    return tasks


def accuracy(body: nn.Module, head: nn.Module, split: Split) -> float:
    return score_classifier(nn.Sequential(body, head), split)["accuracy"]


def mean_accuracy(body: nn.Module, heads, splits) -> float:
    return statistics.mean(accuracy(body, head, split) for head, split in zip(heads, splits, strict=True))


class MultiHead(nn.Module):
    def __init__(self, body: nn.Module, heads: list[nn.Module]) -> None:
        super().__init__()
        self.body, self.heads = body, nn.ModuleList(heads)


def train_multitask(body: nn.Module, heads: list[nn.Module], tasks, seed: int) -> MultiHead:
    """One backbone, one head per task, trained on all tasks at once (the sum of their losses per step), the
    epoch with the best mean validation accuracy kept."""
    model = MultiHead(body, heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    for _ in range(FINETUNE_EPOCHS):
        model.train()
        orders = [torch.randperm(len(train), generator=generator) for train, _, _ in tasks]
        for start in range(0, max(len(o) for o in orders), 64):
            loss = 0.0
            for (train, _, _), order, head in zip(tasks, orders, model.heads, strict=True):
                index = order[start : start + 64]
                if len(index):
                    loss = loss + nn.functional.cross_entropy(head(model.body(train.X[index])), train.y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = mean_accuracy(model.body, model.heads, [val for _, val, _ in tasks])
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model


def chosen(candidates: dict[str, nn.Module], heads, vals) -> tuple[str, nn.Module]:
    """The candidate with the best mean validation accuracy over the tasks."""
    scores = {name: mean_accuracy(body, heads, vals) for name, body in candidates.items()}
    name = max(scores, key=scores.get)
    return name, candidates[name]


def run(seed: int) -> dict:
    started = time.perf_counter()
    tasks = task_splits(seed)
    digits = load_dataset("digits", seed=seed)
    torch.manual_seed(seed)
    pretrained = train_model(
        nn.Sequential(backbone(), nn.Linear(256, 10)),
        digits.train,
        digits.val,
        epochs=PRETRAIN_EPOCHS,
        lr=LR,
        seed=seed,
    )
    tuned, heads = [], []
    for task, (train, val, _) in enumerate(tasks):
        torch.manual_seed(seed * 100 + task)
        model = nn.Sequential(copy.deepcopy(pretrained[0]), nn.Linear(256, 10))
        train_model(model, train, val, epochs=FINETUNE_EPOCHS, lr=LR, seed=seed * 100 + task)
        tuned.append(model)
        heads.append(model[1])
    vals, tests = [val for _, val, _ in tasks], [test for _, _, test in tasks]
    # the merged models keep a head of the right shape; only their backbone (module 0) is scored
    full = [nn.Sequential(m[0], copy.deepcopy(pretrained[1])) for m in tuned]
    data = [train.X[:DATA_PER_TASK] for train, _, _ in tasks]

    def merged(method: str, **params) -> nn.Module:
        return merge_modules(full, method, base=pretrained, **params)[0]

    def with_own_heads(method: str, **params) -> nn.Module:
        models = [nn.Sequential(m[0], head) for m, head in zip(tuned, heads, strict=True)]
        return merge_modules(models, method, data=data, **params)[0]

    results = {}
    bodies = {
        "pretrained backbone": pretrained[0],
        "weight averaging": merged("linear"),
    }
    grids = {
        "task arithmetic": {f"lambda {s}": merged("task_arithmetic", lambda_=s) for s in (0.3, 0.5, 0.7, 1.0)},
        "TIES": {
            f"density {d}, lambda {s}": merged("ties", density=d, lambda_=s)
            for d in (0.2, 0.5)
            for s in (0.5, 1.0, 1.5)
        },
        "TSV-Merge": {f"alpha {s}": merged("tsv", alpha=s) for s in (0.5, 1.0, 1.5)},
        "Fisher merging": {"fisher": with_own_heads("fisher")},
        "RegMean": {f"alpha {a}": with_own_heads("regmean", alpha=a) for a in (0.5, 0.9)},
    }
    for name, candidates in grids.items():
        setting, bodies[name] = chosen(candidates, heads, vals)
        results[f"{name} setting"] = setting
    for name, body in bodies.items():
        results[name] = [accuracy(body, head, test) for head, test in zip(heads, tests, strict=True)]
    results["individual fine-tunes"] = [accuracy(m[0], m[1], test) for m, test in zip(tuned, tests, strict=True)]
    torch.manual_seed(seed)
    joint = train_multitask(copy.deepcopy(pretrained[0]), [copy.deepcopy(h) for h in heads], tasks, seed)
    results["multi-task model"] = [
        accuracy(joint.body, head, test) for head, test in zip(joint.heads, tests, strict=True)
    ]
    results["seconds"] = time.perf_counter() - started
    return results


ROWS = (
    "pretrained backbone",
    "weight averaging",
    "task arithmetic",
    "TIES",
    "TSV-Merge",
    "Fisher merging",
    "RegMean",
    "individual fine-tunes",
    "multi-task model",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", help="write every figure here as JSON")
    args = parser.parse_args()
    runs = []
    for seed in range(args.seeds):
        runs.append(run(seed))
        print(
            f"seed {seed} ({runs[-1]['seconds']:.0f} s): "
            + ", ".join(f"{name} {statistics.mean(runs[-1][name]) * 100:.2f}" for name in ROWS),
            flush=True,
        )
    lines = [
        f"| model ({args.seeds} seeds) | "
        + " | ".join(TASKS)
        + " | mean over tasks [t-interval] | gap closed vs task arithmetic |",
        "|---|" + "---|" * (len(TASKS) + 2),
    ]
    for name in ROWS:
        per_task = [statistics.mean(r[name][t] for r in runs) * 100 for t in range(len(TASKS))]
        means = [statistics.mean(r[name]) * 100 for r in runs]
        low, high = t_interval(means)
        gaps = [
            (statistics.mean(r[name]) - statistics.mean(r["task arithmetic"]))
            / (statistics.mean(r["individual fine-tunes"]) - statistics.mean(r["task arithmetic"]))
            for r in runs
        ]
        gap_low, gap_high = t_interval(gaps)
        gap = f"{statistics.mean(gaps):.0%} [{gap_low:.0%}, {gap_high:.0%}]"
        lines.append(
            f"| {name} | "
            + " | ".join(f"{a:.2f}" for a in per_task)
            + f" | {statistics.mean(means):.2f} [{low:.2f}, {high:.2f}] | {gap} |"
        )
    settings = {k: [r[k] for r in runs] for k in runs[0] if k.endswith("setting")}
    print("\n".join(lines))
    print("settings chosen on validation: " + "; ".join(f"{k}: {v}" for k, v in settings.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
