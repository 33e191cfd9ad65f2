"""Merges that keep a little state per task: one shared model, plus for each task what turns it into that task's
model (a mask of one bit per weight and one number), stored in one file and applied when the task is known.

`merge_per_task(models, base=..., method="emr")` returns a `PerTaskMerge`; `.state_dict(task)` gives that task's
weights, `.save(path)` / `PerTaskMerge.load(path)` store and read them. Methods are registered in `TASK_METHODS`.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from .._safetensors import parse_description, read_tensors, write_tensors
from ..errors import CheckpointError, ConfigError, InvalidInputError
from ..registry import Registry
from .compat import check_compatible

__all__ = ["PerTaskMerge", "TASK_METHODS", "merge_per_task", "emr", "tall_masks"]

_KEY = "modelfusion.per_task"
_BASE, _UNIFIED, _MASK = "base.", "unified.", "mask."


@dataclass
class PerTaskMerge:
    """A shared model and, per task, a mask over its task vector and a rescaler.

    Task t's weights are `base + rescalers[t] * masks[t] * unified` for every floating tensor; other tensors
    (integer buffers) are the base's.

    Attributes:
        method: the registered method that made it.
        tasks: the task names, in the order of the models merged.
        base: the pretrained weights.
        unified: the shared task vector, one per floating tensor of `base`.
        masks: per task, a boolean mask per tensor of `unified`.
        rescalers: per task, the factor of its masked task vector.
    """

    method: str
    tasks: tuple[str, ...]
    base: dict[str, torch.Tensor]
    unified: dict[str, torch.Tensor]
    masks: dict[str, dict[str, torch.Tensor]]
    rescalers: dict[str, float]

    def state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """The weights of `task`'s model."""
        if task not in self.masks:
            raise ConfigError(f"no task {task!r} in this merge; its tasks are {', '.join(self.tasks)}")
        state = {}
        for name, weight in self.base.items():
            if name not in self.unified:
                state[name] = weight.clone()
                continue
            mask, scale = self.masks[task][name], self.rescalers[task]
            update = self.unified[name].to(torch.float32) * mask * scale
            state[name] = (weight.to(torch.float32) + update).to(weight.dtype)
        return state

    def module(self, task: str, template: nn.Module) -> nn.Module:
        """A copy of `template` (the architecture, e.g. the base model) with `task`'s weights, in eval mode."""
        model = copy.deepcopy(template)
        model.load_state_dict(self.state_dict(task))
        return model.eval()

    @property
    def task_state_bytes(self) -> int:
        """Bytes stored per task: a packed bit per weight of the task vector and its rescaler (float32)."""
        return sum(math.ceil(t.numel() / 8) for t in self.unified.values()) + 4

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """One safetensors file: the base, the unified task vector, the packed masks; tasks and rescalers in its
        header. Written atomically; an existing file is replaced only with `overwrite`."""
        tensors = {_BASE + k: v for k, v in self.base.items()}
        tensors |= {_UNIFIED + k: v for k, v in self.unified.items()}
        for index, task in enumerate(self.tasks):
            tensors |= {f"{_MASK}{index}.{k}": _pack(m) for k, m in self.masks[task].items()}
        description = {
            "method": self.method,
            "tasks": list(self.tasks),
            "rescalers": [self.rescalers[t] for t in self.tasks],
        }
        return write_tensors(path, tensors, key=_KEY, description=description, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PerTaskMerge:
        """Read a file `save` wrote; anything inconsistent in it is one `CheckpointError` naming the problem."""
        what = "per-task merge file"
        tensors, description = read_tensors(path, key=_KEY, what=what)
        if description is None:
            raise CheckpointError(f"{path}: not a {what} (no {_KEY!r} description in its header)")
        header = parse_description(_Description, description, path, what)
        if len(header.rescalers) != len(header.tasks):
            raise CheckpointError(f"{path}: {len(header.rescalers)} rescalers for {len(header.tasks)} tasks")
        base = {k[len(_BASE) :]: v for k, v in tensors.items() if k.startswith(_BASE)}
        unified = {k[len(_UNIFIED) :]: v for k, v in tensors.items() if k.startswith(_UNIFIED)}
        packed = {k: v for k, v in tensors.items() if k.startswith(_MASK)}
        stray = set(tensors) - {_BASE + k for k in base} - {_UNIFIED + k for k in unified} - set(packed)
        if stray:
            raise CheckpointError(f"{path}: tensors {sorted(stray)[:3]} belong to no part of a per-task merge")
        for name, vector in unified.items():
            if name not in base or base[name].shape != vector.shape or not vector.is_floating_point():
                raise CheckpointError(f"{path}: the unified task vector {name!r} does not match a base tensor")
        masks = {}
        for index, task in enumerate(header.tasks):
            masks[task] = {}
            for name, vector in unified.items():
                bits = packed.pop(f"{_MASK}{index}.{name}", None)
                if bits is None or bits.dtype != torch.uint8 or bits.shape != (math.ceil(vector.numel() / 8),):
                    raise CheckpointError(f"{path}: task {task!r} has no valid mask for {name!r}")
                masks[task][name] = _unpack(bits, vector.shape)
        if packed:
            raise CheckpointError(f"{path}: masks {sorted(packed)[:3]} belong to no task or tensor")
        rescalers = dict(zip(header.tasks, header.rescalers, strict=True))
        return cls(header.method, tuple(header.tasks), base, unified, masks, rescalers)


class _Description(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Annotated[str, Field(max_length=64)]
    tasks: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=10_000)
    rescalers: list[float]

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, tasks: list[str]) -> list[str]:
        if len(set(tasks)) != len(tasks):
            raise ValueError("task names repeat")
        return tasks

    @field_validator("rescalers")
    @classmethod
    def _finite(cls, rescalers: list[float]) -> list[float]:
        if not all(math.isfinite(r) for r in rescalers):
            raise ValueError("rescalers must be finite numbers")
        return rescalers


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, eight entries per byte, the first in the highest bit."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-len(flat) % 8)]).reshape(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (flat * weights).sum(dim=1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    bits = (packed[:, None] >> shifts) & 1
    return bits.reshape(-1)[: math.prod(shape)].reshape(shape).bool()


