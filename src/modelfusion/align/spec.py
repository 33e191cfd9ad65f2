"""Permutation specs: which weight axes share one permutation of hidden units.

A network's hidden units can be reordered without changing its function, as long as every axis that indexes
the same units is reordered the same way: a layer's output rows, its bias, the next layer's input columns,
normalization parameters and statistics, and everything a residual addition ties together. A
`PermutationSpec` lists those axes per group of units; `derive_spec` (in `derive.py`) finds them by tracing the
model with torch.fx, and a hand-written spec (a small dict/JSON, `PermutationSpec.from_dict`) can always be given
instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, InvalidInputError

__all__ = ["Segment", "PermutationSpec", "Axis", "permute", "random_permutations", "axis_index"]


@dataclass(frozen=True)
class Segment:
    """`size` units of `group` (None: units that are never permuted) along part of an axis, each unit
    spanning `inner` consecutive entries (a flatten after a conv: one channel's positions)."""

    group: str | None
    size: int
    inner: int = 1

    @property
    def length(self) -> int:
        return self.size * self.inner


Axis = tuple[Segment, ...] | None  # None: the axis is not permuted


@dataclass
class PermutationSpec:
    """Groups of units (name -> count) and, per parameter or buffer, what permutes each of its axes.

    `taps` (optional) names, per group, the torch.fx nodes whose outputs carry that group's units along
    dim 1; activation matching and REPAIR read activations there.
    """

    groups: dict[str, int]
    axes: dict[str, tuple[Axis, ...]]
    taps: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: Mapping) -> PermutationSpec:
        """Read a hand-written spec::

            {"groups": {"h1": 32},
             "axes": {"0.weight": ["h1", null], "0.bias": ["h1"], "2.weight": [null, "h1"]}}

        An axis entry is null, a group name, `{"group": g, "inner": n}` (a flatten after a conv), or a list
        of those for a concatenation.
        """
        unknown = set(spec) - {"groups", "axes", "taps"}
        if unknown:
            raise ConfigError(f"unknown permutation spec keys {sorted(unknown)}; expected groups, axes, taps")
        groups = {str(k): int(v) for k, v in dict(spec.get("groups", {})).items()}

        def segment(entry, where: str) -> Segment:
            name, inner = (entry, 1) if isinstance(entry, str) else (entry.get("group"), int(entry.get("inner", 1)))
            if name not in groups:
                raise ConfigError(f"spec axis {where} names group {name!r}, which is not in groups {sorted(groups)}")
            return Segment(name, groups[name], inner)

        axes = {}
        for param, entries in dict(spec.get("axes", {})).items():
            parsed = []
            for i, entry in enumerate(entries):
                where = f"{param}[{i}]"
                if entry is None:
                    parsed.append(None)
                else:
                    parts = entry if isinstance(entry, list) else [entry]
                    parsed.append(tuple(segment(part, where) for part in parts))
            axes[param] = tuple(parsed)
        return cls(groups, axes, {k: list(v) for k, v in dict(spec.get("taps", {})).items()})

    def to_dict(self) -> dict:
        def entry(axis: Axis):
            if axis is None:
                return None
            parts = [s.group if s.inner == 1 else {"group": s.group, "inner": s.inner} for s in axis]
            return parts[0] if len(parts) == 1 else parts

        return {
            "groups": dict(self.groups),
            "axes": {name: [entry(a) for a in axes] for name, axes in self.axes.items()},
            "taps": {k: list(v) for k, v in self.taps.items()},
        }

    def check(self, state: Mapping[str, torch.Tensor]) -> None:
        """Every named tensor exists and every permuted axis has the spec's length."""
        for name, axes in self.axes.items():
            if name not in state:
                raise InvalidInputError(f"the permutation spec names {name!r}, which the model does not have")
            tensor = state[name]
            if len(axes) > tensor.ndim:
                raise InvalidInputError(f"the spec gives {name} {len(axes)} axes but it has {tensor.ndim}")
            for dim, axis in enumerate(axes):
                if axis is not None and sum(s.length for s in axis) != tensor.shape[dim]:
                    raise InvalidInputError(
                        f"the spec permutes axis {dim} of {name} as {sum(s.length for s in axis)} entries, "
                        f"but it has {tensor.shape[dim]}"
                    )

    def axes_of(self, group: str) -> list[tuple[str, int]]:
        """(tensor name, axis) pairs that `group` permutes."""
        return [
            (name, dim)
            for name, axes in self.axes.items()
            for dim, axis in enumerate(axes)
            if axis is not None and any(s.group == group for s in axis)
        ]


def axis_index(axis: tuple[Segment, ...], perms: Mapping[str, torch.Tensor], skip: str | None = None) -> torch.Tensor:
    """The gather index that permutes one axis: unit u of a segment takes entries `perm[u] * inner + l`;
    the group `skip` (and unpermuted segments) keep their order."""
    parts, offset = [], 0
    for seg in axis:
        if seg.group is None or seg.group == skip or seg.group not in perms:
            order = torch.arange(seg.size)
        else:
            order = perms[seg.group]
        index = order[:, None] * seg.inner + torch.arange(seg.inner)[None, :]
        parts.append(index.reshape(-1) + offset)
        offset += seg.length
    return torch.cat(parts)


def permute(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A new state dict with every unit group reordered: new unit i of group g is old unit `perms[g][i]`.

    Tensors the spec does not name are shared, not copied; `state` is not modified.
    """
    out = dict(state)
    for name, axes in spec.axes.items():
        tensor = state[name]
        for dim, axis in enumerate(axes):
            if axis is not None:
                tensor = tensor.index_select(dim, axis_index(axis, perms))
        out[name] = tensor
    return out


def random_permutations(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=generator) for g, n in spec.groups.items()}
