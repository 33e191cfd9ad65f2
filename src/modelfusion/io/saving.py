"""Saving members in safe formats: torch modules as safetensors (+ factory in the header), estimators as skops."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from .._atomic import atomic_path, check_output
from .._checks import PathArg, checked
from .._safetensors import write_tensors
from ..errors import InvalidInputError
from ..members import Member, SklearnMember, TorchMember
from .factory import factory_name
from .loading import METADATA_KEY
from .onnx import OnnxModel, with_metadata
from .transformers import TransformersClassifier, save_transformers_member

__all__ = ["save_member"]


@checked
def save_member(
    member: Member | nn.Module,
    path: PathArg,
    *,
    factory: str | None = None,
    factory_kwargs: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a member atomically; `load_member(path)` reads it back. An existing file is replaced only with
    `overwrite`.

    Torch members are written as a safetensors state dict whose header records the member's name, task,
    classes and (when given here or known to the member) the factory and its arguments: the registry name of
    a factory in `modelfusion.models.MODELS`, so the file reloads without extra flags, else its
    `package.module:function`, which the reader must then pass as `factory=` to show that it trusts it.
    Scikit-learn members go to skops; transformers members to a `save_pretrained` folder (safetensors weights,
    tokenizer files, the member's classes as `id2label`).

    Returns:
        The path written (`.safetensors` or `.skops` appended when `path` has no suffix).
    """
    path = Path(path)
    if isinstance(member, nn.Module):
        member = TorchMember(member, name=path.stem)
    if isinstance(member, SklearnMember):
        import skops.io as sio

        path = path if path.suffix else path.with_suffix(".skops")
        check_output(path, kind="file", overwrite=overwrite)
        with atomic_path(path) as tmp:
            sio.dump(member.estimator, tmp)
        return path
    if not isinstance(member, TorchMember):
        raise InvalidInputError(f"cannot save member {member.name!r} of type {type(member).__name__}")
    if isinstance(member.module, TransformersClassifier):
        return save_transformers_member(member, path, overwrite=overwrite)
    metadata = {"name": member.name, "task": member.task, "classes": list(member.classes or [])}
    if isinstance(member.module, OnnxModel):
        path = path.with_suffix(".onnx")  # an ONNX graph is never written under another format's name
        check_output(path, kind="file", overwrite=overwrite)
        with atomic_path(path) as tmp:
            tmp.write_bytes(with_metadata(member.module.model_bytes, metadata))
        return path
    path = path if path.suffix else path.with_suffix(".safetensors")
    factory = factory or member.factory
    if factory is not None:
        kwargs = factory_kwargs if factory_kwargs is not None else member.factory_kwargs
        metadata.update(factory=factory_name(factory) or factory, factory_kwargs=dict(kwargs or {}))
    # Cloning breaks storage sharing (tied weights), which safetensors refuses to write.
    state = {k: v.detach().cpu().clone() for k, v in member.module.state_dict().items()}
    return write_tensors(path, state, key=METADATA_KEY, description=metadata, overwrite=overwrite)
