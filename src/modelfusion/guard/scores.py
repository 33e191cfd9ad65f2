"""Out-of-distribution scores: one number per sample, higher = more unusual. One registry, `SCORES`.

| name | reads | paper |
|---|---|---|
| `max_softmax` | the fused (mean) probability: 1 - its largest class probability | Hendrycks & Gimpel, 2017 |
| `entropy` | the entropy of the fused probability | Lakshminarayanan et al., 2017 |
| `mutual_information` | members' disagreement: entropy of the mean minus mean entropy | Lakshminarayanan et al., 2017 |
| `energy` | -logsumexp of the fused logits (the members' mean logit) | Liu et al., 2020 |
| `mahalanobis` | distance to the closest class mean of penultimate features (Ledoit-Wolf)* | Lee et al., 2018 |
| `combined` | the largest of the other scores, each as its percentile among validation samples | |

*Each torch member's features (the inputs when no torch member is given), averaged over members.

An output score is a pure function of the members' logits `[K, N, C]`; `mahalanobis` is fitted on the training
split's features and labels first (`fit`), and `combined` on the other scores of the validation split; their
fitted tensors are what a saved guard stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import Registry

__all__ = ["OODScore", "SCORES"]


@dataclass(frozen=True)
class OODScore:
    """A registered score.

    Attributes:
        name: its registry name.
        needs: "logits" (the members' outputs `[K, N, C]`), "features" (a list of `[N, D]` float64 tensors,
            one per feature source) or "scores" (a dict of the other scores, name -> `[N]` float64).
        score: `(inputs, state) -> [N]` float64 scores, higher = more unusual.
        fit: for "features" scores: `(features, labels) -> state` (a dict of tensors); for "scores" scores:
            `(validation scores) -> state`; else None.
        reference: the paper.
    """

    name: str
    needs: str
    score: Callable[..., torch.Tensor]
    fit: Callable[..., dict[str, torch.Tensor]] | None
    reference: str


SCORES: Registry[OODScore] = Registry("out-of-distribution score")


def _register(name: str, needs: str, reference: str, fit=None):
    def decorator(fn):
        SCORES.register(name)(OODScore(name, needs, fn, fit, reference))
        return fn

    return decorator


def _mean_probability(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=-1).mean(0)  # [N, C]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


@_register("max_softmax", "logits", "Hendrycks & Gimpel, 2017, https://arxiv.org/abs/1610.02136")
def max_softmax(logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """1 - max_c p(c | x) of the members' mean probability (Hendrycks & Gimpel, 2017, "A baseline for
    detecting misclassified and out-of-distribution examples"); with one member, its own max-softmax."""
    return 1.0 - _mean_probability(logits).max(-1).values


@_register("entropy", "logits", "Lakshminarayanan et al., 2017, https://arxiv.org/abs/1612.01474")
def entropy(logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """Entropy of the members' mean probability, the predictive uncertainty of a deep ensemble
    (Lakshminarayanan et al., 2017, "Simple and scalable predictive uncertainty estimation using deep
    ensembles")."""
    return _entropy(_mean_probability(logits))


@_register("mutual_information", "logits", "Lakshminarayanan et al., 2017, https://arxiv.org/abs/1612.01474")
def mutual_information(logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """The members' disagreement: H(mean_k p_k) - mean_k H(p_k), the mutual information between the
    prediction and the member (Lakshminarayanan et al., 2017; the BALD form of Houlsby et al., 2011). Zero
    when all members agree, whatever their confidence; zero for a single member."""
    probs = torch.softmax(logits.double(), dim=-1)  # [K, N, C]
    return _entropy(probs.mean(0)) - _entropy(probs).mean(0)


@_register("energy", "logits", "Liu et al., 2020, https://arxiv.org/abs/2010.03759")
def energy(logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """The free energy -logsumexp_c z_c of the fused logits z, the members' mean logit (Liu et al., 2020,
    "Energy-based out-of-distribution detection", temperature 1). The mean of probabilities would not do:
    its log is normalized, so its energy is zero everywhere."""
    return -torch.logsumexp(logits.double().mean(0), dim=-1)


def _fit_mahalanobis(features: Sequence[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per feature source: class means `[C, D]` and the precision `[D, D]` of the class-centred features,
    estimated with Ledoit-Wolf shrinkage (the sample covariance is singular when D nears N)."""
    from sklearn.covariance import LedoitWolf

    y = labels.numpy()
    classes = np.unique(y)
    state = {}
    for k, feats in enumerate(features):
        x = feats.numpy()
        means = np.stack([x[y == c].mean(0) for c in classes])  # [C, D]
        centred = x - means[np.searchsorted(classes, y)]
        state[f"{k}.means"] = torch.from_numpy(means)
        state[f"{k}.precision"] = torch.from_numpy(LedoitWolf(assume_centered=True).fit(centred).precision_)
    return state


@_register("mahalanobis", "features", "Lee et al., 2018, https://arxiv.org/abs/1807.03888", fit=_fit_mahalanobis)
def mahalanobis(features: Sequence[torch.Tensor], state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Distance of each sample's features to the closest class-conditional Gaussian with a shared covariance
    (Lee et al., 2018, "A simple unified framework for detecting out-of-distribution samples and adversarial
    attacks", without input preprocessing), averaged over the feature sources (one per torch member)."""
    distances = []
    for k, feats in enumerate(features):
        means, precision = state[f"{k}.means"], state[f"{k}.precision"]
        diff = feats[:, None, :] - means[None]  # [N, C, D]
        squared = torch.einsum("ncd,de,nce->nc", diff, precision, diff)
        distances.append(squared.min(-1).values.clamp_min(0).sqrt())
    return torch.stack(distances).mean(0)


def _fit_combined(validation: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each score's validation values, sorted: the reference its percentiles are read against."""
    return {name: torch.sort(values.double()).values for name, values in validation.items()}


@_register("combined", "scores", "", fit=_fit_combined)
def combined(scores: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The largest of the other scores, each first turned into its percentile among the validation samples'
    values of that score (the share of them it is above, ties counted half). A sample is as unusual as its
    most unusual score says, so no one kind of shift has to be foreseen: output scores notice inputs between
    classes, feature distances notice inputs unlike any training sample, and which of them matters is rarely
    known in advance. Percentiles put them on one scale. Counting ties half keeps every validation sample
    below 1 (a score constant on validation, such as one member's mutual information, reads 0.5), so a
    threshold set on validation stays below the 1 that a value beyond every validation value reads."""
    percentiles = []
    for name, values in scores.items():
        reference, values = state[name], values.double().contiguous()
        below = torch.searchsorted(reference, values, right=False)
        not_above = torch.searchsorted(reference, values, right=True)
        percentiles.append((below + not_above).double() / (2 * len(reference)))
    return torch.stack(percentiles).max(0).values
