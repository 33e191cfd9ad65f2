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

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidInputError
from ..members import TorchMember
from .methods import COMPRESSORS, Compressor, apply_compression
from .prune import prunable_weights
from .quantize import HalfPrecision, QuantizedLinear

__all__ = [
    "compress",
    "measure",
    "Compressed",
    "Compressor",
    "COMPRESSORS",
    "QuantizedLinear",
    "HalfPrecision",
    "apply_compression",
]


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


def measure(model: nn.Module, split, *, runs: int = 20) -> dict[str, float]:
    """What a (compressed) classifier costs and scores on `split`: parameters, test accuracy and NLL, and the
    median CPU latency of `runs` warm forward passes at batch 1 and batch 256 (on the threads torch has), all
    in eval mode; the model's modes are left as found."""
    import statistics
    import time

    from .._modules import evaluating, output_width
    from ..training import score_classifier

    output_width(model, split.X, "the model")  # inputs of another dataset fail here, in one line

    def latency(X: torch.Tensor) -> float:
        for _ in range(3):
            model(X)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            model(X)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    scores = score_classifier(model, split)
    with evaluating(model):
        batch_1, batch_256 = latency(split.X[:1]), latency(split.X[:256])
    return {
        "parameters": sum(t.numel() for t in model.state_dict().values()),
        "accuracy": scores["accuracy"],
        "nll": scores["loss"],
        "latency_batch_1_us": batch_1,
        "latency_batch_256_us": batch_256,
        "threads": torch.get_num_threads(),
    }
