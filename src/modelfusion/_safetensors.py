"""Tensors plus a JSON description in one safetensors file: how members, predictions and combiners are stored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ._atomic import atomic_path
from .errors import CheckpointError

__all__ = ["write_tensors", "read_tensors"]


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], *, key: str, description) -> Path:
    """Write `tensors` with `description` as JSON under header key `key`, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.contiguous() for k, v in tensors.items()} or {"_empty": torch.zeros(0)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={key: json.dumps(description)})
    return path


def read_tensors(path: str | os.PathLike, *, key: str | None, what: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read every tensor and the JSON under header key `key` (None when absent).

    Args:
        what: what the file should hold, for the error messages ("predictions file", "combiner file").
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k != "_empty"}
    except Exception as err:
        raise CheckpointError.unreadable(path, "safetensors", err) from None
    return tensors, (json.loads(header[key]) if key in header else None)
