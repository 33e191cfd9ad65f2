"""Structured pruning: whole hidden units (neurons, channels) removed, leaving a smaller dense model.

Which weight axes index the same units comes from the permutation spec that `modelfusion.align.derive_spec`
reads off the model's torch.fx graph, so a unit is removed together from every tensor that shares it
(the layer's rows and bias, BatchNorm parameters and statistics, the next layer's input columns, every
branch of a residual addition, the positions a flatten gives it), with no per-architecture rules. Removing
units is a permutation that keeps only some of them: the spec's `permute` with shorter index lists.

Importance of a unit: the L2 norm of its slices in every parameter the spec ties to it, each tensor's norms
divided by their mean so that no layer's scale dominates (a BatchNorm's small gamma marks a unit the network
has already turned down; Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
Slimming", https://arxiv.org/abs/1708.06519; Li et al. 2017, "Pruning Filters for Efficient ConvNets",
https://arxiv.org/abs/1608.08710).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

__all__ = ["prune_structured", "resize_tensors"]


def prune_structured(model: nn.Module, X: torch.Tensor | None, amount: float) -> nn.Module:
    """Remove the `amount` fraction of the units of every hidden group of `model` (at least one unit stays);
    `X` (a few inputs) traces the graph. In place: returns the model, now with smaller layers."""
    from ..align.derive import derive_spec
    from ..align.spec import permute

    if not 0 <= amount < 1:
        raise ConfigError(f"amount is the fraction of units removed, from 0 to 1 (excluded), got {amount}")
    if X is None:
        raise ConfigError("prune-structured traces the model on example inputs: pass X (a few training inputs)")
    spec = derive_spec(model, X[:2])
    if not spec.groups:
        raise ConfigError(f"{type(model).__name__} has no hidden units that can be removed (no permutable groups)")
    state = model.state_dict()
    kept = {}
    for group, size in spec.groups.items():
        keep = max(1, round(size * (1 - amount)))
        kept[group] = _unit_importance(state, spec, group).topk(keep).indices.sort().values
    resize_tensors(model, {name: tuple(t.shape) for name, t in permute(state, spec, kept).items()}, what="pruning")
    model.load_state_dict(permute(state, spec, kept))
    return model


def _unit_importance(state: Mapping[str, torch.Tensor], spec, group: str) -> torch.Tensor:
    """One score per unit of `group`: the sum over the parameters it indexes of each unit's slice norm,
    normalized by that tensor's mean slice norm."""
    score = torch.zeros(spec.groups[group])
    for name, dim in spec.axes_of(group):
        tensor = state[name]
        if not tensor.is_floating_point() or name.endswith(("running_mean", "running_var")):
            continue
        offset = 0
        for segment in spec.axes[name][dim]:
            if segment.group == group:
                part = tensor.narrow(dim, offset, segment.length).movedim(dim, 0).float()
                norms = part.reshape(segment.size, -1).norm(dim=1)
                score += norms / norms.mean().clamp_min(1e-12)
            offset += segment.length
    return score


def resize_tensors(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], *, what: str) -> nn.Module:
    """Give the parameters and buffers named in `shapes` those (no larger) shapes, as zeros, and update the
    layers' size attributes to match; `load_state_dict` then fills the values. In place."""
    state = model.state_dict()
    if not isinstance(shapes, Mapping):
        raise CheckpointError(f"{what}: expected tensor names and their shapes, got {type(shapes).__name__}")
    for name, shape in shapes.items():
        if name not in state:
            raise CheckpointError(f"{what}: the model has no tensor {name!r}")
        old = state[name]
        if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise CheckpointError(f"{what}: the shape of {name} must be a list of integers, got {shape!r}")
        shape = tuple(shape)
        if len(shape) != old.ndim or any(not 0 < new <= was for new, was in zip(shape, old.shape, strict=True)):
            raise CheckpointError(f"{what}: {name} may only shrink from {tuple(old.shape)}, got {shape}")
        if shape == tuple(old.shape):
            continue
        owner_name, _, attribute = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        zeros = old.new_zeros(shape)
        if attribute in owner._parameters:  # (state_dict() tensors are detached: ask the parameter itself)
            trainable = owner._parameters[attribute].requires_grad
            owner._parameters[attribute] = nn.Parameter(zeros, requires_grad=trainable)
        else:
            owner._buffers[attribute] = zeros
    for name, module in model.named_modules():
        _update_sizes(module, name or type(model).__name__)
    return model


def _update_sizes(module: nn.Module, name: str) -> None:
    """Keep a layer's size attributes true to its (possibly shrunk) weights."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        if module.groups != 1 and weight.shape[0] != module.out_channels:
            raise ConfigError(f"{name}: structured pruning of grouped convolutions is not supported")
        module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = module.running_mean.shape[0] if module.running_mean is not None else weight.shape[0]
    elif isinstance(module, nn.LayerNorm) and weight is not None:
        module.normalized_shape = (*module.normalized_shape[:-1], weight.shape[-1])
    elif isinstance(module, nn.GroupNorm) and weight is not None:
        if weight.shape[0] % module.num_groups:
            raise ConfigError(f"{name}: {weight.shape[0]} channels left do not split into {module.num_groups} groups")
        module.num_channels = weight.shape[0]
