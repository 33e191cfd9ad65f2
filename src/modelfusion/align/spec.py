"""Permutation specs: which weight axes share one permutation of hidden units.

A network's hidden units can be reordered without changing its function, as long as every axis that indexes
the same units is reordered the same way: a layer's output rows, its bias, the next layer's input columns,
normalization parameters and statistics, and everything a residual addition ties together. A
`PermutationSpec` lists those axes per group of units; `derive_spec` finds them by tracing the model with
torch.fx, and a hand-written spec (a small dict/JSON, `PermutationSpec.from_dict`) can always be given instead.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ConfigError, InvalidInputError

__all__ = ["Segment", "PermutationSpec", "derive_spec", "permute", "random_permutations", "axis_index"]


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


# -- deriving a spec from the graph -----------------------------------------------------------------------------

_CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    torch.relu,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.elu,
    torch.tanh,
    torch.sigmoid,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
}
_CHANNELWISE_METHODS = {"relu", "tanh", "sigmoid", "contiguous", "clone"}
_ELEMENTWISE = {operator.add, operator.iadd, operator.mul, operator.sub, torch.add, torch.mul, torch.sub}


class _Groups:
    """Union-find over unit groups; group 0 is 'fixed' (the input's and the output's units)."""

    def __init__(self) -> None:
        self.parent = [0]
        self.size = [0]
        self.origin = ["fixed"]

    def new(self, size: int, origin: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            low, high = min(a, b), max(a, b)  # the earlier group (or 'fixed') names the union
            self.parent[high] = low


_Seg = tuple[int, int, int]  # (group id, size, inner)


def derive_spec(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """The permutation spec of `model`, derived from its torch.fx graph and one example batch.

    Handles Linear and (ungrouped) Conv layers, BatchNorm and LayerNorm over channels, channel-wise
    activations, pooling and dropout, flatten after a conv (one channel permutation repeated over its
    positions), residual additions and other element-wise ops between tensors (which tie their groups), and
    concatenation along channels. The input's and the output's units are never permuted. Any other op is a
    clear error naming the op and the node: pass a hand-written spec for such models.
    """
    try:
        graph_module = torch.fx.symbolic_trace(model)
    except Exception as err:  # fx raises several types for untraceable Python
        raise ConfigError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); pass a hand-written "
            "spec (PermutationSpec.from_dict)"
        ) from None
    was_training = model.training
    graph_module.eval()
    with torch.no_grad():
        ShapeProp(graph_module).propagate(example_input[:2])
    model.train(was_training)
    modules = dict(graph_module.named_modules())
    groups = _Groups()
    state: dict[torch.fx.Node, list[_Seg]] = {}
    raw_axes: dict[str, list[list[_Seg] | None]] = {}
    taps: dict[int, list[str]] = {}

    def shape(node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def unsupported(node, what: str) -> ConfigError:
        return ConfigError(
            f"cannot derive a permutation spec: {what} at node {node.name!r} ({node.format_node()}) is not supported; "
            "pass a hand-written spec (PermutationSpec.from_dict)"
        )

    def plain(segs: list[_Seg], node, what: str) -> list[_Seg]:
        if any(inner != 1 for _, _, inner in segs):
            raise unsupported(node, f"{what} on flattened channels")
        return segs

    def reshaped(segs: list[_Seg], in_shape, out_shape, node) -> list[_Seg]:
        if all(groups.find(g) == 0 for g, _, _ in segs):  # unpermuted units may be reshaped at will
            return [(0, out_shape[1], 1)]
        return _flattened(segs, in_shape, out_shape, node, unsupported)

    def tensor_args(node) -> list[torch.fx.Node]:
        return [a for a in _flatten_args((node.args, node.kwargs)) if a in state]

    def tie(node, inputs: list[torch.fx.Node]) -> list[_Seg]:
        first = state[inputs[0]]
        for other in inputs[1:]:
            segs = state[other]
            if [(s, i) for _, s, i in segs] != [(s, i) for _, s, i in first]:
                # different splits of the same axis: tie everything to 'fixed' only when sizes still agree
                if sum(s * i for _, s, i in segs) != sum(s * i for _, s, i in first):
                    raise unsupported(node, "an element-wise op between tensors of different channel sizes")
                for g, _, _ in segs + first:
                    groups.union(g, 0)
                continue
            for (a, _, _), (b, _, _) in zip(first, segs, strict=True):
                groups.union(a, b)
        return first

    for node in graph_module.graph.nodes:
        node_shape = shape(node)
        if node.op == "placeholder":
            if node_shape is None or len(node_shape) < 2:
                raise unsupported(node, "an input that is not a batch of at least 2 dims")
            state[node] = [(0, node_shape[1], 1)]
        elif node.op == "get_attr":
            raise unsupported(node, "a parameter used directly in forward (get_attr)")
        elif node.op == "output":
            for arg in _flatten_args(node.args):
                for g, _, _ in state.get(arg, []):
                    groups.union(g, 0)
        elif node.op == "call_module":
            module = modules[node.target]
            (arg,) = [a for a in node.args if isinstance(a, torch.fx.Node)][:1] or [None]
            if arg is None or arg not in state:
                raise unsupported(node, f"module {type(module).__name__} without a tensor input")
            incoming = state[arg]
            prefix = f"{node.target}."
            if isinstance(module, nn.Linear):
                if node_shape is None or len(node_shape) != 2:
                    raise unsupported(node, "a Linear layer on a tensor that is not [N, features]")
                out = groups.new(module.out_features, node.target)
                raw_axes[prefix + "weight"] = [[(out, module.out_features, 1)], incoming]
                if module.bias is not None:
                    raw_axes[prefix + "bias"] = [[(out, module.out_features, 1)]]
                state[node] = [(out, module.out_features, 1)]
                taps.setdefault(out, []).append(node.name)
            elif isinstance(module, nn.modules.conv._ConvNd):
                if module.groups != 1:
                    raise unsupported(node, f"a grouped convolution (groups={module.groups})")
                out = groups.new(module.out_channels, node.target)
                dims = module.weight.ndim - 2
                raw_axes[prefix + "weight"] = [[(out, module.out_channels, 1)], plain(incoming, node, "a conv")] + [
                    None
                ] * dims
                if module.bias is not None:
                    raw_axes[prefix + "bias"] = [[(out, module.out_channels, 1)]]
                state[node] = [(out, module.out_channels, 1)]
                taps.setdefault(out, []).append(node.name)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) or (
                isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1 and len(node_shape) == 2
            ):
                segs = plain(incoming, node, type(module).__name__)
                for name, tensor in list(module.named_parameters(recurse=False)) + list(
                    module.named_buffers(recurse=False)
                ):
                    if tensor is not None and tensor.ndim == 1:
                        raw_axes[prefix + name] = [segs]
                state[node] = segs
                taps.setdefault(_single(segs), []).append(node.name)
            elif isinstance(module, nn.LayerNorm):
                raise unsupported(node, "a LayerNorm over more than the channel axis")
            elif isinstance(module, _CHANNELWISE_MODULES):
                state[node] = incoming
                taps.setdefault(_single(incoming), []).append(node.name)
            elif isinstance(module, (nn.Flatten, nn.Unflatten)):
                state[node] = reshaped(incoming, shape(arg), node_shape, node)
            elif any(True for _ in module.parameters(recurse=False)):
                raise unsupported(node, f"module {type(module).__name__} with its own parameters")
            else:
                raise unsupported(node, f"module {type(module).__name__}")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            inputs = tensor_args(node)
            if node_shape is None:  # sizes, shapes and other non-tensor values carry no units
                continue
            if not inputs:
                raise unsupported(node, f"{_op_name(target)} creating a new tensor")
            if target in _ELEMENTWISE or target in ("add", "add_", "mul", "mul_", "sub"):
                state[node] = tie(node, inputs) if len(inputs) > 1 else state[inputs[0]]
            elif target in _CHANNELWISE_FUNCTIONS or target in _CHANNELWISE_METHODS:
                state[node] = state[inputs[0]]
                taps.setdefault(_single(state[node]), []).append(node.name)
            elif target in (torch.flatten, torch.reshape, "flatten", "view", "reshape"):
                state[node] = reshaped(state[inputs[0]], shape(inputs[0]), node_shape, node)
            elif target is torch.cat:
                dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
                if dim not in (1, -len(node_shape) + 1):
                    raise unsupported(node, f"concatenation along dim {dim}")
                state[node] = [seg for part in node.args[0] for seg in state[part]]
            elif target in (torch.mean, "mean", torch.amax, "amax", torch.sum, "sum"):
                dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
                dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
                if not dims or any(d % len(shape(inputs[0])) in (0, 1) for d in dims) or len(node_shape) < 2:
                    raise unsupported(node, f"{_op_name(target)} over the batch or channel axis")
                state[node] = state[inputs[0]]
            else:
                raise unsupported(node, _op_name(target))
        else:
            raise unsupported(node, node.op)

    return _finish(groups, raw_axes, taps, model)


def _flatten_args(args) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg(args, lambda n: found.append(n) or n)
    return found


def _single(segs: list[_Seg]) -> int:
    """The group of a tensor made of one plain segment (else 0, i.e. no tap)."""
    return segs[0][0] if len(segs) == 1 and segs[0][2] == 1 else 0


def _flattened(segs, in_shape, out_shape, node, unsupported) -> list[_Seg]:
    """Channels after flattening `[N, C, *positions]` to `[N, C * positions]`."""
    if in_shape is None or out_shape is None:
        raise unsupported(node, "a reshape of unknown shape")
    if tuple(out_shape) == tuple(in_shape):
        return segs
    if len(out_shape) != 2 or out_shape[0] != in_shape[0] or out_shape[1] != math.prod(in_shape[1:]):
        raise unsupported(node, f"a reshape from {tuple(in_shape)} to {tuple(out_shape)}")
    positions = math.prod(in_shape[2:])
    return [(g, size, inner * positions) for g, size, inner in segs]


def _op_name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _finish(groups: _Groups, raw_axes, taps, model: nn.Module) -> PermutationSpec:
    names: dict[int, str] = {}
    for g in range(1, len(groups.parent)):
        root = groups.find(g)
        if root != 0 and root not in names:
            names[root] = f"P_{groups.origin[root]}"

    def convert(segs: list[_Seg] | None) -> Axis:
        if segs is None:
            return None
        converted = []
        for g, size, inner in segs:
            root = groups.find(g)
            converted.append(Segment(names.get(root), size, inner))
        return None if all(s.group is None for s in converted) else tuple(converted)

    axes = {}
    state = model.state_dict()
    for name, raw in raw_axes.items():
        if name in state:
            converted = tuple(convert(a) for a in raw)
            if any(a is not None for a in converted):
                axes[name] = converted
    spec_taps: dict[str, list[str]] = {}
    for g, nodes in taps.items():
        root = groups.find(g)
        if root != 0:
            spec_taps.setdefault(names[root], []).extend(nodes)
    return PermutationSpec({names[r]: groups.size[r] for r in names}, axes, spec_taps)
