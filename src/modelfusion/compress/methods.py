"""The registry of compression methods, each a small function over a copy of the model."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..registry import Registry
from .int8 import quantize_int8, recorded_kernels
from .prune import prune_magnitude, prune_wanda
from .quantize import HalfPrecision, QuantizedConv, QuantizedLinear, quantize_layers
from .structured import prune_structured

__all__ = ["COMPRESSORS", "Compressor", "apply_compression"]


@dataclass(frozen=True)
class Compressor:
    """A compression method: `function(model, **params) -> compressed model` (with `X=` example inputs when it
    `needs_inputs`), and whether it changes the model's structure (quantized layers, half precision) or only
    its weights' values and shapes (pruning), which decides what a saved file must rebuild; `file_format`:
    "safetensors" (a member file of the "compressed" factory) or "onnx" (a graph any ONNX runtime reads);
    `records(model) -> params`: what the method chose while compressing that a saved file must record to
    rebuild the same structure (int8's kernels), added to the parameters."""

    function: Callable[..., nn.Module]
    changes_structure: bool = True
    needs_inputs: bool = False
    file_format: str = "safetensors"
    records: Callable[[nn.Module], dict] | None = None


COMPRESSORS: Registry[Compressor] = Registry("compression method")


def _register(name: str, **properties) -> Callable:
    def decorator(function: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        COMPRESSORS.register(name)(Compressor(function, **properties))
        return function

    return decorator


@_register("int8", needs_inputs=True, records=recorded_kernels)
def _int8(model: nn.Module, *, X: torch.Tensor | None, kernels="auto") -> nn.Module:
    return quantize_int8(model, X, kernels)


@_register("int8-weight")
def _int8_weight(model: nn.Module, *, group_size: int = 0) -> nn.Module:
    def linear(layer: nn.Linear) -> nn.Module:
        return QuantizedLinear.of(layer, bits=8, group_size=group_size)

    return quantize_layers(model, lambda layer: _one_of(layer, linear, QuantizedConv))


@_register("int4")
def _int4(model: nn.Module, *, group_size: int = 32) -> nn.Module:
    def linear(layer: nn.Linear) -> nn.Module:
        return QuantizedLinear.of(layer, bits=4, group_size=group_size)

    return quantize_layers(model, lambda layer: _one_of(layer, linear, None))


def _one_of(
    layer: nn.Module, linear: Callable[[nn.Linear], nn.Module], conv: Callable[[nn.Module], nn.Module] | None
) -> nn.Module | None:
    """The quantized form of a Linear or convolution layer (None: leave the layer as it is)."""
    if isinstance(layer, nn.Linear):
        return linear(layer)
    if conv is not None and isinstance(layer, nn.modules.conv._ConvNd):
        return conv(layer)
    return None


@_register("onnx-int8", needs_inputs=True, file_format="onnx")
def _onnx_int8(model: nn.Module, *, X: torch.Tensor | None) -> nn.Module:
    from .onnx import export_int8  # here: the onnx extra is optional

    return export_int8(model, X)


@_register("fp16")
def _fp16(model: nn.Module) -> nn.Module:
    return HalfPrecision(model, torch.float16)


@_register("bf16")
def _bf16(model: nn.Module) -> nn.Module:
    return HalfPrecision(model, torch.bfloat16)


@_register("prune", changes_structure=False)
def _prune(model: nn.Module, *, amount: float = 0.5, scope: str = "global") -> nn.Module:
    return prune_magnitude(model, amount, scope=scope)


@_register("prune-wanda", changes_structure=False, needs_inputs=True)
def _prune_wanda(model: nn.Module, *, X: torch.Tensor | None, amount: float = 0.5) -> nn.Module:
    return prune_wanda(model, X, amount)


@_register("prune-structured", changes_structure=False, needs_inputs=True)
def _prune_structured(model: nn.Module, *, X: torch.Tensor | None, amount: float = 0.5) -> nn.Module:
    return prune_structured(model, X, amount)


def apply_compression(
    model: nn.Module,
    method: str,
    params: dict,
    *,
    X: torch.Tensor | None = None,
    structure_only: bool = False,
) -> nn.Module:
    """`model` (a copy: the argument is not changed) compressed by `method` with `params` (and the example
    inputs `X` for methods that need them); with `structure_only`, only what a saved file needs rebuilt (a
    method that changes values only returns the copy as it is)."""
    compressor = COMPRESSORS[method]
    if structure_only and compressor.file_format != "safetensors":
        raise CheckpointError(f"a {method!r} model is saved as {compressor.file_format}, not rebuilt by a factory")
    if structure_only and not compressor.changes_structure:
        return copy.deepcopy(model)
    inputs = {"X": X} if compressor.needs_inputs else {}
    try:
        return compressor.function(copy.deepcopy(model), **inputs, **params)
    except TypeError as err:
        raise ConfigError(f"compression {method!r}: bad parameters {params} ({err})") from None
