"""`int8`: int8 weights, activations quantized with ranges calibrated on training inputs, and for each layer the
kernel that measured cheapest on this machine when it was compressed.

Weights are symmetric int8 with one float32 scale per output channel (a BatchNorm right after a layer is folded
into it first). Each layer's input range is calibrated once, on the training inputs given (`X`): the smallest
and largest value it sees, widened to hold 0, mapped to uint8. A fixed range makes the result of each sample
independent of the rest of its batch (ranges taken per batch, as torch's and ONNX Runtime's dynamic
quantization do, changed 7 of 360 digits predictions between batch 1 and a batch of 360).

Kernels (`KERNELS`), chosen per layer by `compress(..., kernels="auto")` and recorded in the saved file:

- "dequantized": the int8 weight dequantized once into a cached float32 weight; activations stay float32.
  Exactly the float path's cost: what small layers at batch 1 want (each int8 call has a fixed cost).
- "int8": torch's int8 matrix multiply (`torch._int_mm`) on the input quantized with its calibrated range
  (Linear layers).
- "onnxruntime": ONNX Runtime's int8 kernels. Consecutive layers on it in an `nn.Sequential`, with the plain
  modules between them (ReLU, flatten, pooling), run as one graph (`onnx_graph`), since every call into the
  runtime costs some microseconds; so the choice is made per run of such layers.

"auto" times the candidates on the calibration inputs at batch 1 and at batch 256, one call of each in turn, and
keeps the one whose larger ratio to the fastest candidate at either batch size is the smallest (the smallest
worst-case slowdown): one 10% slower than the fastest at batch 1 and the fastest at 256 beats one that is the
fastest at batch 1 and twice as slow at 256. The choice depends on this machine and its load at that moment;
it is recorded, so a saved file runs the same kernels wherever it is loaded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .onnx_graph import OnnxRun, register_writer, runs_in_onnx, write_conv, write_linear
from .quantize import symmetric_rows

__all__ = ["KERNELS", "Int8Layer", "Int8Linear", "Int8Conv", "Int8Sequential", "quantize_int8", "recorded_kernels"]

KERNELS = ("dequantized", "int8", "onnxruntime")
TIMING_BATCH = 256
_TIMING_BUDGET_S = 0.15  # per candidate set and batch size: a few seconds for a whole model at most


class _Cache(dict):
    """What a layer derives from its buffers (a float32 weight, an ONNX Runtime session): never copied or
    pickled with the module (a session cannot be), rebuilt on first use."""

    def __deepcopy__(self, memo: dict) -> _Cache:
        return _Cache()

    def __reduce__(self):
        return _Cache, ()


def _has_int_mm() -> bool:
    return hasattr(torch, "_int_mm")


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class Int8Layer(nn.Module):
    """A Linear or convolution layer with int8 weights (one float32 scale per output channel), a float32 bias,
    the uint8 range its input was calibrated to (`input_scale`, `input_zero_point`), and its `kernel`."""

    def __init__(self, weight_shape: tuple[int, ...], *, bias: bool, kernel: str = "dequantized") -> None:
        super().__init__()
        self.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(weight_shape[0]))
        self.register_buffer("bias", torch.zeros(weight_shape[0]) if bias else None)
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.uint8))
        self.kernel = kernel
        self._cache = _Cache()
        self.register_load_state_dict_post_hook(lambda module, _: module._loaded())

    def _loaded(self) -> None:
        """After new tensors were loaded: drop what was derived from the old ones, and refuse scales that no
        kernel can use (a damaged or hostile file), here rather than at the first prediction."""
        self._cache.clear()
        for name in ("weight_scale", "input_scale"):
            scale = getattr(self, name)
            if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
                raise CheckpointError(f"an int8 layer's {name} must hold positive finite numbers; the file is damaged")
        if self.bias is not None and not bool(torch.isfinite(self.bias).all()):
            raise CheckpointError("an int8 layer's bias holds NaN or infinite values; the file is damaged")

    def _quantize_from(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        q, scale = symmetric_rows(weight.detach().float().reshape(len(weight), -1), 127, torch.float32)
        self.weight_int8.copy_(q.reshape(weight.shape).to(torch.int8))
        self.weight_scale.copy_(scale)
        if bias is not None:
            self.bias.copy_(bias.detach().float())

    def calibrate(self, low: float, high: float) -> None:
        """Map [low, high], widened to hold 0, to uint8 (asymmetric: ReLU outputs use every step)."""
        low, high = min(low, 0.0), max(high, 0.0)
        scale = max((high - low) / 255, 1e-8)
        self.input_scale.fill_(scale)
        self.input_zero_point.fill_(int(min(max(round(-low / scale), 0), 255)))
        self._cache.clear()

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the int8 weight stands for (cached)."""
        if "weight" not in self._cache:
            shape = (-1,) + (1,) * (self.weight_int8.ndim - 1)
            self._cache["weight"] = self.weight_int8.float() * self.weight_scale.reshape(shape)
        return self._cache["weight"]

    def _onnx(self, x: torch.Tensor) -> torch.Tensor:
        """This layer alone in ONNX Runtime (a layer on "onnxruntime" outside a run of an `Int8Sequential`)."""
        if "onnx" not in self._cache:
            self._cache["onnx"] = OnnxRun([self])
        return self._cache["onnx"](x)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}"


