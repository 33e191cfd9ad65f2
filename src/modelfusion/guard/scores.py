"""Out-of-distribution scores: one number per sample, higher = more unusual. One registry, `SCORES`.

| name | reads | paper |
|---|---|---|
| `max_softmax` | the fused (mean) probability: 1 - its largest class probability | Hendrycks & Gimpel, 2017 |
| `entropy` | the entropy of the fused probability | Lakshminarayanan et al., 2017 |
| `mutual_information` | members' disagreement: entropy of the mean minus mean entropy | Lakshminarayanan et al., 2017 |
| `energy` | -logsumexp of the fused logits (the members' mean logit) | Liu et al., 2020 |
| `mahalanobis` | distance to the closest class mean of penultimate features (Ledoit-Wolf)* | Lee et al., 2018 |
| `knn` | distance to the k-th nearest training sample of the normalized penultimate features* | Sun et al., 2022 |
| `input_mahalanobis` | distance to the closest class mean of the raw inputs (Ledoit-Wolf) | Lee et al., 2018 |
| `combined` | the largest of the other scores, each as its percentile among validation samples | |

*Each torch member's features (the inputs when no torch member is given), averaged over members.

Output scores miss what the members never see: a network's confidence may grow, not shrink, far from its
training data (scaled inputs make a ReLU network surer), so distances in the input and feature spaces stand
beside them, and `combined` reads them all.

An output score is a pure function of the members' logits `[K, N, C]`; the feature and input scores are fitted
on the training split first (`fit`), and `combined` on the other scores of the validation split; their fitted
tensors are what a saved guard stores (`check` says whether a file's tensors fit a score).
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
            one per feature source), "inputs" (the same, with the flattened inputs as the one source) or
            "scores" (a dict of the other scores, name -> `[N]` float64).
        score: `(inputs, state) -> [N]` float64 scores, higher = more unusual.
        fit: for "features" and "inputs" scores: `(features, labels) -> state` (a dict of tensors); for
            "scores" scores: `(validation scores) -> state`; else None.
        reference: the paper.
        check: for "features" and "inputs" scores: `(state, widths) -> bool`, whether a state (read from a
            file) fits sources of these widths, so that a damaged file fails when it is read.
    """

    name: str
    needs: str
    score: Callable[..., torch.Tensor]
    fit: Callable[..., dict[str, torch.Tensor]] | None
    reference: str
    check: Callable[[dict[str, torch.Tensor], list[int]], bool] | None = None


SCORES: Registry[OODScore] = Registry("out-of-distribution score")


def _register(name: str, needs: str, reference: str, fit=None, check=None):
    def decorator(fn):
        SCORES.register(name)(OODScore(name, needs, fn, fit, reference, check))
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


def _fits_mahalanobis(state: dict[str, torch.Tensor], widths: list[int]) -> bool:
    for k, width in enumerate(widths):
        means, precision = state.get(f"{k}.means"), state.get(f"{k}.precision")
        if (
            means is None
            or precision is None
            or means.dtype != torch.float64
            or precision.dtype != torch.float64
            or means.ndim != 2
            or means.shape[0] == 0
            or means.shape[1] != width
            or tuple(precision.shape) != (width, width)
            or not bool(torch.isfinite(means).all() and torch.isfinite(precision).all())
        ):
            return False
    return True


LEE = "Lee et al., 2018, https://arxiv.org/abs/1807.03888"


@_register("mahalanobis", "features", LEE, fit=_fit_mahalanobis, check=_fits_mahalanobis)
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


@_register("input_mahalanobis", "inputs", LEE, fit=_fit_mahalanobis, check=_fits_mahalanobis)
def input_mahalanobis(inputs: Sequence[torch.Tensor], state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The Mahalanobis distance of Lee et al., 2018 on the raw (flattened) inputs: what no member's view of the
    data can hide, such as inputs scaled far beyond the training range on which every member grows surer."""
    return mahalanobis(inputs, state)


KNN_BANK_MAX = 10_000  # training samples kept per feature source: the guard file grows with them
KNN_SHARE = 0.001  # k as a share of the bank: the paper's k = 50 of CIFAR-10's 50,000 training images


def _normalized(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _fit_knn(features: Sequence[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per feature source, the L2-normalized features of (at most `KNN_BANK_MAX`, evenly spaced) training
    samples, in float32: the bank the distances are measured to."""
    state = {}
    for k, feats in enumerate(features):
        keep = torch.linspace(0, len(feats) - 1, min(len(feats), KNN_BANK_MAX)).round().long()
        state[f"{k}.bank"] = _normalized(feats[keep].double()).float()
    return state


def _fits_knn(state: dict[str, torch.Tensor], widths: list[int]) -> bool:
    for k, width in enumerate(widths):
        bank = state.get(f"{k}.bank")
        if bank is None or bank.dtype != torch.float32 or bank.ndim != 2 or bank.shape[0] == 0:
            return False
        if bank.shape[1] != width or not bool(torch.isfinite(bank).all()):
            return False
    return True


@_register("knn", "features", "Sun et al., 2022, https://arxiv.org/abs/2204.06507", fit=_fit_knn, check=_fits_knn)
def knn(features: Sequence[torch.Tensor], state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Distance of each sample's L2-normalized features to its k-th nearest training sample's (Sun et al., 2022,
    "Out-of-distribution detection with deep nearest neighbors"), k the paper's share of the training set
    (`KNN_SHARE`, at least 1), averaged over the feature sources. Unlike the Mahalanobis distance it assumes no
    Gaussian class clusters."""
    distances = []
    for k, feats in enumerate(features):
        bank = state[f"{k}.bank"].double()
        neighbours = max(1, round(KNN_SHARE * len(bank)))
        rows = []
        for part in _normalized(feats.double()).split(1024):  # [n, N] distances a chunk at a time
            rows.append(torch.cdist(part, bank).kthvalue(neighbours, dim=1).values)
        distances.append(torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64))
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
