"""Finding, cutting and freezing named submodules: shared by distillation hints and feature fusion."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .errors import ConfigError, InvalidInputError

MAX_SHOWN = 30


def named_module(model: nn.Module, name: str, role: str) -> nn.Module:
    """`model`'s submodule called `name`; an unknown name is an error listing the available ones."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        available = [n for n in modules if n]
        shown = ", ".join(available[:MAX_SHOWN])
        if len(available) > MAX_SHOWN:
            shown += f" ... ({len(available)} in all)"
        raise ConfigError(f"{role} has no module named {name!r}; its modules are: {shown}")
    return modules[name]


class _Tap(nn.Module):
    """Runs the whole model and returns the output of one named submodule (for models fx cannot trace)."""

    def __init__(self, model: nn.Module, at: str) -> None:
        super().__init__()
        self.model = model
        self._captured: torch.Tensor | None = None
        named_module(model, at, "the model").register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self._captured = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model(x)
        captured, self._captured = self._captured, None
        return captured


def truncate(model: nn.Module, at: str) -> nn.Module:
    """The part of `model` that computes the output of its submodule `at` (the modules after it are dropped).

    Traced with torch.fx, so later layers neither run nor keep parameters; a model fx cannot trace (data-
    dependent control flow) is run whole with a forward hook instead. Submodules are shared with `model`,
    not copied.
    """
    named_module(model, at, "the model")
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        return _Tap(model, at)
    nodes = [n for n in traced.graph.nodes if n.op == "call_module" and n.target == at]
    if len(nodes) != 1:  # a module called twice (or inside a traced-through container): ambiguous to cut
        return _Tap(model, at)
    graph = traced.graph
    for node in [n for n in graph.nodes if n.op == "output"]:
        graph.erase_node(node)
    graph.output(nodes[0])
    graph.eliminate_dead_code()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` contains a BatchNorm layer (of any dimension)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def freeze(modules: Iterable[nn.Module]) -> None:
    """Stop gradients to every parameter of `modules`."""
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(False)


@contextlib.contextmanager
def evaluating(module) -> Iterator[None]:
    """`module` in eval mode, without gradients, inside the block; afterwards every submodule is back in the
    mode it was in (a model with frozen BatchNorm layers in eval mode inside a training model stays so).
    `torch.export` modules keep the mode they were exported in and refuse the switch, which is fine."""
    modes = [(m, m.training) for m in module.modules()] if isinstance(module, nn.Module) else []
    try:
        module.eval()
    except NotImplementedError:
        modes = []
    try:
        with torch.no_grad():
            yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def output_width(module: nn.Module, example_input: torch.Tensor, role: str) -> int:
    """The flattened width of `module`'s output for one sample, by a dry forward pass in eval mode."""
    try:
        with evaluating(module):
            out = module(example_input[:2])
    except (RuntimeError, ValueError, IndexError) as err:
        reason = " ".join(str(err).split())[:240]
        raise InvalidInputError(f"{role} failed on the example input {tuple(example_input.shape)}: {reason}") from None
    if not isinstance(out, torch.Tensor):
        raise InvalidInputError(f"{role} returned {type(out).__name__}; feature layers must return one tensor")
    return int(out[0].numel())


def last_linear_inputs(module: nn.Module, X: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """What `module`'s last `nn.Linear` layer receives on `X`, flattened to `[N, D]` float64: the penultimate
    features a classifier head sees. Captured with a forward pre-hook, in eval mode without gradients; the
    module's modes are left as they were."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidInputError(f"{type(module).__name__} has no nn.Linear layer whose inputs could be features")
    captured: list[torch.Tensor] = []
    hook = linears[-1].register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach()))
    try:
        with evaluating(module):
            for start in range(0, len(X), batch_size):
                module(X[start : start + batch_size])
    finally:
        hook.remove()
    if not captured:
        return torch.empty(0, linears[-1].in_features, dtype=torch.float64)
    return torch.cat(captured).reshape(len(X), -1).double()
