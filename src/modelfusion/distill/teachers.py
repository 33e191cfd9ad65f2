"""Teachers: where the soft targets come from. Live models (one, several, or a fitted combiner's fusion) or
offline logits from a saved `Predictions` of the training split (no teacher forward pass while training)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .._modules import evaluating
from ..datasets import Split
from ..ensemble import Combiner, EnsembleModule
from ..errors import ConfigError, IncompatibleModelsError, InvalidInputError
from ..members import TorchMember
from ..predictions import Predictions

__all__ = ["Teacher", "ModelTeacher", "OfflineTeacher", "build_teacher"]


class Teacher:
    """Soft targets for a batch: `logits(X, index)` with `index` the batch's positions in the training split.

    `augmentable` says whether the teacher can follow augmented inputs (a live model can; a table of logits
    computed on the original inputs cannot).
    """

    augmentable: bool = True

    def logits(self, X: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def check(self, train: Split) -> None:
        """Raise a clear error if this teacher cannot label `train` (a live model can label anything)."""


def _check_weights(weights: Sequence[float] | None, count: int) -> torch.Tensor | None:
    if weights is None:
        return None
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if (
        weights.shape != (count,)
        or not bool(torch.isfinite(weights).all())
        or (weights < 0).any()
        or weights.sum() <= 0
    ):
        raise ConfigError(f"teacher weights must be {count} finite non-negative numbers with a positive sum")
    return weights / weights.sum()


def _weighted_log_mean(logits: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """log of the (weighted) mean of the members' probabilities: `[K, N, C]` -> `[N, C]`."""
    log_probs = torch.log_softmax(logits, dim=-1)
    if weights is None:
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(logits))))
    return torch.logsumexp(log_probs + torch.log(weights.to(log_probs.dtype))[:, None, None], dim=0)


class ModelTeacher(Teacher):
    """One model, or several fused by the mean of their probabilities (optionally weighted) or by a fitted
    combiner from `modelfusion.ensemble`. Runs in eval mode without gradients."""

    def __init__(
        self,
        models: nn.Module | Sequence[nn.Module | TorchMember],
        *,
        weights: Sequence[float] | None = None,
        combiner: Combiner | None = None,
    ) -> None:
        models = [models] if isinstance(models, nn.Module) else list(models)
        if not models:
            raise InvalidInputError("a teacher needs at least one model")
        if combiner is not None and weights is not None:
            raise ConfigError("give the teacher either weights or a fitted combiner, not both")
        modules = [m.module if isinstance(m, TorchMember) else m for m in models]
        strangers = [type(m).__name__ for m in modules if not isinstance(m, nn.Module)]
        if strangers:
            raise InvalidInputError(
                f"live teachers must be torch models, got {strangers}; for scikit-learn teachers, save their "
                "predictions on the training split and use an OfflineTeacher"
            )
        self.ensemble = EnsembleModule(models, combiner) if combiner is not None else None
        self.models = nn.ModuleList(modules)
        self.weights = _check_weights(weights, len(modules))

    def logits(self, X: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The teachers' (fused) logits, in eval mode without gradients; their modes are left as found."""
        try:
            with evaluating(self.ensemble if self.ensemble is not None else self.models):
                return self._logits(X)
        except (RuntimeError, ValueError, IndexError) as err:
            reason = " ".join(str(err).split())[:240]
            raise IncompatibleModelsError(
                f"the teachers cannot run on inputs of shape {list(X.shape)} ({reason}); were they trained on "
                "this dataset?"
            ) from None

    def _logits(self, X: torch.Tensor) -> torch.Tensor:
        if self.ensemble is not None:
            return self.ensemble(X)
        outputs = torch.stack([m(X) for m in self.models])
        if len(outputs) == 1 and self.weights is None:
            return outputs[0]
        return _weighted_log_mean(outputs, self.weights)


class OfflineTeacher(Teacher):
    """Teacher logits read from a saved `Predictions` of the training split, fused once.

    No teacher runs during training, which makes epochs as cheap as the student's forward pass; the price is
    that the targets belong to the original inputs, so this teacher cannot be combined with data augmentation.
    """

    augmentable = False

    def __init__(
        self,
        predictions: Predictions | str | os.PathLike,
        *,
        weights: Sequence[float] | None = None,
        combiner: Combiner | None = None,
    ) -> None:
        if not isinstance(predictions, Predictions):
            predictions = Predictions.load(predictions)
        if predictions.task != "classification":
            raise InvalidInputError("offline distillation needs classification predictions (logits)")
        if combiner is not None:
            if weights is not None:
                raise ConfigError("give the teacher either weights or a fitted combiner, not both")
            fused = combiner.fuse(predictions).double()
            self.table = torch.log(fused.clamp_min(torch.finfo(torch.float64).tiny)).float()
        elif predictions.num_members == 1 and weights is None:
            self.table = predictions.outputs[0]
        else:
            weights = _check_weights(weights, predictions.num_members)
            self.table = _weighted_log_mean(predictions.outputs.double(), weights).float()
        self.split = predictions.split
        self.labels = predictions.labels

    def check(self, train: Split) -> None:
        if len(self.table) != len(train):
            raise InvalidInputError(
                f"the offline teacher has logits for {len(self.table)} samples but the training split has "
                f"{len(train)}; save the teachers' predictions on the same training split (dataset and seed)"
            )
        if self.labels is not None and not torch.equal(self.labels.long(), train.y.long()):
            raise InvalidInputError(
                "the offline teacher's labels differ from the training split's: its predictions were made on "
                "another split, seed or sample order; save them on the training split being distilled on"
            )

    def logits(self, X: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if index is None:
            raise InvalidInputError("an offline teacher needs the batch's sample indices in the training split")
        if len(X) != len(index):
            raise InvalidInputError(f"got {len(index)} indices for a batch of {len(X)}")
        return self.table[index]


def build_teacher(
    models: Sequence[str | os.PathLike | nn.Module | TorchMember] | None = None,
    *,
    offline: Predictions | str | os.PathLike | None = None,
    weights: Sequence[float] | None = None,
    combiner: Combiner | str | os.PathLike | None = None,
    note: Callable[[str], None] | None = None,
) -> Teacher:
    """The teacher a user names: live `models` (checkpoint files, members or modules; one or an ensemble) or
    `offline` predictions of the training split, fused by the mean of probabilities (`weights`) or by a fitted
    `combiner` (a `Combiner` or its file). Teachers whose stored names collide are named after their files
    (`note` is told which), so that a combiner finds its members.
    """
    from ..ensemble import load_combiner
    from ..io import load_member, load_members

    if bool(models) == (offline is not None):
        raise ConfigError(
            "give the teachers as models (--teacher checkpoints) or as offline predictions, one of the two"
        )
    if combiner is not None and not isinstance(combiner, Combiner):
        combiner = load_combiner(combiner)
    if offline is not None:
        return OfflineTeacher(offline, weights=weights, combiner=combiner)
    if all(isinstance(m, str | os.PathLike) for m in models):
        loaded = load_members([Path(m) for m in models], note=note)
    else:
        loaded = [load_member(Path(m)) if isinstance(m, str | os.PathLike) else m for m in models]
    return ModelTeacher(loaded, weights=weights, combiner=combiner)
