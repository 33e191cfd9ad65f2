"""Saving fitted combiners without pickle: tensors in safetensors, everything else as JSON in its header.

A scikit-learn estimator inside a combiner (stacking's meta-learner) is stored as skops bytes in a uint8
tensor and read back with skops' safe loader, so loading a combiner never runs code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._safetensors import read_tensors, write_tensors
from ..errors import CheckpointError
from .base import Combiner

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


def _decode(spec: dict, tensors: dict[str, torch.Tensor], registry) -> Any:
    if "combiner" in spec:
        return _build(spec["combiner"], tensors, registry)
    if "tensor" in spec:
        tensor = tensors[spec["tensor"]]
        return tensor.numpy() if spec.get("numpy") else tensor
    if "skops" in spec:
        from ..io.loading import load_skops

        return load_skops(tensors[spec["skops"]].numpy().tobytes(), label=f"combiner attribute {spec['skops']!r}")
    if "dict" in spec:
        return {k: _decode(v, tensors, registry) for k, v in spec["dict"].items()}
    if "list" in spec:
        items = [_decode(v, tensors, registry) for v in spec["list"]]
        return tuple(items) if spec["tuple"] else items
    return spec["json"]


def _describe(combiner: Combiner, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    return {
        "name": combiner.name,
        "params": {k: _encode(v, f"{prefix}params.{k}", tensors) for k, v in combiner.get_params().items()},
        "fitted": {k: _encode(v, f"{prefix}{k}", tensors) for k, v in combiner.fitted_state().items()},
    }


def _build(description: dict, tensors: dict[str, torch.Tensor], registry) -> Combiner:
    params = {k: _decode(v, tensors, registry) for k, v in description["params"].items()}
    combiner = registry[description["name"]](**params)
    for attr, spec in description["fitted"].items():
        setattr(combiner, attr, _decode(spec, tensors, registry))
    return combiner


def combiner_to_tensors(combiner: Combiner) -> tuple[dict[str, torch.Tensor], dict]:
    """A fitted combiner as (tensors, JSON-able description)."""
    tensors: dict[str, torch.Tensor] = {}
    return tensors, _describe(combiner, "", tensors)


def combiner_from_tensors(tensors: dict[str, torch.Tensor], description: dict) -> Combiner:
    from . import COMBINERS

    return _build(description, tensors, COMBINERS)


def save_combiner(combiner: Combiner, path: str | os.PathLike) -> Path:
    """Save a fitted combiner as one safetensors file (atomically); `load_combiner` reads it back."""
    tensors, description = combiner_to_tensors(combiner)
    return write_tensors(path, tensors, key=_METADATA_KEY, description=description)


def load_combiner(path: str | os.PathLike) -> Combiner:
    """Read a combiner written by `save_combiner`."""
    tensors, description = read_tensors(path, key=_METADATA_KEY, what="combiner file")
    if description is None:
        raise CheckpointError(f"{path} is a safetensors file but not a saved combiner")
    return combiner_from_tensors(tensors, description)
