"""Multi-task model merging on the CPU: one pretrained backbone, fine-tuned on K tasks, merged back into one.

    OMP_NUM_THREADS=1 .venv/bin/python bench/multitask.py [--suite transformer-8] [--seeds 5] [--out FILE.json]

CPU-sized analogues of the 8-task ViT-B/32 benchmark (Ilharco et al., 2023; TIES, TSV-Merge, WUDI, EMR, ...).
Each task fine-tunes the pretrained backbone and a new head of its own; the backbones are then merged into one,
which is scored on every task with that task's own head (the heads are not merged, as in the literature).

Suites:
- `digits-mlp`: an MLP backbone (64-256-256) pretrained on digits; four tasks are digits seen differently
  (rotated 90 degrees, rotated 180 degrees, mirrored with inverted intensities, a fixed pixel permutation).
- `transformer-8`: a small vision transformer (rows or segments of the input as 8 tokens of 8 values, width 64,
  2 blocks of attention and MLP, a class token) pretrained on digits and mnist1d together (20 classes); eight
  tasks, each a way of seeing one of the two datasets that pretraining did not show (rotations, mirroring,
  inversion, a pixel permutation; mnist1d reversed in time, negated, shifted, smoothed). Like ViT-B/32's eight
  datasets, the tasks pull the shared weights in different directions. Fine-tuning moves the backbone with
  small steps (1e-4; each new head 1e-3), as CLIP's fine-tunes are.

Merges: weight averaging, task arithmetic, TIES, TSV-Merge and WUDI-merging (data-free, each with its scale or
step size chosen on the validation splits); Fisher merging and RegMean (with each task's own training inputs,
256 per task); AdaMerging (coefficients fitted on each task's unlabeled validation inputs); EMR-merging (per-task
masks and rescalers, no data) and TALL masks (per-task masks on the summed task vectors, each task's lambda
chosen on its validation split); against the individual fine-tunes (the ceiling a merge tries to reach) and one
multi-task model trained on all tasks at once with the same epochs. Everything tuned or chosen uses the
validation splits; the test splits only score. Across seeds: mean and a t-interval over seeds of the mean
accuracy over tasks; "gap closed" is (merge - task arithmetic) / (individual - task arithmetic) per seed.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from modelfusion.datasets import Split, load_dataset
from modelfusion.evaluate.stats import t_interval
from modelfusion.merge import merge_modules
from modelfusion.merge.per_task import merge_per_task
from modelfusion.training import score_classifier, train_model

LR = 1e-3
DATA_PER_TASK = 256  # training inputs Fisher merging and RegMean see per task


# -- the digits MLP suite -------------------------------------------------------------------------------------
def _images(X: torch.Tensor) -> torch.Tensor:
    return X.reshape(-1, 8, 8)


def _digits_view(name: str, permutation: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    views = {
        "rotate 90": lambda X: torch.rot90(_images(X), 1, dims=(1, 2)).reshape(-1, 64),
        "rotate 180": lambda X: torch.rot90(_images(X), 2, dims=(1, 2)).reshape(-1, 64),
        "rotate 270, inverted": lambda X: -torch.rot90(_images(X), 3, dims=(1, 2)).reshape(-1, 64),
        "mirror + invert": lambda X: -torch.flip(_images(X), dims=(2,)).reshape(-1, 64),
        "transpose": lambda X: _images(X).transpose(1, 2).reshape(-1, 64),
        "pixel permutation": lambda X: X[:, permutation],
    }
    return views[name]


def _mnist1d_view(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    smooth = torch.tensor([[[0.25, 0.5, 0.25]]])
    views = {
        "mnist1d reversed": lambda X: torch.flip(X, dims=(1,)),
        "mnist1d negated": lambda X: -X,
        "mnist1d shifted": lambda X: torch.roll(X, 10, dims=1),
        "mnist1d smoothed, scaled": lambda X: 2 * nn.functional.conv1d(X[:, None], smooth, padding=1)[:, 0],
    }
    return views[name]


def _padded(X: torch.Tensor) -> torch.Tensor:
    """mnist1d's 40 values, padded to the 64 of a digits image, so one backbone reads both."""
    return nn.functional.pad(X, (0, 64 - X.shape[1]))


