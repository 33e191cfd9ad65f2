"""Permutation alignment: reorder the hidden units of models trained apart so that averaging their weights
works, with the permutation spec derived from the model's graph; REPAIR; interpolation curves and barriers."""

from .api import AlignResult, align
from .derive import derive_spec, function_rule, module_rule
from .files import align_checkpoints
from .interpolation import (
    barriers,
    interpolated_model,
    interpolation_curve,
    lerp_state,
    midpoint_accuracy,
    plot_interpolation,
)
from .matching import MATCHERS, Matcher, activation_matching, capture_activations, register_matcher, weight_matching
from .repair import repair, reset_batchnorm
from .spec import PermutationSpec, Segment, permute, random_permutations

__all__ = [
    "align",
    "align_checkpoints",
    "AlignResult",
    "MATCHERS",
    "Matcher",
    "register_matcher",
    "PermutationSpec",
    "Segment",
    "derive_spec",
    "module_rule",
    "function_rule",
    "permute",
    "random_permutations",
    "weight_matching",
    "activation_matching",
    "capture_activations",
    "repair",
    "reset_batchnorm",
    "lerp_state",
    "interpolated_model",
    "midpoint_accuracy",
    "interpolation_curve",
    "barriers",
    "plot_interpolation",
]
