"""REPAIR (Jordan et al., 2022): after interpolating aligned models, give each hidden unit back the mean and
spread its activations had in the endpoints, which interpolation shrinks ("variance collapse")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._checks import checked
from .._modules import has_batchnorm
from .spec import PermutationSpec

__all__ = ["repair", "reset_batchnorm"]


@torch.no_grad()
def reset_batchnorm(model: nn.Module, X: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm's running statistics on `X` (a cumulative average over batches, as
    `torch.optim.swa_utils.update_bn` does), in place; the model's train/eval mode is restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for start in range(0, len(X), batch_size):
        model(X[start : start + batch_size])
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)
    return model


def _unit_stats(model: nn.Module, module_name: str, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output unit of `module_name`: mean and standard deviation over samples and positions."""
    captured = []
    handle = dict(model.named_modules())[module_name].register_forward_hook(
        lambda _m, _i, out: captured.append(out.detach().movedim(1, -1).reshape(-1, out.shape[1]).double())
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(X)
    finally:
        handle.remove()
        model.train(was_training)
    values = torch.cat(captured)
    return values.mean(0), values.std(0)


@torch.no_grad()
@checked
def repair(
    merged: nn.Module,
    endpoints: Sequence[nn.Module],
    X: torch.Tensor,
    spec: PermutationSpec,
    *,
    weights: Sequence[float] | None = None,
) -> nn.Module:
    """Correct `merged` (in place) so each hidden unit's statistics on `X` are the endpoints' interpolated.

    With BatchNorm, its running statistics are recomputed on `X` (the BatchNorm form of REPAIR). Without,
    every Linear/Conv layer whose outputs are permuted units gets, layer by layer from the input, a scale and
    shift folded into its weight and bias so that its outputs' mean and standard deviation equal the weighted
    mean of the endpoints' (`weights`, default equal: the merge's own coefficients).

    Args:
        merged: the interpolated model; endpoints: the aligned models it was merged from.
        spec: the permutation spec (it says which layers output hidden units).
    """
    if has_batchnorm(merged):
        return reset_batchnorm(merged, X)
    weights = torch.full((len(endpoints),), 1 / len(endpoints)) if weights is None else torch.as_tensor(weights)
    weights = weights.double() / weights.double().sum()
    layers = [
        name.removesuffix(".weight")
        for name, axes in spec.axes.items()
        if name.endswith(".weight") and axes[0] is not None
    ]
    modules = dict(merged.named_modules())
    order = [name for name, _ in merged.named_modules() if name in layers]  # input first, for Sequential-like models
    for name in order:
        stats = [_unit_stats(model, name, X) for model in endpoints]
        target_mean = sum(w * m for w, (m, _) in zip(weights, stats, strict=True))
        target_std = sum(w * s for w, (_, s) in zip(weights, stats, strict=True))
        mean, std = _unit_stats(merged, name, X)
        scale = target_std / (std + 1e-8)
        layer = modules[name]
        shape = (-1,) + (1,) * (layer.weight.ndim - 1)
        layer.weight.mul_(scale.view(shape).to(layer.weight.dtype))
        if layer.bias is not None:  # a layer without bias gets the rescaling only
            layer.bias.copy_(((layer.bias.double() - mean) * scale + target_mean).to(layer.bias.dtype))
    return merged