@dataclass(frozen=True)
class Suite:
    tasks: tuple[str, ...]
    width: int
    pretrain_epochs: int
    finetune_epochs: int
    backbone_lr: float = LR  # fine-tuning's step size for the pretrained backbone (each new head: LR)
    mnist1d_samples: int = 1000  # mnist1d training samples per task (digits has 1077)

    def backbone(self) -> nn.Module:
        raise NotImplementedError

    def pretraining(self, seed: int) -> tuple[Split, Split, int]:
        digits = load_dataset("digits", seed=seed)
        return digits.train, digits.val, 10

    def task_splits(self, seed: int) -> list[tuple[Split, Split, Split]]:
        """Per task, its dataset (split with its own seed, so tasks see different samples) seen that task's way."""
        permutation = torch.randperm(64, generator=torch.Generator().manual_seed(seed))
        splits = []
        for task, name in enumerate(self.tasks):
            if name.startswith("mnist1d"):
                data, view = load_dataset("mnist1d", seed=seed * 10 + task + 1), _mnist1d_view(name)
                train = Split("train", data.train.X[: self.mnist1d_samples], data.train.y[: self.mnist1d_samples])
                parts = (train, data.val, data.test)
                splits.append(tuple(Split(s.name, _padded(view(s.X)), s.y) for s in parts))
            else:
                data, view = load_dataset("digits", seed=seed * 10 + task + 1), _digits_view(name, permutation)
                splits.append(tuple(Split(s.name, view(s.X), s.y) for s in (data.train, data.val, data.test)))
        return splits


class DigitsMLP(Suite):
    def backbone(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())


# -- the transformer suite ------------------------------------------------------------------------------------
class Block(nn.Module):
    """A pre-norm transformer block with separate query, key, value and output projections (as ViT's)."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        batch, tokens, width = x.shape
        h = self.norm1(x)

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, heads, T, D / heads]
            return t.reshape(batch, tokens, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        # written out rather than scaled_dot_product_attention, which torch.func's vmap (Fisher merging) loops over
        attended = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        x = x + self.o(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class TinyViT(nn.Module):
    """64 inputs as 8 tokens of 8 values, a learned position embedding and class token, `depth` blocks; the
    class token's final state (normalized) is the feature a task's head reads."""

    def __init__(self, width: int = 64, depth: int = 2, heads: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(torch.randn(9, width) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.Sequential(*(Block(width, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(X.reshape(len(X), 8, 8))
        x = torch.cat([self.cls.expand(len(X), -1, -1), tokens], dim=1) + self.position
        return self.norm(self.blocks(x)[:, 0])


class Transformer8(Suite):
    def backbone(self) -> nn.Module:
        return TinyViT(self.width)

    def pretraining(self, seed: int) -> tuple[Split, Split, int]:
        """digits (classes 0-9) and mnist1d (classes 10-19) together, as they are."""
        digits, signals = load_dataset("digits", seed=seed), load_dataset("mnist1d", seed=seed)
        n = self.mnist1d_samples

        def joined(a: Split, b: Split, count: int) -> Split:
            return Split(a.name, torch.cat([a.X, _padded(b.X[:count])]), torch.cat([a.y, b.y[:count] + 10]))

        return joined(digits.train, signals.train, n), joined(digits.val, signals.val, n // 3), 20


SUITES = {
    "digits-mlp": DigitsMLP(
        ("rotate 90", "rotate 180", "mirror + invert", "pixel permutation"),
        width=256,
        pretrain_epochs=40,
        finetune_epochs=20,
    ),
    "transformer-8": Transformer8(
        (
            "rotate 90",
            "rotate 270, inverted",
            "mirror + invert",
            "pixel permutation",
            "mnist1d reversed",
            "mnist1d negated",
            "mnist1d shifted",
            "mnist1d smoothed, scaled",
        ),
        width=64,
        pretrain_epochs=15,
        finetune_epochs=8,
        backbone_lr=1e-4,  # small steps from the pretrained weights, as fine-tuning CLIP's (heads at 1e-3)
    ),
}


# -- scoring --------------------------------------------------------------------------------------------------
def accuracy(body: nn.Module, head: nn.Module, split: Split) -> float:
    return score_classifier(nn.Sequential(body, head), split)["accuracy"]


def mean_accuracy(body: nn.Module, heads, splits) -> float:
    return statistics.mean(accuracy(body, head, split) for head, split in zip(heads, splits, strict=True))


class MultiHead(nn.Module):
    def __init__(self, body: nn.Module, heads: list[nn.Module]) -> None:
        super().__init__()
        self.body, self.heads = body, nn.ModuleList(heads)


def train_multitask(body: nn.Module, heads: list[nn.Module], tasks, seed: int, suite: Suite) -> MultiHead:
    """One backbone, one head per task, trained on all tasks at once (the sum of their losses per step, the
    fine-tunes' step sizes), the epoch with the best mean validation accuracy kept."""
    model = MultiHead(body, heads)
    groups = [{"params": model.body.parameters(), "lr": suite.backbone_lr}, {"params": model.heads.parameters()}]
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=1e-4)
    epochs = suite.finetune_epochs
    generator = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    for _ in range(epochs):
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


