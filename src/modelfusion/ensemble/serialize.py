"""Saving fitted combiners without pickle: tensors in safetensors, everything else as JSON in its header.

A scikit-learn estimator inside a combiner (stacking's meta-learner) is stored as skops bytes in a uint8
tensor and read back with skops' safe loader, so loading a combiner never runs code from the file.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._safetensors import read_tensors, write_tensors
from ..errors import CheckpointError, ModelFusionError
from ..members import check_classes
from .base import Combiner
from .registry import COMBINERS

__all__ = ["save_combiner", "load_combiner", "combiner_to_tensors", "combiner_from_tensors"]

_METADATA_KEY = "modelfusion.combiner"


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON description of `value`; tensors and estimators go into `tensors` under `key`."""
    if isinstance(value, Combiner):
        return {"combiner": _describe(value, key + ".", tensors)}
    if isinstance(value, torch.Tensor | np.ndarray):
        tensors[key] = torch.as_tensor(value).contiguous()
        return {"tensor": key, "numpy": isinstance(value, np.ndarray)}
    if hasattr(value, "fit") and hasattr(value, "get_params"):
        import skops.io as sio

        tensors[key] = torch.frombuffer(bytearray(sio.dumps(value)), dtype=torch.uint8)
        return {"skops": key}
    if isinstance(value, dict):
        return {"dict": {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {
            "list": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)],
            "tuple": isinstance(value, tuple),
        }
    if isinstance(value, np.generic):
        return {"json": value.item()}
    return {"json": value}


