"""`auto`: from members (or a dataset alone) to the best deployable fusion, chosen on validation, confirmed on
test, exported, with a leaderboard of every family tried and its costs."""

from .candidates import Candidate
from .export import load_fusion, save_fusion
from .run import FAMILIES, AutoResult, auto, train_default_members

__all__ = ["auto", "AutoResult", "Candidate", "FAMILIES", "train_default_members", "load_fusion", "save_fusion"]
