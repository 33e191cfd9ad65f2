"""Results for the report's tests: the shape `modelfusion auto` writes, with every family and every optional
section, and a real `modelfusion ensemble` run on small synthetic predictions."""

from __future__ import annotations

import numpy as np
import torch

from modelfusion.ensemble import fuse_and_evaluate
from modelfusion.predictions import Predictions

FAMILIES = ["member", "member", "member", "output", "merge", "distill", "cascade", "compress"]


def auto_results(names: list[str] | None = None) -> dict:
    """Results in the report's own shape: one candidate per entry of `FAMILIES`, named `names`."""
    names = names or ["mlp_0", "mlp_1", "cnn", "mean_logit", "ties", "student", "mlp_0->cnn", "cnn_int8"]
    rng = np.random.default_rng(0)
    leaderboard = []
    for k, (name, family) in enumerate(zip(names, FAMILIES, strict=True)):
        accuracy = 0.9 + 0.01 * k
        interval = [accuracy - 0.02, accuracy + 0.02]
        leaderboard.append(
            {
                "name": name,
                "family": family,
                "val": {"accuracy": accuracy + 0.002, "nll": 0.3 - 0.01 * k},
                "test": {"accuracy": accuracy, "nll": 0.3 - 0.01 * k, "accuracy_ci": interval},
                "cost": {"parameters": 10_000 * (k + 1), "bytes": 40_000 * (k + 1), "forward_passes": 1 + k % 3},
            }
        )
    members = names[:3]
    disagreement = rng.uniform(0.01, 0.05, (3, 3))
    disagreement = (disagreement + disagreement.T) / 2
    np.fill_diagonal(disagreement, 0)
    chosen = {**leaderboard[3], "path": "runs/auto/chosen"}
    bins = np.linspace(0.55, 0.95, 5)
    return {
        "chosen": chosen,
        "leaderboard": leaderboard,
        "verdict": {"best_member": names[2], "chosen": names[3], "mcnemar_p": 0.02, "significant": True},
        "curves": {
            "reliability": {
                name: {"confidence": bins.tolist(), "accuracy": (bins - 0.02 * k).tolist(), "count": [5, 10, 20, 40, 9]}
                for k, name in enumerate([names[2], names[3]])
            },
            "interpolation": {
                f"{names[0]} - {names[1]}": [
                    {"alpha": a, "loss": 0.3 + 0.4 * a * (1 - a), "accuracy": 0.9 - 0.3 * a * (1 - a)}
                    for a in np.linspace(0, 1, 11).tolist()
                ]
            },
            "cascade": {
                names[6]: [
                    {"threshold": t, "accuracy": 0.9 + 0.06 * t, "mean_cost": 1 + 9 * t**2}
                    for t in np.linspace(0, 1, 21).tolist()
                ]
            },
            "search": {
                "weights of 3 aligned members": [
                    {"evaluation": i, "value": 0.5 - 0.01 * i + 0.05 * (i % 3), "best": 0.5 - 0.01 * i}
                    for i in range(12)
                ]
            },
        },
        "diversity": {"members": members, "disagreement": disagreement.tolist(), "oracle_accuracy": 0.99},
        "skipped": [{"family": "align", "reason": "the members have different architectures"}],
        "config": {"dataset": "digits", "seed": 0, "families": sorted(set(FAMILIES))},
        "versions": {"modelfusion": "0.1.0", "torch": torch.__version__},
    }


def ensemble_predictions(member_names: tuple[str, ...] = ("a", "b", "c")) -> tuple[Predictions, Predictions]:
    """Validation and test predictions of members of rising accuracy on 90 samples of 3 classes."""
    generator = torch.Generator().manual_seed(0)

    def predictions(split: str, n: int) -> Predictions:
        labels = torch.arange(n) % 3
        logits = torch.randn(len(member_names), n, 3, generator=generator)
        logits[:, torch.arange(n), labels] += torch.linspace(1.5, 2.5, len(member_names))[:, None]
        return Predictions(logits, labels, member_names, "classification", split)

    return predictions("val", 90), predictions("test", 90)


def ensemble_results(member_names: tuple[str, ...] = ("a", "b", "c"), methods=("mean", "weighted")) -> dict:
    """`EnsembleRun.summary()` of a real fit on synthetic predictions (what `modelfusion ensemble` writes to
    results.json)."""
    return fuse_and_evaluate(*ensemble_predictions(member_names), list(methods)).summary()