def chosen(candidates: dict[str, Callable[[], nn.Module]], heads, vals) -> tuple[str, nn.Module]:
    """The candidate with the best mean validation accuracy over the tasks (each built when scored)."""
    best_name, best_body, best_score = None, None, -1.0
    for name, build in candidates.items():
        body = build()
        score = mean_accuracy(body, heads, vals)
        if score > best_score:
            best_name, best_body, best_score = name, body, score
    return best_name, best_body


def tall_masks(bodies, pretrained, tasks, heads, vals, tests) -> tuple[list[float], str]:
    """TALL masks with each task's lambda chosen on that task's validation split (as the paper does); a task's
    mask depends on its own lambda only, so each is chosen alone. The test accuracy per task, and the lambdas."""
    merges = {
        value: merge_per_task(bodies, base=pretrained, method="tall_masks", tasks=tasks, lambda_=value)
        for value in (0.2, 0.3, 0.4, 0.5, 0.6)
    }
    scores, chosen_values = [], []
    for task, head, val, test in zip(tasks, heads, vals, tests, strict=True):
        value = max(merges, key=lambda v: accuracy(merges[v].module(task, pretrained), head, val))
        chosen_values.append(value)
        scores.append(accuracy(merges[value].module(task, pretrained), head, test))
    return scores, "lambda " + ", ".join(map(str, chosen_values))


def run(seed: int, suite: Suite) -> dict:
    started = time.perf_counter()
    tasks = suite.task_splits(seed)
    pre_train, pre_val, pre_classes = suite.pretraining(seed)
    torch.manual_seed(seed)
    pretrained = train_model(
        nn.Sequential(suite.backbone(), nn.Linear(suite.width, pre_classes)),
        pre_train,
        pre_val,
        epochs=suite.pretrain_epochs,
        lr=LR,
        seed=seed,
    )
    tuned, heads = [], []
    for task, (train, val, _) in enumerate(tasks):
        torch.manual_seed(seed * 100 + task)
        model = nn.Sequential(copy.deepcopy(pretrained[0]), nn.Linear(suite.width, 10))
        groups = [{"params": model[0].parameters(), "lr": suite.backbone_lr}, {"params": model[1].parameters()}]
        train_model(model, train, val, epochs=suite.finetune_epochs, lr=LR, seed=seed * 100 + task, param_groups=groups)
        tuned.append(model)
        heads.append(model[1])
    vals, tests = [val for _, val, _ in tasks], [test for _, _, test in tasks]
    # the merged models keep a head of the right shape; only their backbone (module 0) is scored
    full = [nn.Sequential(m[0], copy.deepcopy(pretrained[1])) for m in tuned]
    own_heads = [nn.Sequential(m[0], head) for m, head in zip(tuned, heads, strict=True)]
    base_with_head = nn.Sequential(pretrained[0], nn.Linear(suite.width, 10))
    data = [train.X[:DATA_PER_TASK] for train, _, _ in tasks]
    unlabeled_val = [val.X for val in vals]

    def merged(method: str, **params) -> Callable[[], nn.Module]:
        return lambda: merge_modules(full, method, base=pretrained, **params)[0]

    def with_own_heads(method: str, inputs, **params) -> Callable[[], nn.Module]:
        return lambda: merge_modules(own_heads, method, data=inputs, **params)[0]

    results = {}
    bodies = {"pretrained backbone": pretrained[0], "weight averaging": merged("linear")()}
    grids = {
        "task arithmetic": {f"lambda {s}": merged("task_arithmetic", lambda_=s) for s in (0.3, 0.5, 0.7, 1.0)},
        "TIES": {
            f"density {d}, lambda {s}": merged("ties", density=d, lambda_=s)
            for d in (0.2, 0.5)
            for s in (0.5, 1.0, 1.5)
        },
        "TSV-Merge": {f"alpha {s}": merged("tsv", alpha=s) for s in (0.5, 1.0, 1.5)},
        "WUDI-merging": {
            f"lr {lr}, scale {s}": merged("wudi", lr=lr, scale=s) for lr in (0.005, 0.02, 0.05) for s in (0.7, 1.0)
        },
        "Fisher merging": {"fisher": with_own_heads("fisher", data)},
        "RegMean": {f"alpha {a}": with_own_heads("regmean", data, alpha=a) for a in (0.5, 0.9)},
        "AdaMerging": {
            "layer-wise": lambda: merge_modules(
                own_heads, "adamerging", data=unlabeled_val, base=base_with_head, task_specific=("1.",), seed=seed
            )[0]
        },
    }
    for name, candidates in grids.items():
        setting, bodies[name] = chosen(candidates, heads, vals)
        results[f"{name} setting"] = setting
    for name, body in bodies.items():
        results[name] = [accuracy(body, head, test) for head, test in zip(heads, tests, strict=True)]
    results["TALL masks (per-task masks)"], results["TALL masks setting"] = tall_masks(
        [m[0] for m in tuned], pretrained[0], suite.tasks, heads, vals, tests
    )
    emr = merge_per_task([m[0] for m in tuned], base=pretrained[0], tasks=suite.tasks)
    results["EMR-merging (per-task masks)"] = [
        accuracy(emr.module(task, pretrained[0]), head, test)
        for task, head, test in zip(suite.tasks, heads, tests, strict=True)
    ]
    results["EMR bytes per task / backbone bytes"] = emr.task_state_bytes / sum(
        t.numel() * t.element_size() for t in pretrained[0].state_dict().values()
    )
    results["individual fine-tunes"] = [accuracy(m[0], m[1], test) for m, test in zip(tuned, tests, strict=True)]
    torch.manual_seed(seed)
    joint = train_multitask(copy.deepcopy(pretrained[0]), [copy.deepcopy(h) for h in heads], tasks, seed, suite)
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
    "WUDI-merging",
    "Fisher merging",
    "RegMean",
    "AdaMerging",
    "EMR-merging (per-task masks)",
    "TALL masks (per-task masks)",
    "individual fine-tunes",
    "multi-task model",
)
DATA_FREE = ("weight averaging", "task arithmetic", "TIES", "TSV-Merge", "WUDI-merging")
PER_TASK = ("EMR-merging (per-task masks)", "TALL masks (per-task masks)")


