"""Merging `nn.Module`s, with data where the method needs it (FusionBench has these; mergekit has none).

`merge_modules(models, method, data=...)`: `data` holds one batch of inputs per model, each model's own data.
Fisher merging weighs every parameter by each model's diagonal Fisher information; RegMean solves, per Linear
layer, for the weights whose outputs best match every model's on its own inputs; AdaMerging fits a coefficient
per task and per tensor on unlabeled inputs. Any method of `METHODS` (TIES, TSV, ...) merges without data, over
modules or plain state dicts (`merge_state_dicts`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .._checks import checked
from .._modules import evaluating
from ..errors import ConfigError, InvalidInputError
from ..registry import Registry
from .state_dicts import merge_state_dicts

__all__ = ["merge_modules", "DATA_METHODS", "diagonal_fisher", "input_grams", "fisher_merge", "regmean", "adamerging"]

DataMethod = Callable[..., dict[str, torch.Tensor]]
DATA_METHODS: Registry[DataMethod] = Registry("data-driven merge method")


@checked
def merge_modules(
    models: Sequence[nn.Module],
    method: str,
    *,
    data: Sequence[torch.Tensor] | None = None,
    base: nn.Module | None = None,
    **params,
) -> nn.Module:
    """A copy of the first model (or of `base`) with the merged weights; the models are not changed.

    Args:
        models: same-architecture models.
        method: "fisher", "regmean" or "adamerging" (`DATA_METHODS`, which need `data`), or any name of `METHODS`.
        data: for the data-driven methods, one batch of inputs per model, from that model's own task.
        base: the pretrained model, for methods that use one (task arithmetic, TIES, TSV, AdaMerging, ...).
        params: the method's parameters.

    Example:
        >>> merged = merge_modules([model_a, model_b], "regmean", data=[x_a, x_b], alpha=0.9)
    """
    if len(models) < 1:
        raise InvalidInputError("merge_modules needs at least one model")
    if method in DATA_METHODS:
        if data is None or len(data) != len(models):
            raise ConfigError(f"merge method {method!r} needs data: one batch of inputs per model ({len(models)})")
        function = DATA_METHODS[method]
        if "base" in inspect.signature(function).parameters:
            params["base"] = base
        state = function(list(models), list(data), **params)
    else:
        state = merge_state_dicts(models, method=method, base=base, **params)
    merged = copy.deepcopy(base if base is not None else models[0])
    merged.load_state_dict(state)
    return merged.eval()


def diagonal_fisher(model: nn.Module, X: torch.Tensor) -> dict[str, torch.Tensor]:
    """The diagonal of the Fisher information of a classifier's trainable parameters on inputs `X`, from its own
    predictive distribution: mean over samples of sum_c p(c|x) (d log p(c|x) / d theta)^2 (exact over classes,
    per-sample gradients by torch.func; in eval mode, the model's modes left as found)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    buffers = dict(model.named_buffers())

    def log_prob(weights, x, label):
        out = functional_call(model, ({**weights, **frozen, **buffers}), (x.unsqueeze(0),))
        return torch.log_softmax(out, dim=-1)[0, label]

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, None))
    with evaluating(model):
        probabilities = torch.softmax(model(X), dim=-1)
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    with torch.enable_grad():
        for label in range(probabilities.shape[1]):
            grads = per_sample(params, X, label)
            weight = probabilities[:, label]
            for name, g in grads.items():
                fisher[name] += torch.einsum("n,n...->...", weight, g.square())
    return {k: v / len(X) for k, v in fisher.items()}


def input_grams(model: nn.Module, X: torch.Tensor) -> dict[str, torch.Tensor]:
    """For every Linear layer (by module name), the Gram matrix `X_l^T X_l` of its inputs on `X` (leading
    dimensions flattened), from one forward pass in eval mode."""
    grams: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):

            def record(module, inputs, output, name=name):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
                grams[name] = grams.get(name, 0) + x.T @ x

            hooks.append(module.register_forward_hook(record))
    try:
        with evaluating(model):
            model(X)
    finally:
        for hook in hooks:
            hook.remove()
    return grams


