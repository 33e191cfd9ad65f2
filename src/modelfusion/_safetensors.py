"""Tensors plus a JSON description in one safetensors file: how members, predictions and combiners are stored.

Every reader here checks what a file dictates before acting on it: the header's length and tensor count are
bounded, the JSON description is parsed defensively and validated against a pydantic schema by its reader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from pydantic import BaseModel, ValidationError

from ._atomic import atomic_path, check_output
from ._checks import first_problem
from ._files import check_readable, open_regular
from .errors import CheckpointError

__all__ = [
    "write_tensors",
    "read_tensors",
    "read_header",
    "check_readable",
    "parse_description",
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
]

# A header declares every tensor with its name, dtype, shape and offsets (~100 bytes each). Real checkpoints
# (a shard of a 70B model: ~1,000 tensors) have headers well under 1 MB; the bounds keep parsing a hostile
# header under ~0.5 GB of memory (the safetensors library itself allows 100 MB).
MAX_HEADER_BYTES = 16 * 2**20
MAX_TENSORS = 100_000


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking its declared length against the file and the bound."""
    with open_regular(path, "safetensors file") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: cannot read it as safetensors (only {len(prefix)} bytes); is it truncated?")
        length = int.from_bytes(prefix, "little")
        size = os.fstat(file.fileno()).st_size
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise CheckpointError(
                f"{path}: cannot read it as safetensors (its header declares {length} bytes, the file has {size}, "
                f"the limit is {MAX_HEADER_BYTES}); the file may be corrupt, truncated or of another format"
            )
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:  # ValueError: not JSON, not UTF-8, or an integer too long
        raise CheckpointError.unreadable(path, "safetensors (its header is not JSON)", err) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    if len(header) > MAX_TENSORS + 1:
        raise CheckpointError(f"{path}: the header declares {len(header) - 1} tensors (at most {MAX_TENSORS})")
    return header


def write_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], *, key: str, description, overwrite: bool = False
) -> Path:
    """Write `tensors` with `description` as JSON under header key `key`, atomically; an existing file is
    replaced only with `overwrite`."""
    from safetensors.torch import save_file

    path = Path(path)
    check_output(path, kind="file", overwrite=overwrite)
    tensors = {k: v.contiguous() for k, v in tensors.items()} or {"_empty": torch.zeros(0)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={key: json.dumps(description)})
    return path


def read_tensors(path: str | os.PathLike, *, key: str | None, what: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read every tensor and the JSON object under header key `key` (None when absent).

    Args:
        what: what the file should hold, for the error messages ("predictions file", "combiner file").
    """
    from safetensors import safe_open

    path = Path(path)
    check_readable(path, what)
    metadata = read_header(path).get("__metadata__") or {}
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if k != "_empty"}
    except Exception as err:
        raise CheckpointError.unreadable(path, "safetensors", err) from None
    if not isinstance(metadata, dict) or key not in metadata:
        return tensors, None
    try:
        description = json.loads(metadata[key])
    except (TypeError, ValueError, RecursionError) as err:
        raise CheckpointError.unreadable(path, f"a {what} (its {key!r} description is not JSON)", err) from None
    if not isinstance(description, dict):
        raise CheckpointError(f"{path}: the {key!r} description is a {type(description).__name__}, not an object")
    return tensors, description


def parse_description(schema: type[BaseModel], description: dict, path: Path | str, what: str) -> BaseModel:
    """`description` validated against `schema`; a mismatch is one CheckpointError naming the field."""
    try:
        return schema.model_validate(description)
    except ValidationError as err:
        where, problem = first_problem(err)
        raise CheckpointError(f"{path}: the {what}'s field {where!r} is invalid ({problem})") from None