TaskMethod = Callable[..., PerTaskMerge]
TASK_METHODS: Registry[TaskMethod] = Registry("per-task merge method")


def merge_per_task(
    models: Sequence[Mapping[str, torch.Tensor] | nn.Module],
    *,
    base: Mapping[str, torch.Tensor] | nn.Module,
    method: str = "emr",
    tasks: Sequence[str] | None = None,
    **params,
) -> PerTaskMerge:
    """Merge fine-tunes of `base` into a shared model with per-task state (`TASK_METHODS`).

    Args:
        models: the K fine-tunes (state dicts or modules), one per task.
        base: the pretrained model they were fine-tuned from.
        method: a name from `TASK_METHODS` ("emr").
        tasks: the task names (default "0", "1", ...).
        params: the method's settings (`tall_masks`: `lambda_`, one for all tasks or one per task, and `scale`).

    Example:
        >>> merged = merge_per_task([ft_a, ft_b], base=pretrained, tasks=["a", "b"])
        >>> model_a = merged.module("a", pretrained)
    """
    function = TASK_METHODS[method]
    states = [m.state_dict() if isinstance(m, nn.Module) else dict(m) for m in models]
    base_state = base.state_dict() if isinstance(base, nn.Module) else dict(base)
    if not states:
        raise InvalidInputError("merge_per_task needs at least one model")
    names = tuple(tasks) if tasks is not None else tuple(str(i) for i in range(len(states)))
    if len(names) != len(states) or len(set(names)) != len(names):
        raise ConfigError(f"give {len(states)} distinct task names, one per model; got {list(names)}")
    labelled = {"base": base_state} | {f"model {i}": s for i, s in enumerate(states)}
    check_compatible({k: {n: (tuple(t.shape), str(t.dtype)) for n, t in s.items()} for k, s in labelled.items()})
    with torch.no_grad():
        return function(states, base_state, names, **params)


