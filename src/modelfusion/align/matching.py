"""Finding the permutations: by weights (Ainsworth et al., 2022) or by activations (correlation of units).

Every matcher is `matcher(spec, reference, other, *, X=None, seed=0) -> {group: permutation}`, where the models
are modules or state dicts, and registers in `MATCHERS` with what it needs (`Matcher`), so `align` dispatches
through the registry alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .._modules import evaluating
from ..errors import ConfigError
from ..registry import Registry
from .spec import PermutationSpec, axis_index

__all__ = ["MATCHERS", "Matcher", "register_matcher", "weight_matching", "activation_matching", "capture_activations"]

Model = nn.Module | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Matcher:
    """A registered matcher and what it needs: inputs `X` (to run the models), or only weights (then it can also
    match a model to an averaged state dict, as `align(..., target="average")` does)."""

    name: str
    function: Callable[..., dict[str, torch.Tensor]]
    needs_inputs: bool
    weights_only: bool

    def __call__(self, spec: PermutationSpec, reference: Model, other: Model, *, X=None, seed: int = 0):
        return self.function(spec, reference, other, X=X, seed=seed)


MATCHERS: Registry[Matcher] = Registry("alignment method")


def register_matcher(name: str, *, needs_inputs: bool, weights_only: bool) -> Callable:
    """Register the decorated `matcher(spec, reference, other, *, X=None, seed=0)` as `name`."""

    def decorator(function: Callable[..., dict[str, torch.Tensor]]) -> Callable[..., dict[str, torch.Tensor]]:
        MATCHERS.register(name)(Matcher(name, function, needs_inputs, weights_only))
        return function

    return decorator


def _state(model: Model) -> Mapping[str, torch.Tensor]:
    return model.state_dict() if isinstance(model, nn.Module) else model


def _unit_rows(tensor: torch.Tensor, dim: int, segment_offset: int, segment) -> torch.Tensor:
    """`[units, everything else]`: one row per unit of `segment` along `dim` (its `inner` entries folded in)."""
    part = tensor.narrow(dim, segment_offset, segment.length).movedim(dim, 0)
    return part.reshape(segment.size, -1)


def _similarity(
    spec: PermutationSpec,
    group: str,
    reference: Mapping[str, torch.Tensor],
    other: Mapping[str, torch.Tensor],
    perms: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """`S[i, j]`: how well unit j of `other` matches unit i of `reference`, summed over every axis of `group`,
    with `other`'s other axes already permuted by `perms`."""
    n = spec.groups[group]
    total = torch.zeros(n, n, dtype=torch.float64)
    for name, dim in spec.axes_of(group):
        a, b = reference[name].double(), other[name].double()
        for other_dim, axis in enumerate(spec.axes[name]):
            if axis is not None:
                b = b.index_select(other_dim, axis_index(axis, perms, skip=group if other_dim == dim else None))
        offset = 0
        for segment in spec.axes[name][dim]:
            if segment.group == group:
                total += _unit_rows(a, dim, offset, segment) @ _unit_rows(b, dim, offset, segment).T
            offset += segment.length
    return total


def _assign(similarity: torch.Tensor) -> torch.Tensor:
    _, columns = linear_sum_assignment(similarity.numpy(), maximize=True)
    return torch.as_tensor(columns, dtype=torch.int64)


@register_matcher("weight_matching", needs_inputs=False, weights_only=True)
def weight_matching(
    spec: PermutationSpec,
    reference: Model,
    other: Model,
    *,
    X: torch.Tensor | None = None,
    seed: int = 0,
    max_rounds: int = 100,
) -> dict[str, torch.Tensor]:
    """Permutations of `other`'s units that best match `reference`'s weights (Ainsworth, Hayase and
    Srinivasa, 2022, "Git Re-Basin", weight matching).

    Coordinate descent: each group in turn (random order, seeded) solves a linear assignment
    (`scipy.optimize.linear_sum_assignment`) on the inner products of its units' weights, with the other groups
    held fixed, until a whole round improves nothing.

    Returns:
        group -> permutation (new unit i of `other` is its old unit `perm[i]`); apply with `permute`. `X` is
        not used.
    """
    reference, other = _state(reference), _state(other)
    spec.check(reference)
    spec.check(other)
    perms = {g: torch.arange(n) for g, n in spec.groups.items()}
    generator = torch.Generator().manual_seed(seed)
    names = list(spec.groups)
    for _ in range(max_rounds):
        improved = False
        for index in torch.randperm(len(names), generator=generator).tolist():
            group = names[index]
            similarity = _similarity(spec, group, reference, other, perms)
            candidate = _assign(similarity)
            rows = torch.arange(len(candidate))
            gain = similarity[rows, candidate].sum() - similarity[rows, perms[group]].sum()
            if gain > 1e-12 * max(1.0, similarity.abs().max().item()):
                perms[group], improved = candidate, True
        if not improved:
            break
    return perms


def capture_activations(
    model: nn.Module, spec: PermutationSpec, X: torch.Tensor, batch_size: int = 512
) -> dict[str, list[torch.Tensor]]:
    """Per group, the activations `[samples * positions, units]` at each of its tap nodes."""
    if not spec.taps:
        raise ConfigError("activation matching needs the spec's taps (derive_spec records them); add 'taps'")
    graph_module = torch.fx.symbolic_trace(model)
    wanted = {node: group for group, nodes in spec.taps.items() for node in nodes}
    known = {n.name for n in graph_module.graph.nodes}
    missing = sorted(set(wanted) - known)
    if missing:
        raise ConfigError(f"spec taps {missing} are not nodes of the model's fx graph")
    captured: dict[str, list[torch.Tensor]] = {node: [] for node in wanted}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                captured[n.name].append(out.detach().movedim(1, -1).reshape(-1, out.shape[1]).double())
            return out

    with evaluating(graph_module):  # the traced modules are the model's: each gets its own mode back
        for start in range(0, len(X), batch_size):
            Recorder(graph_module).run(X[start : start + batch_size])
    by_group: dict[str, list[torch.Tensor]] = {}
    for node, group in wanted.items():
        by_group.setdefault(group, []).append(torch.cat(captured[node]))
    return by_group


def _standardized(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


@register_matcher("activation_matching", needs_inputs=True, weights_only=False)
def activation_matching(
    spec: PermutationSpec, reference: Model, other: Model, *, X: torch.Tensor | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Permutations of `other`'s units that best match `reference`'s by the correlation of their activations
    on `X` (Li et al., 2015, "Convergent learning"; Ainsworth et al., 2022, activation matching): per group,
    a linear assignment on the correlation matrix summed over the group's tap nodes. Deterministic (`seed` is
    not used); the models must be modules, since they run.
    """
    if X is None or not (isinstance(reference, nn.Module) and isinstance(other, nn.Module)):
        raise ConfigError("activation matching runs both models on inputs: pass modules and a batch X")
    acts_reference = capture_activations(reference, spec, X)
    acts_other = capture_activations(other, spec, X)
    perms = {g: torch.arange(n) for g, n in spec.groups.items()}
    for group in spec.groups:
        if group not in acts_reference:
            continue  # no tap: the group keeps its order (weight matching can still place it)
        correlation = sum(
            _standardized(a).T @ _standardized(b) / len(a)
            for a, b in zip(acts_reference[group], acts_other[group], strict=True)
        )
        perms[group] = _assign(torch.nan_to_num(correlation))
    return perms