class Int8Linear(Int8Layer):
    """A Linear layer in int8 (see `Int8Layer`)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, kernel: str = "dequantized"):
        super().__init__((out_features, in_features), bias=bias, kernel=kernel)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def of(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer._quantize_from(linear.weight, linear.bias)
        return layer

    def _int8(self, x: torch.Tensor) -> torch.Tensor:
        if "int8" not in self._cache:
            # uint8 inputs q (zero point z) shifted to int8 q - 128, so that torch's int8 x int8 product applies:
            # sum_i w_i (q_i - z) = sum_i w_i (q_i - 128) + (128 - z) sum_i w_i, the last term folded into the bias
            scale = self.input_scale * self.weight_scale  # [out]
            shift = (128 - self.input_zero_point.float()) * self.weight_int8.float().sum(1) * scale
            bias = shift if self.bias is None else self.bias + shift
            self._cache["int8"] = self.weight_int8.t().contiguous(), bias, scale, float(self.input_scale)
        weight_t, bias, scale, input_scale = self._cache["int8"]
        rows = x.reshape(-1, self.in_features)
        q = (rows / input_scale).round_().add_(int(self.input_zero_point) - 128).clamp_(-128, 127).to(torch.int8)
        out = torch.addcmul(bias, torch._int_mm(q, weight_t).float(), scale)
        return out.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "dequantized":
            return nn.functional.linear(x, self.dequantized_weight(), self.bias)
        if self.kernel == "int8":
            return self._int8(x)
        return self._onnx(x)


class Int8Conv(Int8Layer):
    """A convolution in int8 (see `Int8Layer`); it keeps the convolution's settings (stride, padding, groups,
    ...) in a weightless copy of it. Kernels: "dequantized" or "onnxruntime" (torch has no int8 convolution
    outside its deprecated quantized tensors)."""

    def __init__(self, conv: nn.modules.conv._ConvNd, *, kernel: str = "dequantized") -> None:
        super().__init__(tuple(conv.weight.shape), bias=conv.bias is not None, kernel=kernel)
        weight, bias = conv.weight, conv.bias
        self.conv = conv
        del conv.weight  # the settings stay; the weight lives here in int8, the bias as a buffer of this layer
        conv.register_parameter("bias", None)
        self._quantize_from(weight, bias)

    @property
    def onnx_ready(self) -> bool:
        """Whether the graph writer covers this convolution's settings (zero padding given as numbers)."""
        return self.conv.padding_mode == "zeros" and isinstance(self.conv.padding, tuple) and self.weight_int8.ndim <= 4

    stride = property(lambda self: self.conv.stride)
    padding = property(lambda self: self.conv.padding)
    dilation = property(lambda self: self.conv.dilation)
    groups = property(lambda self: self.conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "onnxruntime":
            return self._onnx(x)
        return self.conv._conv_forward(x, self.dequantized_weight(), self.bias)


register_writer(Int8Linear, write_linear, quantized_input=True)
register_writer(Int8Conv, write_conv, quantized_input=True)


class Int8Sequential(nn.Sequential):
    """An `nn.Sequential` (its children and their names unchanged) whose `runs`, ranges [start, stop) of
    children holding int8 layers on the "onnxruntime" kernel, each run as one ONNX Runtime graph."""

    def __init__(self, sequential: nn.Sequential, runs: list[tuple[int, int]]) -> None:
        super().__init__(OrderedDict(sequential.named_children()))
        self.runs = tuple(runs)
        self._cache = _Cache()
        self.register_load_state_dict_post_hook(lambda module, _: module._cache.clear())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "steps" not in self._cache:  # built once: at batch 1 every microsecond of Python shows
            children, stops = list(self), dict(self.runs)
            steps, i = [], 0
            while i < len(children):
                steps.append(OnnxRun(children[i : stops[i]]) if i in stops else children[i])
                i = stops.get(i, i + 1)
            self._cache["steps"] = steps
        for step in self._cache["steps"]:
            x = step(x)
        return x

    def extra_repr(self) -> str:
        return f"onnxruntime runs={list(self.runs)}"


# -- building ---------------------------------------------------------------------------------------------------
def _fold_batchnorm(model: nn.Module) -> None:
    """Fold each BatchNorm that directly follows a Linear or convolution layer in an `nn.Sequential` into that
    layer's weight and bias (each output channel scaled and shifted; in place), leaving an Identity in its
    place: one layer less to run, and the int8 weight then holds the folded one."""
    pairs = {nn.Linear: nn.BatchNorm1d, nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
    for container in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(container._modules)
        for name, following in zip(names, names[1:], strict=False):
            layer, norm = container._modules[name], container._modules[following]
            if not (type(layer) in pairs and type(norm) is pairs[type(layer)] and norm.running_mean is not None):
                continue
            if norm.num_features != layer.weight.shape[0]:
                continue
            with torch.no_grad():
                factor = torch.rsqrt(norm.running_var + norm.eps)
                factor = factor * norm.weight if norm.weight is not None else factor
                shift = -norm.running_mean * factor + (norm.bias if norm.bias is not None else 0)
                bias = layer.bias * factor + shift if layer.bias is not None else shift
                layer.weight.mul_(factor.reshape(-1, *[1] * (layer.weight.ndim - 1)))
                layer.bias = nn.Parameter(bias.float())
            container._modules[following] = nn.Identity()


def _to_int8(module: nn.Module) -> nn.Module:
    """`module` with every Linear and convolution layer replaced by its int8 form (in place)."""
    if isinstance(module, nn.Linear):
        return Int8Linear.of(module)
    if isinstance(module, nn.modules.conv._ConvNd):
        return Int8Conv(module)
    for name, child in list(module.named_children()):
        setattr(module, name, _to_int8(child))
    return module


def _int8_layers(model: nn.Module) -> dict[str, Int8Layer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Int8Layer)}


def recorded_kernels(model: nn.Module) -> dict:
    """What a saved file records so that loading rebuilds the same kernels: `{"kernels": {layer name: kernel}}`."""
    return {"kernels": {name: layer.kernel for name, layer in _int8_layers(model).items()}}


def _available(layer: Int8Layer, kernel: str) -> bool:
    if kernel == "int8":
        return isinstance(layer, Int8Linear) and _has_int_mm()
    if kernel == "onnxruntime":
        return _has_onnxruntime() and (not isinstance(layer, Int8Conv) or layer.onnx_ready)
    return True


def _set_kernels(layers: dict[str, Int8Layer], kernels: str | Mapping) -> None:
    """Give each layer its kernel: one name for all (where a layer has no such kernel, "dequantized") or a
    mapping layer name -> kernel (as a saved file records it), which must name every layer."""
    if isinstance(kernels, str):
        if kernels not in KERNELS:
            raise ConfigError(
                f"int8 kernels must be 'auto', one of {', '.join(KERNELS)}, or a mapping; got {kernels!r}"
            )
        if kernels == "onnxruntime" and not _has_onnxruntime():
            raise ConfigError("int8 kernels='onnxruntime' needs onnxruntime: pip install 'modelfusion[onnx]'")
        for layer in layers.values():
            layer.kernel = kernels if _available(layer, kernels) else "dequantized"
        return
    if not isinstance(kernels, Mapping) or set(kernels) != set(layers):
        named = sorted(kernels) if isinstance(kernels, Mapping) else kernels
        raise ConfigError(f"int8 kernels must name every int8 layer ({', '.join(layers)}); got {named!r}")
    for name, kernel in kernels.items():
        if kernel not in KERNELS:
            raise ConfigError(f"int8 layer {name!r}: unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
        if not _available(layers[name], kernel):
            need = "pip install 'modelfusion[onnx]'" if kernel == "onnxruntime" else "another kernel"
            raise ConfigError(f"int8 layer {name!r} cannot run on the {kernel!r} kernel here; {need}")
        layers[name].kernel = kernel


def _runs(children: list[nn.Module], *, chosen: bool) -> list[tuple[int, int]]:
    """Ranges [start, stop) of consecutive children that ONNX Runtime can run, holding at least one int8 layer;
    with `chosen`, only layers on the "onnxruntime" kernel count and any other int8 layer ends a run."""

    def joins(child: nn.Module) -> bool:
        if chosen and isinstance(child, Int8Layer) and child.kernel != "onnxruntime":
            return False
        return runs_in_onnx(child)

    runs, start = [], None
    for i, child in enumerate([*children, None]):
        if child is not None and joins(child):
            start = i if start is None else start
            continue
        if start is not None and any(isinstance(c, Int8Layer) for c in children[start:i]):
            runs.append((start, i))
        start = None
    return runs


def _with_runs(module: nn.Module) -> nn.Module:
    """`module` with every `nn.Sequential` holding layers on "onnxruntime" made an `Int8Sequential`."""
    for name, child in list(module.named_children()):
        setattr(module, name, _with_runs(child))
    if type(module) is nn.Sequential:
        runs = _runs(list(module), chosen=True)
        if runs:
            return Int8Sequential(module, runs)
    return module


def quantize_int8(model: nn.Module, X: torch.Tensor | None, kernels: str | Mapping = "auto") -> nn.Module:
    """`model` (changed in place) in int8: BatchNorms folded, Linear and convolution layers quantized, their
    input ranges calibrated on `X`, and their kernels `kernels`: "auto" (timed here, see the module's
    docstring), one of `KERNELS` for every layer, or a mapping layer name -> kernel. Without `X` (a saved file
    being rebuilt, whose ranges its tensors hold) `kernels` must be the mapping."""
    if X is None and not isinstance(kernels, Mapping):
        raise ConfigError(
            "int8 calibrates its activation ranges on example inputs: pass X (a few hundred training inputs)"
        )
    _fold_batchnorm(model)
    timing_inputs: dict[str, torch.Tensor] = {}
    if X is not None:
        timing_inputs = _calibrate(model, X.float(), keep=kernels == "auto")
    model = _to_int8(model)
    layers = _int8_layers(model)
    if X is not None:
        for name, layer in layers.items():
            layer.calibrate(*timing_inputs.pop(f"range:{name}"))
    if kernels == "auto":
        _choose_kernels(model, timing_inputs)
    else:
        _set_kernels(layers, kernels)
    return _with_runs(model).eval()


def _calibrate(model: nn.Module, X: torch.Tensor, *, keep: bool) -> dict[str, torch.Tensor | tuple[float, float]]:
    """The float model (BatchNorms folded) run on `X` in chunks: the smallest and largest input of each Linear
    and convolution layer ("range:NAME"), and with `keep` the inputs kernels are timed on (by module name), to a
    first batch of `TIMING_BATCH` samples (`X` repeated if shorter): those of the layers and of the children of
    every `nn.Sequential` (where a run of layers for ONNX Runtime may start)."""
    seen: dict[str, torch.Tensor | tuple[float, float]] = {}
    capturing = {"inputs": False}

    def hook(name: str, calibrated: bool):
        def record(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if capturing["inputs"]:
                seen.setdefault(name, x.detach().clone())
            elif calibrated:
                low, high = seen.get(f"range:{name}", (float("inf"), float("-inf")))
                seen[f"range:{name}"] = (min(low, float(x.min())), max(high, float(x.max())))

        return record

    quantized = (nn.Linear, nn.modules.conv._ConvNd)
    in_sequential = {
        f"{prefix}.{child}" if prefix else child
        for prefix, container in model.named_modules()
        if type(container) is nn.Sequential
        for child in container._modules
    }
    handles = [
        module.register_forward_pre_hook(hook(name, isinstance(module, quantized)))
        for name, module in model.named_modules()
        if isinstance(module, quantized) or name in in_sequential
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(X), 1024):
                model(X[start : start + 1024])
            if keep:
                capturing["inputs"] = True
                model(X[torch.arange(TIMING_BATCH) % len(X)])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return seen


# -- choosing kernels by their measured cost ----------------------------------------------------------------------
def _cheapest(candidates: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor) -> str:
    """The candidate whose larger ratio to the fastest one, at batch 1 and at batch `len(x)`, is the smallest
    (ties: the first, so list the most accurate first)."""
    from ..evaluate.timing import interleaved_latency_us

    with torch.no_grad():
        timings = [
            interleaved_latency_us(
                {name: (lambda run=run, batch=batch: run(batch)) for name, run in candidates.items()},
                runs=200,
                warmup=2,  # the first calls build caches and sessions
                budget_s=_TIMING_BUDGET_S,
            )
            for batch in (x[:1], x)
        ]
    fastest = [min(t.values()) for t in timings]
    return min(candidates, key=lambda name: max(t[name] / best for t, best in zip(timings, fastest, strict=True)))


def _choose_kernels(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Each layer's kernel by its measured cost on its calibration inputs: first each Linear layer between
    "dequantized" and "int8", then each run of layers ONNX Runtime can take, in it or with the torch kernels."""
    layers = _int8_layers(model)
    for name, layer in layers.items():
        if _available(layer, "int8"):
            layer.kernel = _cheapest({k: _with_kernel(layer, k) for k in ("dequantized", "int8")}, inputs[name])
    if not _has_onnxruntime():
        return
    for first_name, modules in _candidate_runs(model):
        torch_kernels = {id(m): m.kernel for m in modules if isinstance(m, Int8Layer)}

        def on_torch(x: torch.Tensor, modules=modules) -> torch.Tensor:
            for module in modules:
                x = module(x)
            return x

        choice = _cheapest({"torch": on_torch, "onnxruntime": OnnxRun(modules)}, inputs[first_name])
        for module in modules:
            if isinstance(module, Int8Layer):
                module.kernel = "onnxruntime" if choice == "onnxruntime" else torch_kernels[id(module)]


def _with_kernel(layer: Int8Layer, kernel: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        layer.kernel = kernel
        return layer(x)

    return run


def _candidate_runs(model: nn.Module) -> Iterator[tuple[str, list[nn.Module]]]:
    """Each run ONNX Runtime could take, as (the name of its first module, its modules): the runs of every
    `nn.Sequential`, and each int8 layer outside them on its own."""
    in_runs: set[int] = set()
    for prefix, container in model.named_modules():
        if type(container) is not nn.Sequential:
            continue
        names, children = list(container._modules), list(container)
        for start, stop in _runs(children, chosen=False):
            in_runs.update(id(m) for m in children[start:stop])
            yield (f"{prefix}.{names[start]}" if prefix else names[start]), children[start:stop]
    for name, layer in _int8_layers(model).items():
        if id(layer) not in in_runs and _available(layer, "onnxruntime"):
            yield name, [layer]
