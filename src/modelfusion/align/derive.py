"""Deriving a permutation spec from a model's torch.fx graph: one small rule per kind of operation.

Walking the graph, each tensor carries the unit groups of its channel axis (segments: group, size, and the
positions one unit spans after a flatten). A rule says, for one kind of module or function, which groups its
output carries, which weight axes share them, and where a group's activations can be read (taps, for
activation matching). Supporting another operation is one more rule (`module_rule` / `function_rule`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .._modules import evaluating
from ..errors import ConfigError
from .spec import Axis, PermutationSpec, Segment

__all__ = ["derive_spec", "module_rule", "function_rule"]

_Seg = tuple[int, int, int]  # (group id, size, inner)


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


@dataclass
class _Walk:
    """What the walk over the graph has found so far, and the helpers every rule uses."""

    groups: _Groups = field(default_factory=_Groups)
    state: dict[torch.fx.Node, list[_Seg]] = field(default_factory=dict)  # each tensor's channel segments
    raw_axes: dict[str, list[list[_Seg] | None]] = field(default_factory=dict)  # weight name -> axes
    taps: dict[int, list[str]] = field(default_factory=dict)  # group -> nodes whose output shows its units

    def unsupported(self, node: torch.fx.Node, what: str) -> ConfigError:
        return ConfigError(
            f"cannot derive a permutation spec: {what} at node {node.name!r} ({node.format_node()}) is not supported; "
            "pass a hand-written spec (PermutationSpec.from_dict)"
        )

    def plain(self, segs: list[_Seg], node: torch.fx.Node, what: str) -> list[_Seg]:
        """`segs`, refused when they come from a flatten (units spanning several entries)."""
        if any(inner != 1 for _, _, inner in segs):
            raise self.unsupported(node, f"{what} on flattened channels")
        return segs

    def tap(self, segs: list[_Seg], node: torch.fx.Node) -> list[_Seg]:
        """Record `node` as showing the units of `segs` (one plain segment; else nothing to record)."""
        if len(segs) == 1 and segs[0][2] == 1:
            self.taps.setdefault(segs[0][0], []).append(node.name)
        return segs

    def new_units(self, node: torch.fx.Node, size: int, weight_axes: list[list[_Seg] | None], bias: bool) -> list[_Seg]:
        """A layer's `size` fresh output units: its weight's axes (output axis first) and bias share them."""
        out = [(self.groups.new(size, node.target), size, 1)]
        self.raw_axes[f"{node.target}.weight"] = [out, *weight_axes]
        if bias:
            self.raw_axes[f"{node.target}.bias"] = [out]
        return self.tap(out, node)

    def reshaped(self, segs: list[_Seg], in_shape, out_shape, node: torch.fx.Node) -> list[_Seg]:
        """Channels after flattening `[N, C, *positions]` to `[N, C * positions]`."""
        if all(self.groups.find(g) == 0 for g, _, _ in segs):  # unpermuted units may be reshaped at will
            return [(0, out_shape[1], 1)]
        if in_shape is None or out_shape is None:
            raise self.unsupported(node, "a reshape of unknown shape")
        if tuple(out_shape) == tuple(in_shape):
            return segs
        if len(out_shape) != 2 or out_shape[0] != in_shape[0] or out_shape[1] != math.prod(in_shape[1:]):
            raise self.unsupported(node, f"a reshape from {tuple(in_shape)} to {tuple(out_shape)}")
        positions = math.prod(in_shape[2:])
        return [(g, size, inner * positions) for g, size, inner in segs]

    def tie(self, node: torch.fx.Node, inputs: list[torch.fx.Node]) -> list[_Seg]:
        """One group for the units that an element-wise op between tensors lines up."""
        first = self.state[inputs[0]]
        for other in inputs[1:]:
            segs = self.state[other]
            if [(s, i) for _, s, i in segs] != [(s, i) for _, s, i in first]:
                # different splits of the same axis: tie everything to 'fixed' only when sizes still agree
                if sum(s * i for _, s, i in segs) != sum(s * i for _, s, i in first):
                    raise self.unsupported(node, "an element-wise op between tensors of different channel sizes")
                for g, _, _ in segs + first:
                    self.groups.union(g, 0)
                continue
            for (a, _, _), (b, _, _) in zip(first, segs, strict=True):
                self.groups.union(a, b)
        return first


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


# -- the rules --------------------------------------------------------------------------------------------------
# A module rule: (walk, node, module, incoming segments) -> the output's segments.
# A function rule: (walk, node, tensor inputs) -> the output's segments.
ModuleRule = Callable[[_Walk, torch.fx.Node, nn.Module, list[_Seg]], list[_Seg]]
FunctionRule = Callable[[_Walk, torch.fx.Node, list[torch.fx.Node]], list[_Seg]]
_MODULE_RULES: list[tuple[tuple[type, ...], ModuleRule]] = []
_FUNCTION_RULES: dict[object, FunctionRule] = {}


def module_rule(*types: type) -> Callable[[ModuleRule], ModuleRule]:
    """Register the rule for modules of `types` (the first registered rule whose types match applies)."""

    def decorator(rule: ModuleRule) -> ModuleRule:
        _MODULE_RULES.append((types, rule))
        return rule

    return decorator


def function_rule(*targets) -> Callable[[FunctionRule], FunctionRule]:
    """Register the rule for calls of `targets` (functions, or method names such as "view")."""

    def decorator(rule: FunctionRule) -> FunctionRule:
        for target in targets:
            _FUNCTION_RULES[target] = rule
        return rule

    return decorator


@module_rule(nn.Linear)
def _linear(walk: _Walk, node, module: nn.Linear, incoming: list[_Seg]) -> list[_Seg]:
    shape = _shape(node)
    if shape is None or len(shape) != 2:
        raise walk.unsupported(node, "a Linear layer on a tensor that is not [N, features]")
    return walk.new_units(node, module.out_features, [incoming], module.bias is not None)


@module_rule(nn.modules.conv._ConvNd)
def _conv(walk: _Walk, node, module: nn.modules.conv._ConvNd, incoming: list[_Seg]) -> list[_Seg]:
    if module.groups != 1:
        raise walk.unsupported(node, f"a grouped convolution (groups={module.groups})")
    kernel_axes = [None] * (module.weight.ndim - 2)
    inputs = walk.plain(incoming, node, "a conv")
    return walk.new_units(node, module.out_channels, [inputs, *kernel_axes], module.bias is not None)


@module_rule(nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
def _norm(walk: _Walk, node, module: nn.Module, incoming: list[_Seg]) -> list[_Seg]:
    """Normalization over the channel axis: its 1-D parameters and statistics follow the channels."""
    if isinstance(module, nn.LayerNorm) and (len(module.normalized_shape) != 1 or len(_shape(node)) != 2):
        raise walk.unsupported(node, "a LayerNorm over more than the channel axis")
    segs = walk.plain(incoming, node, type(module).__name__)
    for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if tensor is not None and tensor.ndim == 1:
            walk.raw_axes[f"{node.target}.{name}"] = [segs]
    return walk.tap(segs, node)


_CHANNELWISE_MODULES = (
    *(nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Hardswish),
    *(nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
    *(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d),
)


@module_rule(*_CHANNELWISE_MODULES)
def _channelwise_module(walk: _Walk, node, module: nn.Module, incoming: list[_Seg]) -> list[_Seg]:
    return walk.tap(incoming, node)


@module_rule(nn.Flatten, nn.Unflatten)
def _reshape_module(walk: _Walk, node, module: nn.Module, incoming: list[_Seg]) -> list[_Seg]:
    (arg,) = [a for a in node.args if isinstance(a, torch.fx.Node)][:1]
    return walk.reshaped(incoming, _shape(arg), _shape(node), node)


@function_rule(operator.add, operator.iadd, operator.mul, operator.sub, torch.add, torch.mul, torch.sub)
@function_rule("add", "add_", "mul", "mul_", "sub")
def _elementwise(walk: _Walk, node, inputs: list[torch.fx.Node]) -> list[_Seg]:
    return walk.tie(node, inputs) if len(inputs) > 1 else walk.state[inputs[0]]


@function_rule(torch.relu, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, torch.tanh, torch.sigmoid)
@function_rule(F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d)
@function_rule(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, "relu", "tanh", "sigmoid", "contiguous", "clone")
def _channelwise(walk: _Walk, node, inputs: list[torch.fx.Node]) -> list[_Seg]:
    return walk.tap(walk.state[inputs[0]], node)


@function_rule(torch.flatten, torch.reshape, "flatten", "view", "reshape")
def _reshape(walk: _Walk, node, inputs: list[torch.fx.Node]) -> list[_Seg]:
    return walk.reshaped(walk.state[inputs[0]], _shape(inputs[0]), _shape(node), node)


@function_rule(torch.cat)
def _concatenate(walk: _Walk, node, inputs: list[torch.fx.Node]) -> list[_Seg]:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if dim not in (1, -len(_shape(node)) + 1):
        raise walk.unsupported(node, f"concatenation along dim {dim}")
    return [seg for part in node.args[0] for seg in walk.state[part]]


@function_rule(torch.mean, "mean", torch.amax, "amax", torch.sum, "sum")
def _reduce(walk: _Walk, node, inputs: list[torch.fx.Node]) -> list[_Seg]:
    """A reduction over positions keeps the channels; over the batch or the channels it is not supported."""
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    rank = len(_shape(inputs[0]))
    if not dims or any(d % rank in (0, 1) for d in dims) or len(_shape(node)) < 2:
        raise walk.unsupported(node, f"{_op_name(node.target)} over the batch or channel axis")
    return walk.state[inputs[0]]


# -- the walk ---------------------------------------------------------------------------------------------------
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
    with evaluating(graph_module):  # the traced modules are the model's: each gets its own mode back
        ShapeProp(graph_module).propagate(example_input[:2])
    modules = dict(graph_module.named_modules())
    walk = _Walk()
    for node in graph_module.graph.nodes:
        segs = _visit(walk, node, modules)
        if segs is not None:
            walk.state[node] = segs
    return _finish(walk, model)


def _visit(walk: _Walk, node: torch.fx.Node, modules: dict[str, nn.Module]) -> list[_Seg] | None:
    """The segments of `node`'s output (None: no tensor with units), by the rule for its operation."""
    shape = _shape(node)
    if node.op == "placeholder":
        if shape is None or len(shape) < 2:
            raise walk.unsupported(node, "an input that is not a batch of at least 2 dims")
        return [(0, shape[1], 1)]
    if node.op == "get_attr":
        raise walk.unsupported(node, "a parameter used directly in forward (get_attr)")
    if node.op == "output":
        for arg in _flatten_args(node.args):
            for g, _, _ in walk.state.get(arg, []):
                walk.groups.union(g, 0)
        return None
    if node.op == "call_module":
        return _visit_module(walk, node, modules[node.target])
    if node.op in ("call_function", "call_method"):
        return None if shape is None else _visit_function(walk, node)  # sizes and shapes carry no units
    raise walk.unsupported(node, node.op)


