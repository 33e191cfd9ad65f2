"""Output fusion: combiners that fuse members' `Predictions`, one registry by name.

| name | what it does | fitted on validation |
|---|---|---|
| `mean` | mean of probabilities (values for regression) | nothing |
| `mean_logit` (= `geometric_mean`) | softmax of the mean log-probability, floored at log(`floor`) | nothing (warns) |
| `median` | median of values (regression) | nothing |
| `weighted` | weighted mean; NLL-optimal weights (NNLS for regression), or the best member* | weights |
| `soft_vote`, `hard_vote` | voting with fixed weights, hard ties broken by summed probability | nothing |
| `stacking` | a scikit-learn meta-learner over member outputs, cross-fitted | meta-learner |
| `greedy_selection` | Caruana et al. (2004) selection with replacement, or the best member* | selection counts |
| `temperature` | temperature per member, a base combiner, temperature of the fused output | temperatures |

*`weighted` and `greedy_selection` are never less accurate on validation than their best member (lower MSE for
regression): when that member is strictly better than the fitted fusion on the validation predictions, it is
used alone, and `choice_` / `choice_reason_` say which was chosen and why (`fallback=False` turns this off).
`mean_logit` warns (`OverconfidenceWarning`) about members that give a validation sample's true class a
probability below `floor`, whose log-probabilities it floors so that one member's zero cannot veto a class.

Members to fuse, when none exist yet: `train_members(recipe, data, method=...)` (seeds, bagging, kfold with
out-of-fold predictions for stacking, snapshot, swa; see `modelfusion.ensemble.train`).
"""

from __future__ import annotations

from .base import Combiner
from .choose import Choice, choose_combiner
from .fusion import FusionMember, is_fusion_folder, load_fusion, load_fusion_member, save_fusion
from .mean import Mean, MeanLogit, Median
from .module import EnsembleModule
from .registry import COMBINERS, combiners_for, make_combiner
from .selection import GreedySelection
from .serialize import load_combiner, save_combiner
from .stacking import Stacking
from .temperature import TemperatureScaling
from .train import TRAINING_METHODS, MeanOfModels, TrainedMembers, train_members
from .voting import HardVote, SoftVote, Voting
from .weighted import WeightedAverage
from .workflow import EnsembleRun, fit_combiners, fuse_and_evaluate

__all__ = [
    "fit_combiners",
    "COMBINERS",
    "Combiner",
    "make_combiner",
    "combiners_for",
    "EnsembleModule",
    "save_combiner",
    "load_combiner",
    "save_fusion",
    "load_fusion",
    "load_fusion_member",
    "is_fusion_folder",
    "FusionMember",
    "fuse_and_evaluate",
    "EnsembleRun",
    "train_members",
    "choose_combiner",
    "Choice",
    "TrainedMembers",
    "TRAINING_METHODS",
    "MeanOfModels",
    "Mean",
    "MeanLogit",
    "Median",
    "WeightedAverage",
    "SoftVote",
    "HardVote",
    "Voting",
    "Stacking",
    "GreedySelection",
    "TemperatureScaling",
]
