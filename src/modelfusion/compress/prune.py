"""Unstructured magnitude pruning of Linear and convolution weights, made permanent (the zeros are in the
weights, no masks or hooks remain)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["prune_magnitude", "prunable_weights"]


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the model's Linear and convolution layers, by module name."""
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd)
    }


def prune_magnitude(model: nn.Module, amount: float, *, scope: str = "global") -> nn.Module:
    """Zero the `amount` fraction of weights with the smallest magnitude, over all layers at once ("global") or
    in each layer ("layer"); in place, returns the model."""
    if not 0 <= amount < 1:
        raise ConfigError(f"amount is the fraction of weights removed, from 0 to 1 (excluded), got {amount}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope must be 'global' or 'layer', got {scope!r}")
    weights = list(prunable_weights(model).values())
    if not weights:
        raise ConfigError("the model has no Linear or convolution layer to prune")
    with torch.no_grad():
        if scope == "global":
            magnitudes = torch.cat([w.abs().reshape(-1) for w in weights])
            count = int(amount * magnitudes.numel())
            if count:
                threshold = magnitudes.kthvalue(count).values
                removed = 0
                for w in weights:  # ties at the threshold: remove in order until `count` are gone
                    below = w.abs() < threshold
                    w[below] = 0
                    removed += int(below.sum())
                for w in weights:
                    if removed >= count:
                        break
                    equal = (w.abs() == threshold) & (w != 0)
                    take = equal.reshape(-1).nonzero().flatten()[: count - removed]
                    w.view(-1)[take] = 0
                    removed += len(take)
        else:
            for w in weights:
                count = int(amount * w.numel())
                if count:
                    order = w.abs().reshape(-1).argsort(stable=True)
                    w.view(-1)[order[:count]] = 0
    return model