def _visit_module(walk: _Walk, node: torch.fx.Node, module: nn.Module) -> list[_Seg] | None:
    """The segments of a module call's output, by the rule for the module's type."""
    (arg,) = [a for a in node.args if isinstance(a, torch.fx.Node)][:1] or [None]
    if arg is None or arg not in walk.state:
        raise walk.unsupported(node, f"module {type(module).__name__} without a tensor input")
    rule = next((rule for types, rule in _MODULE_RULES if isinstance(module, types)), None)
    if rule is not None:
        return rule(walk, node, module, walk.state[arg])
    if any(True for _ in module.parameters(recurse=False)):
        raise walk.unsupported(node, f"module {type(module).__name__} with its own parameters")
    raise walk.unsupported(node, f"module {type(module).__name__}")


def _visit_function(walk: _Walk, node: torch.fx.Node) -> list[_Seg] | None:
    """The segments of a function or method call's output (a tensor), by the rule for the function."""
    inputs = [a for a in _flatten_args((node.args, node.kwargs)) if a in walk.state]
    if not inputs:
        raise walk.unsupported(node, f"{_op_name(node.target)} creating a new tensor")
    rule = _FUNCTION_RULES.get(node.target)
    if rule is None:
        raise walk.unsupported(node, _op_name(node.target))
    return rule(walk, node, inputs)


def _flatten_args(args) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg(args, lambda n: found.append(n) or n)
    return found


def _op_name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _finish(walk: _Walk, model: nn.Module) -> PermutationSpec:
    groups = walk.groups
    names: dict[int, str] = {}
    for g in range(1, len(groups.parent)):
        root = groups.find(g)
        if root != 0 and root not in names:
            names[root] = f"P_{groups.origin[root]}"

    def convert(segs: list[_Seg] | None) -> Axis:
        if segs is None:
            return None
        converted = [Segment(names.get(groups.find(g)), size, inner) for g, size, inner in segs]
        return None if all(s.group is None for s in converted) else tuple(converted)

    axes = {}
    state = model.state_dict()
    for name, raw in walk.raw_axes.items():
        if name in state:
            converted = tuple(convert(a) for a in raw)
            if any(a is not None for a in converted):
                axes[name] = converted
    spec_taps: dict[str, list[str]] = {}
    for g, nodes in walk.taps.items():
        root = groups.find(g)
        if root != 0:
            spec_taps.setdefault(names[root], []).extend(nodes)
    return PermutationSpec({names[r]: groups.size[r] for r in names}, axes, spec_taps)