def gap_closed(run_results: dict, name: str) -> float:
    ta = statistics.mean(run_results["task arithmetic"])
    return (statistics.mean(run_results[name]) - ta) / (statistics.mean(run_results["individual fine-tunes"]) - ta)


def table(runs: list[dict], suite: Suite) -> str:
    lines = [
        f"| model ({len(runs)} seeds) | "
        + " | ".join(suite.tasks)
        + " | mean over tasks [t-interval] | gap closed vs task arithmetic |",
        "|---|" + "---|" * (len(suite.tasks) + 2),
    ]
    for name in ROWS:
        per_task = [statistics.mean(r[name][t] for r in runs) * 100 for t in range(len(suite.tasks))]
        means = [statistics.mean(r[name]) * 100 for r in runs]
        low, high = t_interval(means)
        gaps = [gap_closed(r, name) for r in runs]
        gap_low, gap_high = t_interval(gaps)
        gap = f"{statistics.mean(gaps):.0%} [{gap_low:.0%}, {gap_high:.0%}]"
        lines.append(
            f"| {name} | "
            + " | ".join(f"{a:.2f}" for a in per_task)
            + f" | {statistics.mean(means):.2f} [{low:.2f}, {high:.2f}] | {gap} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="transformer-8")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", help="write every figure here as JSON")
    args = parser.parse_args()
    suite = SUITES[args.suite]
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        runs.append(run(seed, suite))
        print(
            f"seed {seed} ({runs[-1]['seconds']:.0f} s): "
            + ", ".join(f"{name} {statistics.mean(runs[-1][name]) * 100:.2f}" for name in ROWS),
            flush=True,
        )
    print(table(runs, suite))
    settings = {k: [r[k] for r in runs] for k in runs[0] if k.endswith("setting")}
    print("settings chosen on validation: " + "; ".join(f"{k}: {v}" for k, v in settings.items()))
    best = max(DATA_FREE, key=lambda name: statistics.mean(gap_closed(r, name) for r in runs))
    per_task = max(PER_TASK, key=lambda name: statistics.mean(gap_closed(r, name) for r in runs))
    for label, name in (("best data-free merge", best), ("best with per-task state", per_task)):
        gaps = [gap_closed(r, name) for r in runs]
        low, high = t_interval(gaps)
        print(f"{label}: {name}, {statistics.mean(gaps):.1%} [{low:.1%}, {high:.1%}] of the gap closed")
    share = statistics.mean(r["EMR bytes per task / backbone bytes"] for r in runs)
    print(f"EMR's state per task: {share:.1%} of the backbone's bytes")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
