"""Compression of a fused result: weight-only quantization (int8, int4), half precision, magnitude pruning.

`compress(member_or_model, method, **params) -> Compressed`: `.model` takes the same float inputs as the
original; `.size_bytes` is what its weights take stored (packed integers and scales; for pruning, the non-zero
values and a bitmask of where they are); `.save(path)` writes a member that `load_member` reads back with the
same outputs (the file names the registered factory "compressed", which rebuilds the original architecture
from its own factory and applies the same compression structure).

| method | what it does | parameters |
|---|---|---|
| `int8-weight` | Linear weights as int8, one float16 scale per output row (or per group) | `group_size` |
| `int4` | Linear weights as int4, two per byte, float16 scales | `group_size` (default 32) |
| `fp16`, `bf16` | every weight in half precision; inputs and outputs stay float32 | |
| `prune` | unstructured magnitude pruning of Linear and convolution weights, made permanent | `amount`, `scope` |
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, InvalidInputError
from ..members import TorchMember
from ..registry import Registry
from .prune import prunable_weights, prune_magnitude
from .quantize import HalfPrecision, QuantizedLinear, quantize_linears

__all__ = [
    "compress",
    "Compressed",
    "Compressor",
    "COMPRESSORS",
    "QuantizedLinear",
    "HalfPrecision",
    "apply_compression",
]


@dataclass(frozen=True)
class Compressor:
    """A compression method: `function(model, **params) -> compressed model`, and whether it changes the
    model's structure (quantized layers, half precision) or only its weights' values (pruning), which decides
    what a saved file must rebuild."""

    function: Callable[..., nn.Module]
    changes_structure: bool = True


COMPRESSORS: Registry[Compressor] = Registry("compression method")


def _register(name: str, *, changes_structure: bool = True) -> Callable:
    def decorator(function: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        COMPRESSORS.register(name)(Compressor(function, changes_structure))
        return function

    return decorator


@_register("int8-weight")
def _int8(model: nn.Module, *, group_size: int = 0) -> nn.Module:
    return _quantized(model, bits=8, group_size=group_size)


@_register("int4")
def _int4(model: nn.Module, *, group_size: int = 32) -> nn.Module:
    return _quantized(model, bits=4, group_size=group_size)


def _quantized(model: nn.Module, *, bits: int, group_size: int) -> nn.Module:
    if isinstance(model, nn.Linear):
        return QuantizedLinear.of(model, bits=bits, group_size=group_size)
    return quantize_linears(model, bits=bits, group_size=group_size)


@_register("fp16")
def _fp16(model: nn.Module) -> nn.Module:
    return HalfPrecision(model, torch.float16)


@_register("bf16")
def _bf16(model: nn.Module) -> nn.Module:
    return HalfPrecision(model, torch.bfloat16)


@_register("prune", changes_structure=False)
def _prune(model: nn.Module, *, amount: float = 0.5, scope: str = "global") -> nn.Module:
    return prune_magnitude(model, amount, scope=scope)


def apply_compression(model: nn.Module, method: str, params: dict, *, structure_only: bool = False) -> nn.Module:
    """`model` (a copy: the argument is not changed) compressed by `method` with `params`; with
    `structure_only`, only what a saved file needs rebuilt (a method that changes values only returns the copy
    as it is)."""
    compressor = COMPRESSORS[method]
    if structure_only and not compressor.changes_structure:
        return copy.deepcopy(model)
    try:
        return compressor.function(copy.deepcopy(model), **params)
    except TypeError as err:
        raise ConfigError(f"compression {method!r}: bad parameters {params} ({err})") from None


@dataclass
class Compressed:
    """A compressed model, how it was made, and what the original was (for saving a rebuildable file)."""

    model: nn.Module
    method: str
    params: dict = field(default_factory=dict)
    original: TorchMember | None = None

    @property
    def size_bytes(self) -> int:
        """Bytes of the weights as stored: packed integers and scales, half-precision values, or for pruning
        the non-zero values plus one bit per weight for where they are."""
        state = self.model.state_dict()
        if self.method != "prune":
            return sum(t.numel() * t.element_size() for t in state.values())
        pruned = {f"{name}.weight" if name else "weight" for name in prunable_weights(self.model)}
        total = 0
        for key, tensor in state.items():
            if key in pruned:
                total += int(torch.count_nonzero(tensor)) * tensor.element_size() + (tensor.numel() + 7) // 8
            else:
                total += tensor.numel() * tensor.element_size()
        return total

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """A member file `load_member` reads back with the same outputs (needs the original's registered
        factory)."""
        from ..io import save_member

        original = self.original
        if original is None or original.factory is None:
            raise InvalidInputError(
                "saving a compressed model needs the original as a member with a registered factory "
                "(compress(load_member(path), ...)); save the state dict yourself otherwise"
            )
        kwargs = {
            "model": original.factory,
            "model_kwargs": original.factory_kwargs,
            "method": self.method,
            "params": self.params,
        }
        member = TorchMember(
            self.model,
            name=f"{original.name}_{self.method}",
            task=original.task,
            classes=original.classes,
            factory="compressed",
            factory_kwargs=kwargs,
        )
        return save_member(member, path, overwrite=overwrite)


def compress(model: nn.Module | TorchMember, method: str, **params) -> Compressed:
    """Compress a model (or a torch member, which can then be saved) with a method of `COMPRESSORS`; the
    argument is not changed.

    Example:
        >>> small = compress(load_member("student.safetensors"), "int4", group_size=32)
        >>> small.size_bytes, small.save("student_int4.safetensors")
    """
    original = model if isinstance(model, TorchMember) else None
    module = model.module if isinstance(model, TorchMember) else model
    if not isinstance(module, nn.Module):
        raise InvalidInputError(f"only torch models can be compressed, got {type(module).__name__}")
    return Compressed(apply_compression(module, method, params).eval(), method, dict(params), original)