@TASK_METHODS.register("emr")
def emr(states: list[dict], base: dict, tasks: tuple[str, ...]) -> PerTaskMerge:
    """EMR-merging (Huang et al., NeurIPS 2024, "EMR-Merging: Tuning-Free High-Performance Model Merging"):
    Elect a unified task vector (per entry, the sign of the mean task vector and the largest magnitude among the
    task vectors that agree with it), then per task a Mask (the entries where its task vector agrees with the
    unified one) and a Rescaler (the mean magnitude of its task vector over that of its masked unified vector,
    summed over tensors), so that each task's model is `base + rescaler * mask * unified`. No data, no tuning."""
    unified, masks = {}, {t: {} for t in tasks}
    own, kept = torch.zeros(len(tasks), dtype=torch.float64), torch.zeros(len(tasks), dtype=torch.float64)
    for name, weight in base.items():
        if not weight.is_floating_point():
            continue
        vectors = torch.stack([s[name].to(torch.float32) - weight.to(torch.float32) for s in states])  # [K, ...]
        sign = torch.where(vectors.mean(0) > 0, 1.0, -1.0)
        agree = vectors * sign > 0
        vector = sign * (vectors.abs() * agree).amax(0)
        unified[name] = vector
        for index, task in enumerate(tasks):
            masks[task][name] = agree[index]
            if vector.numel():  # the paper sums per-tensor means
                own[index] += vectors[index].abs().mean().double()
                kept[index] += (vector * agree[index]).abs().mean().double()
    rescalers = {t: float(own[i] / kept[i]) if kept[i] > 0 else 1.0 for i, t in enumerate(tasks)}
    return PerTaskMerge("emr", tasks, {k: v.clone() for k, v in base.items()}, unified, masks, rescalers)


@TASK_METHODS.register("tall_masks")
def tall_masks(
    states: list[dict],
    base: dict,
    tasks: tuple[str, ...],
    *,
    lambda_: float | Sequence[float] = 0.4,
    scale: float = 1.0,
) -> PerTaskMerge:
    """TALL masks (Wang et al., ICML 2024, "Localizing Task Information for Improved Model Merging and
    Compression"): the multi-task vector `T = sum_i tau_i` is shared; task t keeps the entries where its own task
    vector outweighs the others', `|tau_t| >= lambda_t |T - tau_t|`, so that its model is
    `base + scale * mask_t * T`. `lambda_` (one for all tasks, or one per task, chosen on each task's validation
    data in the paper) trades the task's own information against the others'."""
    lambdas = [float(lambda_)] * len(tasks) if isinstance(lambda_, int | float) else [float(v) for v in lambda_]
    if len(lambdas) != len(tasks) or not all(math.isfinite(v) and v >= 0 for v in lambdas):
        raise ConfigError(
            f"tall_masks: lambda_ is one number of at least 0, or one per task ({len(tasks)}); got {lambda_}"
        )
    if not math.isfinite(scale):
        raise ConfigError(f"tall_masks: scale must be a finite number, got {scale}")
    unified, masks = {}, {t: {} for t in tasks}
    for name, weight in base.items():
        if not weight.is_floating_point():
            continue
        vectors = torch.stack([s[name].to(torch.float32) - weight.to(torch.float32) for s in states])  # [K, ...]
        total = vectors.sum(0)
        unified[name] = total * scale
        for index, task in enumerate(tasks):
            masks[task][name] = vectors[index].abs() >= lambdas[index] * (total - vectors[index]).abs()
    rescalers = dict.fromkeys(tasks, 1.0)
    return PerTaskMerge("tall_masks", tasks, {k: v.clone() for k, v in base.items()}, unified, masks, rescalers)