def _decode(spec: dict, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(spec, dict) or len(spec) not in (1, 2):
        raise CheckpointError(f"an encoded value must be an object with one kind, got {str(spec)[:80]}")
    if "combiner" in spec:
        return _build(spec["combiner"], tensors)
    if "tensor" in spec:
        tensor = _stored(spec["tensor"], tensors)
        return tensor.numpy() if spec.get("numpy") else tensor
    if "skops" in spec:
        from ..io.skops import load_skops

        stored = _stored(spec["skops"], tensors)
        return load_skops(stored.numpy().tobytes(), label=f"combiner attribute {spec['skops']!r}")
    if "dict" in spec and isinstance(spec["dict"], dict):
        return {k: _decode(v, tensors) for k, v in spec["dict"].items()}
    if "list" in spec and isinstance(spec["list"], list):
        items = [_decode(v, tensors) for v in spec["list"]]
        return tuple(items) if spec.get("tuple") else items
    if "json" in spec:
        return spec["json"]
    raise CheckpointError(f"an encoded value of unknown kind: {sorted(spec)}")


def _stored(name, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The file's tensor a description names."""
    if name not in tensors:
        raise CheckpointError(f"the description refers to a tensor {str(name)[:80]!r} the file lacks")
    return tensors[name]


def _describe(combiner: Combiner, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    return {
        "name": combiner.name,
        "params": {k: _encode(v, f"{prefix}params.{k}", tensors) for k, v in combiner.get_params().items()},
        "fitted": {k: _encode(v, f"{prefix}{k}", tensors) for k, v in combiner.fitted_state().items()},
    }


def _build(description: dict, tensors: dict[str, torch.Tensor]) -> Combiner:
    """A combiner from its description: a registered name, constructor arguments it takes, fitted attributes
    (public names ending in `_`): nothing in the file can name other code or set other attributes."""
    if not isinstance(description, dict) or not isinstance(description.get("name"), str):
        raise CheckpointError("a combiner description needs a registered 'name'")
    if not isinstance(description.get("params", {}), dict) or not isinstance(description.get("fitted", {}), dict):
        raise CheckpointError("a combiner description's 'params' and 'fitted' must be objects")
    cls = COMBINERS[description["name"]]
    params = _stored_arguments(cls, description, tensors)
    try:
        combiner = cls(**params)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"combiner {description['name']!r} rejected its stored arguments ({err})") from None
    for attr, spec in description.get("fitted", {}).items():
        if not (isinstance(attr, str) and attr.isidentifier() and attr.endswith("_") and not attr.startswith("_")):
            raise CheckpointError(f"{str(attr)[:80]!r} is not a fitted attribute (a public name ending in '_')")
        setattr(combiner, attr, _decode(spec, tensors))
    _check_fitted_state(combiner)
    return combiner


def _stored_arguments(cls: type, description: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """The constructor arguments a description stores, each one `cls` takes, of the type it annotates."""
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in description.get("params", {}) if k not in accepted or k == "self"]
    if unknown:
        raise CheckpointError(f"combiner {description['name']!r} takes no arguments {unknown[:5]}")
    params = {k: _decode(v, tensors) for k, v in description.get("params", {}).items()}
    for key, value in params.items():
        if not _of_annotated_type(value, str(accepted[key].annotation)):
            raise CheckpointError(
                f"combiner {description['name']!r}: argument {key!r} should be {accepted[key].annotation}, got "
                f"{type(value).__name__} {str(value)[:40]!r}"
            )
    return params


_NUMBER_CHECKS = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
    "Sequence[float]": lambda v: isinstance(v, list | tuple) and all(_NUMBER_CHECKS["float"](x) for x in v),
}


def _of_annotated_type(value, annotation: str) -> bool:
    """Whether a stored constructor argument has the type its (string) annotation names; arguments without
    a simple annotation (an estimator, a cross-validation splitter) pass."""
    if value is None and "None" in annotation:
        return True
    check = _NUMBER_CHECKS.get(annotation.split("|")[0].strip())
    return check is None or check(value)


def _check_fitted_state(combiner: Combiner) -> None:
    """Run the loaded combiner once on zeros shaped like its members' outputs, so that fitted values of the
    wrong type or shape fail here, naming the file, instead of at prediction time."""
    names, task = getattr(combiner, "member_names_", None), getattr(combiner, "task_", None)
    if not isinstance(names, tuple | list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError("the combiner's member_names_ must be a non-empty list of names")
    if task not in combiner.tasks:
        raise CheckpointError(f"the combiner's task_ must be one of {combiner.tasks}, got {str(task)[:40]!r}")
    classes = getattr(combiner, "classes_", None)
    if task == "classification" and (not isinstance(classes, tuple | list) or not classes):
        raise CheckpointError("a classification combiner's classes_ must be a non-empty list")
    if classes is not None:
        check_classes(classes, "the combiner")
    shape = (len(names), 2, len(classes)) if task == "classification" else (len(names), 2)
    try:
        fused = combiner._fuse(torch.zeros(shape, dtype=torch.float64), None)
    except ModelFusionError:
        return  # a combiner that needs the inputs X says so clearly at prediction time
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"the combiner's fitted values do not fit its members ({reason})") from None
    if not bool(torch.isfinite(torch.as_tensor(fused)).all()):
        raise CheckpointError("the combiner's fitted values give NaN or infinite outputs (NaN weights?)")


def combiner_to_tensors(combiner: Combiner) -> tuple[dict[str, torch.Tensor], dict]:
    """A fitted combiner as (tensors, JSON-able description)."""
    tensors: dict[str, torch.Tensor] = {}
    return tensors, _describe(combiner, "", tensors)


def combiner_from_tensors(tensors: dict[str, torch.Tensor], description: dict) -> Combiner:
    return _build(description, tensors)


def save_combiner(combiner: Combiner, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save a fitted combiner as one safetensors file (atomically); `load_combiner` reads it back. An existing
    file is replaced only with `overwrite`."""
    tensors, description = combiner_to_tensors(combiner)
    return write_tensors(path, tensors, key=_METADATA_KEY, description=description, overwrite=overwrite)


def load_combiner(path: str | os.PathLike) -> Combiner:
    """Read a combiner written by `save_combiner`; any problem with the file is one `CheckpointError`."""
    tensors, description = read_tensors(path, key=_METADATA_KEY, what="combiner file")
    if description is None:
        raise CheckpointError(f"{path} is a safetensors file but not a saved combiner")
    try:
        return combiner_from_tensors(tensors, description)
    except RecursionError:
        raise CheckpointError(f"{path}: the combiner description nests too deeply") from None
    except ModelFusionError as err:
        raise CheckpointError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from None
