"""A plain, seeded training loop for the small torch members of the demo, tests and benchmarks."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_count, check_number, check_seed
from ._modules import has_batchnorm
from .datasets import Split
from .errors import TrainingDivergedError

__all__ = ["train_model", "score_classifier"]


def train_model(
    model: nn.Module,
    train: Split,
    val: Split,
    *,
    task: str = "classification",
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    cosine: bool = False,
    param_groups: list[dict] | None = None,
    frozen: Sequence[nn.Module] = (),
) -> nn.Module:
    """Train `model` in place with AdamW (constant rate, or a cosine schedule over all steps with `cosine`)
    and return it with the weights of its best validation epoch.

    `param_groups` (AdamW's groups, each with its own `lr`) restricts training to those parameters; the
    `frozen` modules stay in eval mode while the rest trains, so their BatchNorm statistics do not move.

    The validation split only chooses the epoch (early stopping); the test split is never seen. A loss that
    becomes NaN or infinite stops training with a `TrainingDivergedError` naming the epoch.
    The same seed gives the same weights: batch order comes from a seeded generator, and dropout draws from
    the global generator reseeded inside `fork_rng`, so the caller's random state is left as it was.
    """
    check_seed(seed)
    check_count(epochs, "epochs")
    check_count(batch_size, "batch_size")
    check_number(lr, "lr", low=0.0, open_low=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        groups = param_groups if param_groups is not None else [{"params": list(model.parameters())}]
        return _train(model, train, val, task, epochs, lr, weight_decay, batch_size, seed, cosine, groups, frozen)


def _train(model, train, val, task, epochs, lr, weight_decay, batch_size, seed, cosine, groups, frozen) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(train) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if cosine else None
    best_loss, best_state = float("inf"), copy.deepcopy(model.state_dict())
    n = len(train)
    for epoch in range(1, epochs + 1):
        model.train()
        for module in frozen:
            module.eval()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2 and has_batchnorm(model):
                continue  # BatchNorm cannot train on a batch of one
            optimizer.zero_grad()
            out = model(train.X[idx])
            loss = loss_fn(out.squeeze(-1) if task == "regression" else out, train.y[idx])
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch}: the loss became {loss.item()}; lower the learning "
                    f"rate (now {lr:g}) or check the data for extreme values"
                )
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        model.eval()
        with torch.no_grad():
            out = model(val.X)
            val_loss = loss_fn(out.squeeze(-1) if task == "regression" else out, val.y).item()
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return model


def score_classifier(model: nn.Module, split: Split) -> dict[str, float]:
    """Cross-entropy ("loss") and accuracy of a classifier on a whole split, in eval mode without gradients
    (the model is left in eval mode)."""
    model.eval()
    with torch.no_grad():
        logits = model(split.X)
    return {
        "loss": nn.functional.cross_entropy(logits, split.y).item(),
        "accuracy": (logits.argmax(1) == split.y).float().mean().item(),
    }
