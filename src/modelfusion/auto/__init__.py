"""`auto`: from members (or a dataset alone) to the best deployable fusion, chosen on validation, confirmed on
test, exported, with a leaderboard of every family tried and its costs."""

from ..ensemble.fusion import load_fusion, save_fusion
from .candidates import Candidate
from .family import FAMILIES, Family, FamilyResult, Inputs, Skip, family
from .run import AutoResult, auto, train_default_members

__all__ = [
    "auto",
    "AutoResult",
    "Candidate",
    "FAMILIES",
    "family",
    "Family",
    "FamilyResult",
    "Inputs",
    "Skip",
    "train_default_members",
    "load_fusion",
    "save_fusion",
]
