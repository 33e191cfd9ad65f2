"""Input guard: screen what reaches a fused model, and find the harmful samples in its training data.

- `InputGuard(members).fit(train, val).check(X)`: schema, finiteness, per-feature ranges and an
  out-of-distribution score (`SCORES`: max-softmax, entropy, mutual information, energy, Mahalanobis and
  k-nearest-neighbour distances of the members' features, Mahalanobis on the raw inputs, and `combined`, the
  default: the largest of their validation percentiles), its threshold set on validation;
  `EnsembleModule(..., guard=)` and `GuardedModel` reject or abstain on what it rejects.
- `find_label_issues(data, recipe=..., folds=5)`: suspected mislabels (confident learning on out-of-fold
  predictions of K-fold members) and input outliers; `clean` drops them and refits.
"""

from __future__ import annotations

from .input_guard import InputGuard, Verdicts, feature_shuffled, proxy_outliers
from .label_issues import (
    Cleaned,
    LabelIssues,
    clean,
    confident_learning,
    find_label_issues,
    inject_label_noise,
    input_outliers,
)
from .scores import SCORES, OODScore
from .serving import GuardedModel

__all__ = [
    "InputGuard",
    "Verdicts",
    "feature_shuffled",
    "proxy_outliers",
    "GuardedModel",
    "SCORES",
    "OODScore",
    "find_label_issues",
    "clean",
    "confident_learning",
    "input_outliers",
    "inject_label_noise",
    "LabelIssues",
    "Cleaned",
]
