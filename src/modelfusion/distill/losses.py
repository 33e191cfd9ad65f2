"""Distillation losses. Each returns a dict of named parts (`total`, `task`, `kd`, `feature`) for logging."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_number
from .._modules import named_module
from ..errors import ConfigError, InvalidInputError
from ..registry import Registry

__all__ = ["LOSSES", "hinton_kd", "logit_mse", "FeatureHints", "resolve_loss_params"]

LOSSES: Registry = Registry("distillation loss")


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise InvalidInputError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )


def _task_loss(student_logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    return None if labels is None else F.cross_entropy(student_logits, labels)


def _mix(kd: torch.Tensor, task: torch.Tensor | None, alpha: float) -> dict[str, torch.Tensor]:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if task is None:
        if alpha != 1.0:
            raise InvalidInputError(f"alpha={alpha} mixes in the label loss, but no labels were given")
        return {"total": kd, "kd": kd}
    return {"total": alpha * kd + (1 - alpha) * task, "kd": kd, "task": task}


@LOSSES.register("hinton")
def hinton_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Hinton, Vinyals and Dean (2015): `alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`.

    The T^2 factor keeps the soft term's gradients on the scale of the hard term's as T changes. The KL is
    averaged over the batch (PyTorch's `reduction="batchmean"`, the mathematically correct mean).
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    _check_logits(student_logits, teacher_logits)
    kd = (
        F.kl_div(
            F.log_softmax(student_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )
    return _mix(kd, _task_loss(student_logits, labels), alpha)


@LOSSES.register("mse")
def logit_mse(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    alpha: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Mean squared error between student and teacher logits (Ba and Caruana, 2014), optionally mixed with
    the label loss. Teacher logits are centred per sample first: logits are defined up to a constant."""
    _check_logits(student_logits, teacher_logits)
    centred_student = student_logits - student_logits.mean(dim=-1, keepdim=True)
    centred_teacher = teacher_logits - teacher_logits.mean(dim=-1, keepdim=True)
    kd = F.mse_loss(centred_student, centred_teacher)
    return _mix(kd, _task_loss(student_logits, labels), alpha)


def resolve_loss_params(loss: str, params: Mapping | None = None) -> dict[str, float]:
    """Every parameter of the loss registered as `loss`, from `params` or its default; a parameter the loss
    does not take, or one that is not a finite number, is refused with what it does take."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(LOSSES[loss]).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    params = dict(params or {})
    unknown = sorted(str(k) for k in params if k not in defaults)
    if unknown:
        takes = ", ".join(defaults) or "no parameters"
        raise ConfigError(f"distillation loss {loss!r} takes no parameter {', '.join(unknown)}; it takes {takes}")
    for key, value in params.items():
        check_number(value, f"loss parameter {key!r}")
    return {**defaults, **params}


class FeatureHints(nn.Module):
    """FitNets-style hint losses (Romero et al., 2015): match student features to teacher features.

    Features are captured by forward hooks on named modules, so neither model's code changes. A learned
    adapter (a linear layer, or a 1x1 convolution for feature maps) maps each student feature to its
    teacher feature's width; adapter widths come from one dry forward pass on `example_input`.

    Args:
        student, teacher: the two models.
        pairs: student module name -> teacher module name.
        example_input: a small batch both models accept.

    Call `loss()` after a forward pass of both models: the mean of the pairs' MSEs.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module, pairs: Mapping[str, str], example_input: torch.Tensor
    ) -> None:
        super().__init__()
        if not pairs:
            raise ConfigError("feature hints need at least one (student module, teacher module) pair")
        self.pairs = dict(pairs)
        self._features: dict[str, torch.Tensor] = {}
        self._hooks = []
        for student_name, teacher_name in self.pairs.items():
            self._hook(named_module(student, student_name, "the student"), f"student:{student_name}")
            self._hook(named_module(teacher, teacher_name, "the teacher"), f"teacher:{teacher_name}")
        was_training = (student.training, teacher.training)
        student.eval(), teacher.eval()
        with torch.no_grad():
            student(example_input), teacher(example_input)
        student.train(was_training[0]), teacher.train(was_training[1])
        self.adapters = nn.ModuleDict()
        for student_name, teacher_name in self.pairs.items():
            s, t = self._features[f"student:{student_name}"], self._features[f"teacher:{teacher_name}"]
            if s.ndim != t.ndim or s.shape[2:] != t.shape[2:]:
                raise InvalidInputError(
                    f"feature shapes differ beyond the channel axis: student {student_name} {tuple(s.shape)} vs "
                    f"teacher {teacher_name} {tuple(t.shape)}; pick layers with the same spatial size"
                )
            key = student_name.replace(".", "/")
            if s.ndim == 2:
                self.adapters[key] = nn.Linear(s.shape[1], t.shape[1])
            else:
                conv = {3: nn.Conv1d, 4: nn.Conv2d}.get(s.ndim)
                if conv is None:
                    raise InvalidInputError(f"feature {student_name} has {s.ndim} dims; expected 2, 3 or 4")
                self.adapters[key] = conv(s.shape[1], t.shape[1], kernel_size=1)
        self._features.clear()

    def _hook(self, module: nn.Module, key: str) -> None:
        def capture(_module, _inputs, output):
            self._features[key] = output

        self._hooks.append(module.register_forward_hook(capture))

    def loss(self) -> torch.Tensor:
        parts = []
        for student_name, teacher_name in self.pairs.items():
            try:
                s = self._features[f"student:{student_name}"]
                t = self._features[f"teacher:{teacher_name}"]
            except KeyError:
                raise InvalidInputError("run both models forward before asking for the feature loss") from None
            parts.append(F.mse_loss(self.adapters[student_name.replace(".", "/")](s), t.detach()))
        return torch.stack(parts).mean()

    def remove(self) -> None:
        """Remove the hooks (the models stop recording features)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
