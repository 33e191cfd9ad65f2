"""`compress`: a model, a member or an ensemble compressed by a registered method, and what it saves as."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._checks import checked
from .._deprecation import keyword_only
from ..errors import ConfigError, InvalidInputError
from ..io.transformers import TransformersMember
from ..members import TorchMember
from .methods import COMPRESSORS, apply_compression
from .prune import prunable_weights

__all__ = ["compress", "Compressed", "CompressedEnsemble"]


@dataclass
class Compressed:
    """A compressed model, how it was made, and what the original was (for saving a rebuildable file)."""

    model: nn.Module
    method: str
    params: dict = field(default_factory=dict)
    original: TorchMember | None = None
    recover_epochs: int = 0

    @property
    def size_bytes(self) -> int:
        """Bytes of the weights as stored: packed integers and scales, half-precision values; a Linear or
        convolution weight with zeros takes its non-zero values plus one bit per weight for where they are,
        when that is smaller than storing it dense; an ONNX model takes its file's bytes."""
        if COMPRESSORS[self.method].file_format == "onnx":
            return len(self.model.model_bytes)
        prunable = {f"{name}.weight" if name else "weight" for name in prunable_weights(self.model)}
        total = 0
        for key, tensor in self.model.state_dict().items():
            dense = tensor.numel() * tensor.element_size()
            if key in prunable:
                sparse = int(torch.count_nonzero(tensor)) * tensor.element_size() + (tensor.numel() + 7) // 8
                dense = min(dense, sparse)
            total += dense
        return total

    def as_member(self) -> TorchMember:
        """The compressed model as a member that saves to a file `load_member` reads back: with the factory
        "compressed" (which needs the original's registered factory), or as ONNX for `onnx-int8`."""
        original = self.original
        name = f"{original.name}_{self.method}" if original is not None else self.method
        task = original.task if original is not None else "classification"
        classes = original.classes if original is not None else None
        if COMPRESSORS[self.method].file_format == "onnx":
            return TorchMember(self.model, name=name, task=task, classes=classes)
        if isinstance(original, TransformersMember):
            return self._as_transformers_member(name)
        if original is None or original.factory is None:
            raise InvalidInputError(
                "saving a compressed model needs the original as a member with a registered factory "
                "(compress(load_member(path), method=...)); save the state dict yourself otherwise"
            )
        original_shapes = {key: tuple(t.shape) for key, t in original.module.state_dict().items()}
        shrunk = {
            key: list(t.shape)
            for key, t in self.model.state_dict().items()
            if key in original_shapes and tuple(t.shape) != original_shapes[key]
        }
        kwargs = {
            "model": original.factory,
            "model_kwargs": original.factory_kwargs,
            "method": self.method,
            "params": self.params,
            **({"shapes": shrunk} if shrunk else {}),
        }
        return TorchMember(
            self.model, name=name, task=task, classes=classes, factory="compressed", factory_kwargs=kwargs
        )

    def _as_transformers_member(self, name: str) -> TorchMember:
        """A transformers member compressed to half precision, as a transformers member (saved as a folder whose
        weights are float16 or bfloat16); other methods replace layers with ones transformers cannot load."""
        from .quantize import HalfPrecision

        if not isinstance(self.model, HalfPrecision):
            raise InvalidInputError(
                f"a transformers model compressed with {self.method} is measured but cannot be saved: its layers have "
                "no form transformers loads; use --method fp16 or bf16 to save a transformers folder"
            )
        original = self.original
        return type(original)(
            self.model.model,
            name=name,
            task=original.task,
            classes=original.classes,
            num_outputs=original.num_outputs,
            batch_size=original.batch_size,
        )

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """A member file `load_member` reads back with the same outputs (`.onnx` for `onnx-int8`; a transformers
        folder for a transformers member in half precision)."""
        from ..io import save_member

        return save_member(self.as_member(), path, overwrite=overwrite)


@dataclass
class CompressedEnsemble:
    """An `EnsembleModule` whose members were compressed one by one; the combiner is kept as fitted."""

    model: nn.Module  # an EnsembleModule
    method: str
    params: dict
    members: list[Compressed]

    @property
    def size_bytes(self) -> int:
        combiner = sum(t.nbytes for t in self.model.combiner.fitted_state().values() if isinstance(t, torch.Tensor))
        return sum(member.size_bytes for member in self.members) + combiner

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """A folder `EnsembleModule.load` reads back."""
        return self.model.save(path, overwrite=overwrite)


@keyword_only("method")
@checked
def compress(
    model: nn.Module | TorchMember, *, method: str, X: torch.Tensor | None = None, **params
) -> Compressed | CompressedEnsemble:
    """Compress a model (or a torch member, which can then be saved) with a method of `COMPRESSORS`; `X`
    (training inputs) for the methods that need them (`COMPRESSORS[method].needs_inputs`: int8's activation
    ranges, Wanda's input norms, structured pruning's graph trace, the ONNX export). An `EnsembleModule` is
    compressed member by member (its combiner kept) into a `CompressedEnsemble`. The argument is not changed.
    `method` by position (`compress(model, "int4")`) still works, with a `DeprecationWarning`.

    Example:
        >>> small = compress(load_member("student.safetensors"), method="int4", group_size=32)
        >>> small.size_bytes, small.save("student_int4.safetensors")
    """
    from ..ensemble import EnsembleModule

    if isinstance(model, EnsembleModule):
        if COMPRESSORS[method].file_format != "safetensors":
            raise ConfigError(f"an ensemble's members cannot be compressed with {method!r}; compress them one by one")
        originals = [
            TorchMember(module, name=name, task=model.task, factory=factory, factory_kwargs=kwargs)
            for name, module, (factory, kwargs) in zip(model.member_names, model.members, model.factories, strict=True)
        ]
        parts = [compress(original, method=method, X=X, **params) for original in originals]
        members = [part.as_member() if part.original.factory else part.model for part in parts]
        ensemble = EnsembleModule(members, model.combiner, task=model.task, vectorize=False).eval()
        return CompressedEnsemble(ensemble, method, dict(params), parts)
    original = model if isinstance(model, TorchMember) else None
    module = model.module if isinstance(model, TorchMember) else model
    if not isinstance(module, nn.Module):
        raise InvalidInputError(f"only torch models can be compressed, got {type(module).__name__}")
    if X is not None:
        from .._modules import output_width

        output_width(module, X, "the model")  # inputs of another dataset fail here, in one line
    compressed = apply_compression(module, method, params, X=X).eval()
    records = COMPRESSORS[method].records
    return Compressed(compressed, method, {**params, **(records(compressed) if records else {})}, original)
