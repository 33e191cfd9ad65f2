"""Unstructured pruning of Linear and convolution weights, made permanent (the zeros are in the weights, no
masks or hooks remain): by magnitude, or by magnitude times the norm of the input it multiplies (Wanda)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["prune_magnitude", "prune_wanda", "prunable_weights"]


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The float weights of the model's Linear and convolution layers, by module name (a quantized layer's
    convolution keeps its settings but not its weight)."""
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd)
        and isinstance(getattr(module, "weight", None), torch.Tensor)
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


def prune_wanda(model: nn.Module, X: torch.Tensor | None, amount: float) -> nn.Module:
    """Zero, in each output row of every Linear and convolution layer, the `amount` fraction of weights with
    the smallest |weight| x L2 norm of the input feature it multiplies, measured on the inputs `X` (Sun et al.
    2024, "A Simple and Effective Pruning Approach for Large Language Models", https://arxiv.org/abs/2306.11695).
    In place; returns the model."""
    from .._modules import evaluating

    if not 0 <= amount < 1:
        raise ConfigError(f"amount is the fraction of weights removed, from 0 to 1 (excluded), got {amount}")
    if X is None:
        raise ConfigError("prune-wanda weighs weights by their inputs: pass X (training inputs)")
    layers = {name: module for name, module in model.named_modules() if name in prunable_weights(model)}
    if not layers:
        raise ConfigError("the model has no Linear or convolution layer to prune")
    squares: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            feature_dim = -1 if isinstance(module, nn.Linear) else 1
            features = x.movedim(feature_dim, 0).reshape(x.shape[feature_dim], -1)
            squares[name] = squares.get(name, 0) + features.pow(2).sum(dim=1)

        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in layers.items()]
    try:
        with torch.no_grad(), evaluating(model):
            model(X)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        for name, module in layers.items():
            weight = module.weight  # (out, in) or (out, in / groups, *kernel)
            norms = squares[name].sqrt()  # (in,)
            if isinstance(module, nn.Linear):
                norms = norms[None, :]
            else:  # output row o of a grouped convolution sees the input channels of its group
                per_group = norms.reshape(module.groups, -1)
                group_of_row = torch.arange(weight.shape[0]) // (weight.shape[0] // module.groups)
                norms = per_group[group_of_row].reshape(*weight.shape[:2], *[1] * (weight.ndim - 2))
            rows = (weight.abs() * norms).reshape(weight.shape[0], -1)
            count = int(amount * rows.shape[1])
            if count:
                order = rows.argsort(dim=1, stable=True)[:, :count]
                weight.view(weight.shape[0], -1).scatter_(1, order, 0.0)
    return model