def _mean_state(models: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    return merge_state_dicts(models, method="linear")


@DATA_METHODS.register("fisher")
def fisher_merge(models: list[nn.Module], data: list[torch.Tensor], *, floor: float = 1e-8) -> dict[str, torch.Tensor]:
    """Fisher merging (Matena and Raffel, 2022): each parameter is the average of the models' values weighted by
    their diagonal Fisher information (plus `floor`, so that a parameter no model is sensitive to gets the plain
    mean); buffers get the plain mean."""
    fishers = [diagonal_fisher(m, x) for m, x in zip(models, data, strict=True)]
    state = _mean_state(models)
    states = [m.state_dict() for m in models]
    for name in fishers[0]:
        weights = [f[name].double() + floor for f in fishers]
        total = sum(w * s[name].double() for w, s in zip(weights, states, strict=True))
        state[name] = (total / sum(weights)).to(states[0][name].dtype)
    return state


@DATA_METHODS.register("regmean")
def regmean(models: list[nn.Module], data: list[torch.Tensor], *, alpha: float = 0.9) -> dict[str, torch.Tensor]:
    """RegMean (Jin et al., 2023): per Linear layer, the weights minimizing the summed squared difference between
    the merged layer's and each model's outputs on that model's own inputs, in closed form
    `W = (sum_i G_i)^-1 sum_i G_i W_i` with the Gram matrices' off-diagonal entries scaled by `alpha` (1: the
    exact least-squares merge); every other tensor gets the plain mean."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"regmean: alpha scales the Gram matrices' off-diagonals, from 0 to 1, got {alpha}")
    grams = [input_grams(m, x) for m, x in zip(models, data, strict=True)]
    state = _mean_state(models)
    states = [m.state_dict() for m in models]
    for layer in grams[0]:
        key = f"{layer}.weight" if layer else "weight"  # a model that is one Linear layer has no prefix
        reduced = [alpha * g + (1 - alpha) * torch.diag(torch.diag(g)) for g in (gram[layer] for gram in grams)]
        weights = [s[key].double() for s in states]  # [out, in]
        rhs = sum(g @ w.T for g, w in zip(reduced, weights, strict=True))
        solution = torch.linalg.lstsq(sum(reduced), rhs, driver="gelsd").solution  # rank-deficient inputs too
        state[key] = solution.T.to(states[0][key].dtype)
    return state


@DATA_METHODS.register("adamerging")
def adamerging(
    models: list[nn.Module],
    data: list[torch.Tensor],
    *,
    base: nn.Module | None = None,
    task_specific: Sequence[str] = (),
    steps: int = 500,
    lr: float = 1e-3,
    init: float = 0.3,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Layer-wise AdaMerging (Yang et al., ICLR 2024, "AdaMerging: Adaptive Model Merging for Multi-Task
    Learning"): `theta_l = base_l + sum_k lambda_kl tau_kl`, one coefficient per task k and per tensor l, fitted
    by Adam to minimize the summed entropy of each task's predictions on its own unlabeled inputs (`data[k]`,
    batches of `batch_size`), the coefficients kept in [0, 1].

    Args:
        base: the pretrained model the `models` were fine-tuned from.
        task_specific: name prefixes of the parameters that stay each model's own (its task's head, e.g. "1." in
            `nn.Sequential(body, head)`): task k is scored with the merged shared parameters and its own of these.
            The returned state has the first model's.
        steps, lr, init, batch_size: the paper's 500 Adam steps at 1e-3 from 0.3, batches of 16.
        seed: seed of the batches drawn.
    """
    if base is None:
        raise ConfigError("adamerging merges task vectors: pass base=, the pretrained model")
    if not 0 <= init <= 1 or not lr > 0 or steps < 0 or batch_size < 1:
        raise ConfigError(
            f"adamerging: init is in [0, 1], lr > 0, steps >= 0, batch_size >= 1; got init={init}, lr={lr}, "
            f"steps={steps}, batch_size={batch_size}"
        )
    base_params = dict(base.named_parameters())
    own = [name for name in base_params if name.startswith(tuple(task_specific))]
    shared = [name for name in base_params if name not in own and base_params[name].is_floating_point()]
    vectors = {
        n: torch.stack([dict(m.named_parameters())[n].detach() - base_params[n].detach() for m in models])
        for n in shared
    }  # each [K, ...]
    coefficients = torch.full((len(models), len(shared)), float(init), requires_grad=True)
    optimizer = torch.optim.Adam([coefficients], lr=lr)
    buffers = {k: v for k, v in _mean_state(models).items() if k in dict(base.named_buffers())}
    generator = torch.Generator().manual_seed(seed)

    def merged(weights: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            n: base_params[n].detach() + torch.einsum("k,k...->...", weights[:, i], vectors[n])
            for i, n in enumerate(shared)
        }

    with contextlib.ExitStack() as stack:
        for model in models:
            stack.enter_context(evaluating(model))  # eval mode, restored after; gradients for the coefficients:
        stack.enter_context(torch.enable_grad())
        for _ in range(steps):
            weights = coefficients.clamp(0, 1)
            params = merged(weights)
            loss = 0.0
            for model, X in zip(models, data, strict=True):
                rows = torch.randint(0, len(X), (min(batch_size, len(X)),), generator=generator)
                task_own = {n: p.detach() for n, p in model.named_parameters() if n in own}
                logits = functional_call(model, {**params, **task_own, **buffers}, (X[rows],))
                log_p = torch.log_softmax(logits, dim=-1)
                loss = loss + -(log_p.exp() * log_p).sum(dim=-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        final = merged(coefficients.clamp(0, 1))
    state = {k: v.clone() for k, v in models[0].state_dict().items()}
    state.update({k: v.detach().clone() for k, v in final.items()})
    state.update(buffers)
    return state
