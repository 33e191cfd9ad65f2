"""The streaming merge engine: K safetensors checkpoints in, one merged checkpoint out, one tensor at a time.

Inputs are opened lazily (`safetensors.safe_open`, memory-mapped); for each output tensor the engine reads
the K matching input tensors, merges them in float32, casts to the output dtype and appends the result to
the current output shard, which is written as soon as it is full. Peak memory is about K input tensors plus
one output shard, whatever the model size. The output goes to a temporary folder beside the target and is
renamed at the end, so an interrupted merge leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._atomic import atomic_dir
from ..errors import CheckpointError, ConfigError
from .compat import TensorInfo, check_compatible, compatibility_problems
from .methods import METHODS, takes_seed
from .state_dicts import tensor_seed

__all__ = ["Checkpoint", "MergePlan", "merge_checkpoints", "parse_size"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Small files worth carrying from the base model: configuration and tokenizer, never weights.
_COPY_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".md")
_COPY_MAX_BYTES = 64 * 2**20


def parse_size(size: str | int) -> int:
    """'5GB', '500MB', '1.5GiB' or a byte count -> bytes."""
    if isinstance(size, int):
        return size
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = size.strip().upper()
    number = text.rstrip("KMGIB")
    try:
        return int(float(number) * units[text[len(number) :]])
    except (KeyError, ValueError):
        raise ConfigError(f"cannot read the size {size!r}; write e.g. '5GB', '500MB' or a number of bytes") from None


class Checkpoint:
    """A safetensors checkpoint, one file or sharded with an index, opened lazily."""

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such file or folder")
        self.folder = self.path if self.path.is_dir() else self.path.parent
        files = self._shard_files()
        self._handles = {}
        self._where: dict[str, Path] = {}
        for file in files:
            try:
                handle = safe_open(str(file), framework="pt")
            except Exception as err:
                raise CheckpointError(f"{file}: cannot read it as safetensors ({err}); is the file complete?") from None
            self._handles[file] = handle
            for name in handle.keys():
                self._where[name] = file

    def _shard_files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        index = self.path / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index}: not a safetensors index ({err})") from None
            files = sorted({self.path / f for f in weight_map.values()})
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise CheckpointError(f"{index} names shards that are missing: {', '.join(missing)}")
            return files
        if (self.path / SINGLE_NAME).exists():
            return [self.path / SINGLE_NAME]
        found = sorted(self.path.glob("*.safetensors"))
        if len(found) == 1:
            return found
        raise CheckpointError(
            f"{self.path}: no {SINGLE_NAME}, no {INDEX_NAME} and {len(found)} .safetensors files; "
            "point to the weights file or to a folder with one of those"
        )

    def inventory(self) -> dict[str, TensorInfo]:
        """Name -> (shape, dtype) of every tensor, from the headers only."""
        info = {}
        for name, file in self._where.items():
            tensor_slice = self._handles[file].get_slice(name)
            dtype = tensor_slice.get_dtype()
            info[name] = (tuple(tensor_slice.get_shape()), _SAFETENSORS_DTYPES.get(dtype, dtype.lower()))
        return info

    def read(self, name: str) -> torch.Tensor:
        return self._handles[self._where[name]].get_tensor(name)


@dataclass
class MergePlan:
    """What a merge will do, checked before any tensor is read."""

    method: str
    models: list[Path]
    base: Path | None
    params: dict
    out_dtype: str | None
    num_tensors: int
    input_bytes: int
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"merge method {self.method!r} over {len(self.models)} models"]
        if self.base is not None:
            lines.append(f"  base: {self.base}")
        lines += [f"  model {i}: {path}" for i, path in enumerate(self.models)]
        lines.append(f"  parameters: {self.params or '{}'}")
        lines.append(f"  output dtype: {self.out_dtype or 'as the inputs'}")
        lines.append(f"  {self.num_tensors} tensors, {self.input_bytes / 1e6:.1f} MB read from each input")
        lines.append("  compatibility: " + ("OK" if not self.warnings else "; ".join(self.warnings)))
        return "\n".join(lines)


class _ShardWriter:
    """Collects merged tensors and writes a shard each time `max_bytes` would be exceeded."""

    def __init__(self, folder: Path, max_bytes: int, metadata: dict[str, str]) -> None:
        self.folder, self.max_bytes, self.metadata = folder, max_bytes, metadata
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        path = self.folder / f"shard-{len(self.shards):05d}.tmp"
        save_file(self.pending, str(path), metadata=self.metadata)
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        """Name the shards as Hugging Face does, and write the index when there is more than one."""
        self.flush()
        if len(self.shards) == 1:
            self.shards[0][0].rename(self.folder / SINGLE_NAME)
            return
        count = len(self.shards)
        weight_map = {}
        for i, (path, names) in enumerate(self.shards, start=1):
            final = f"model-{i:05d}-of-{count:05d}.safetensors"
            path.rename(self.folder / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _copy_small_files(source: Path, target: Path, out_dtype: str | None) -> None:
    for file in sorted(source.iterdir()):
        if not file.is_file() or file.suffix not in _COPY_SUFFIXES or file.name == INDEX_NAME:
            continue
        if file.stat().st_size > _COPY_MAX_BYTES:
            continue
        if file.name == "config.json" and out_dtype:
            config = json.loads(file.read_text())
            config["torch_dtype"] = out_dtype
            (target / file.name).write_text(json.dumps(config, indent=2) + "\n")
        else:
            shutil.copy2(file, target / file.name)


def merge_checkpoints(
    models: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    method: str,
    *,
    base: str | os.PathLike | None = None,
    params: Mapping | None = None,
    out_dtype: str | None = None,
    shard_size: str | int = "5GB",
    seed: int = 0,
    dry_run: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> MergePlan:
    """Merge safetensors checkpoints tensor by tensor into `out_dir`.

    Args:
        models: checkpoints (a .safetensors file, or a folder with model.safetensors or a sharded index).
        out_dir: the output folder (replaced atomically if it exists).
        method: a name from `METHODS`.
        base: the base checkpoint for methods that use one; its config.json and tokenizer files are copied.
        params: the method's parameters; per-model ones as lists of K values.
        out_dtype: "float32", "float16", "bfloat16" (default: each tensor keeps its input dtype).
        shard_size: the most bytes per output shard.
        seed: seed of random methods (DARE); each tensor's draws depend only on the seed and its name.
        dry_run: check compatibility and return the plan without reading or writing tensors.

    Returns:
        The `MergePlan` that was (or, with `dry_run`, would be) carried out.
    """
    merge = METHODS[method]
    if out_dtype is not None and out_dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {out_dtype!r}; valid: {', '.join(DTYPES)}")
    if not models:
        raise ConfigError("no models to merge")
    inputs = [Checkpoint(p) for p in models]
    base_checkpoint = Checkpoint(base) if base is not None else None
    labelled = {str(c.path): c for c in ([base_checkpoint] if base_checkpoint else []) + inputs}
    inventories = {label: c.inventory() for label, c in labelled.items()}
    check_compatible(inventories)
    reference = next(iter(inventories.values()))
    params = dict(params or {})
    plan = MergePlan(
        method=method,
        models=[c.path for c in inputs],
        base=base_checkpoint.path if base_checkpoint else None,
        params=params,
        out_dtype=out_dtype,
        num_tensors=len(reference),
        input_bytes=sum(
            _numel(shape) * DTYPES.get(dtype, torch.float32).itemsize for shape, dtype in reference.values()
        ),
        warnings=compatibility_problems(inventories),
    )
    if dry_run:
        return plan

    random = takes_seed(merge)
    target_dtype = DTYPES[out_dtype] if out_dtype else None
    metadata = {"format": "pt", "modelfusion.merge": json.dumps({"method": method, "params": _jsonable(params)})}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    bar_console = Console(stderr=True)
    with (
        atomic_dir(out_dir) as tmp,
        Progress(
            *columns, console=bar_console, disable=not (progress and bar_console.is_terminal), transient=True
        ) as bar,
    ):
        writer = _ShardWriter(tmp, parse_size(shard_size), metadata)
        task = bar.add_task(f"merging ({method})", total=len(reference))
        for name in reference:
            tensors = [c.read(name) for c in inputs]
            base_tensor = base_checkpoint.read(name) if base_checkpoint else None
            if tensors[0].is_floating_point():
                extra = {"seed": tensor_seed(seed, name)} if random else {}
                merged = merge(tensors, base_tensor, **params, **extra)
            else:  # integer buffers are copied, not averaged
                merged = (base_tensor if base_tensor is not None else tensors[0]).clone()
            if target_dtype is not None and merged.is_floating_point():
                merged = merged.to(target_dtype)
            writer.add(name, merged)
            del tensors, base_tensor
            bar.advance(task)
        writer.finish()
        source = base_checkpoint or inputs[0]
        if source.path.is_dir():  # a folder is a model; a lone file's neighbours may be anything
            _copy_small_files(source.folder, tmp, out_dtype)
    (console or Console(stderr=True)).print(f"merged {len(reference)} tensors -> {out_dir}", highlight=False)
    return plan


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, int | float | str | bool) or value is None else repr(value)
