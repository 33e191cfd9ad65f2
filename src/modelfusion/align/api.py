"""`align`: permute models trained apart into one reference's unit order, so their weights can be averaged."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import checked
from .._modules import output_width
from ..errors import ConfigError, IncompatibleModelsError, InvalidInputError
from .derive import derive_spec
from .matching import MATCHERS
from .spec import PermutationSpec, permute

__all__ = ["align", "AlignResult"]


@dataclass
class AlignResult:
    """Aligned copies of the models (the first is the reference, unchanged), the permutation applied to each
    (group -> order; identity for the reference), the spec, and the seconds spent matching."""

    models: list[nn.Module]
    perms: list[dict[str, torch.Tensor]]
    spec: PermutationSpec
    seconds: float
    rounds: int = 0


@checked
def align(
    models: Sequence[nn.Module],
    *,
    method: str = "weight_matching",
    X: torch.Tensor | None = None,
    spec: PermutationSpec | dict | None = None,
    target: str = "reference",
    seed: int = 0,
    max_rounds: int = 10,
) -> AlignResult:
    """Align every model to the first one's unit order; the models passed in are never changed.

    Args:
        models: two or more models of one architecture.
        method: a name from `MATCHERS`: "weight_matching" (Ainsworth et al., 2022) or "activation_matching"
            (needs `X`).
        X: a batch of inputs: the example for deriving the spec, and the data for activation matching.
        spec: a `PermutationSpec` (or its dict form); derived from the first model's graph when None.
        target: "reference" (each model matched to the first), or "average" (matchers of weights only: each model
            matched in turn to the mean of all the others, repeated until no permutation changes or
            `max_rounds`; the first model's order is kept).
        seed: orders the groups in weight matching's coordinate descent.

    Returns:
        An `AlignResult`; merge its `models` with `modelfusion.merge.merge_state_dicts` or `interpolated_model`.

    Example:
        >>> aligned = align([model_a, model_b], X=data.train.X[:512])
        >>> merged = merge_state_dicts(aligned.models, method="linear")
    """
    matcher = MATCHERS[method]  # an unknown name fails here, listing the valid ones
    _check_request(models, matcher, method, X, target)
    spec = _spec_for(models[0], spec, X)
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    _check_same_architecture(states)
    spec.check(states[0])

    started = time.perf_counter()
    identity = {g: torch.arange(n) for g, n in spec.groups.items()}
    perms = [identity] + [None] * (len(models) - 1)
    for i in range(1, len(models)):
        reference, other = (models[0], models[i]) if matcher.needs_inputs else (states[0], states[i])
        perms[i] = matcher(spec, reference, other, X=X, seed=seed + i)
    rounds = _match_to_average(matcher, spec, states, perms, X, seed, max_rounds) if target == "average" else 0
    seconds = time.perf_counter() - started

    aligned = []
    for model, state, perm in zip(models, states, perms, strict=True):
        copied = copy.deepcopy(model)
        copied.load_state_dict(permute(state, spec, perm))
        aligned.append(copied)
    return AlignResult(aligned, perms, spec, seconds, rounds)


def _check_request(models: Sequence[nn.Module], matcher, method: str, X: torch.Tensor | None, target: str) -> None:
    """Refuse, in one line each, what `align` cannot do: one model, an unknown target, averaging with a matcher
    that runs the models, activation matching without inputs."""
    if len(models) < 2:
        raise InvalidInputError(f"alignment needs at least two models, got {len(models)}")
    if target not in ("reference", "average"):
        raise ConfigError(f"target must be 'reference' or 'average', got {target!r}")
    if target == "average" and not matcher.weights_only:
        by_weights = [n for n in MATCHERS.names() if MATCHERS[n].weights_only]
        raise ConfigError(
            f"target='average' matches weights to an averaged model: use method={' or '.join(map(repr, by_weights))}"
        )
    if matcher.needs_inputs and X is None:
        raise ConfigError(f"{method} needs inputs X to run the models on")


def _spec_for(model: nn.Module, spec: PermutationSpec | dict | None, X: torch.Tensor | None) -> PermutationSpec:
    """The spec given (or its dict form), else the one derived from `model`'s graph on `X`; inputs of the
    wrong width fail first, in one line."""
    if isinstance(spec, dict):
        spec = PermutationSpec.from_dict(spec)
    if X is not None:
        output_width(model, X, "model 0")
    if spec is None:
        if X is None:
            raise ConfigError("deriving the permutation spec needs an example batch X (or pass spec=...)")
        spec = derive_spec(model, X)
    return spec


def _check_same_architecture(states: list[dict[str, torch.Tensor]]) -> None:
    shapes = [{k: tuple(v.shape) for k, v in s.items()} for s in states]
    for i, other in enumerate(shapes[1:], start=1):
        if other != shapes[0]:
            differing = sorted(k for k in set(other) | set(shapes[0]) if other.get(k) != shapes[0].get(k))
            raise IncompatibleModelsError(
                f"model {i} does not have model 0's architecture (tensors differ: {differing[:5]}); alignment "
                "permutes units of one architecture"
            )


def _match_to_average(matcher, spec, states, perms, X, seed: int, max_rounds: int) -> int:
    """The `average` target: each model but the first, in a seeded order, matched to the mean of the others
    (`perms` updated in place), round after round until no permutation changes or `max_rounds`; the rounds
    run."""
    generator = torch.Generator().manual_seed(seed)
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        changed = False
        for i in (torch.randperm(len(states) - 1, generator=generator) + 1).tolist():
            others = [permute(states[j], spec, perms[j]) for j in range(len(states)) if j != i]
            new = matcher(spec, _mean_state(others), states[i], X=X, seed=seed + rounds * 100 + i)
            if any(not torch.equal(new[g], perms[i][g]) for g in new):
                perms[i], changed = new, True
        if not changed:
            break
    return rounds


def _mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of same-architecture state dicts, summed in float32 (float64 when an input is) in the order
    given, as merge's "linear" method sums (integer buffers from the first): the target `average` matches to.
    Here rather than `merge_state_dicts`, because merge (its `align:` step) builds on alignment."""
    mean = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            mean[name] = first.clone()
            continue
        dtype = torch.float64 if any(state[name].dtype == torch.float64 for state in states) else torch.float32
        total = first.to(dtype, copy=True)
        for state in states[1:]:
            total.add_(state[name].to(dtype))
        mean[name] = total.div_(len(states)).to(first.dtype)
    return mean
