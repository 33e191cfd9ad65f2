"""The streaming merge engine: K safetensors checkpoints in, one merged checkpoint out, one tensor at a time.

Inputs are opened lazily (`safetensors.safe_open`, memory-mapped); for each output tensor the engine reads
the K matching input tensors, merges them in float32, casts to the output dtype and appends the result to
the current output shard, which is written as soon as it is full. Peak memory is about K input tensors plus
one output shard, whatever the model size. The output goes to a temporary folder beside the target and is
renamed at the end, so an interrupted merge leaves nothing half-written.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from .._atomic import atomic_dir, check_output, check_space, jsonable
from .._checks import checked
from .._files import read_file
from .._progress import progress_bar
from .._safetensors import check_readable, read_header
from .._terminal import terminal_console
from ..errors import CheckpointError, ConfigError, IncompatibleModelsError, OutputError
from ..io.loading import METADATA_KEY as MEMBER_KEY
from .compat import TensorInfo, check_compatible, check_finite, compatibility_problems
from .lora.adapter import read_adapter
from .methods import METHODS, MergeMethod
from .state_dicts import tensor_seed

__all__ = [
    "Checkpoint",
    "AdaptedModel",
    "AdaptedCheckpoint",
    "open_checkpoint",
    "files_of",
    "MergePlan",
    "TensorSource",
    "Layout",
    "merge_checkpoints",
    "parse_size",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# safetensors' dtype codes; a dtype's name ("float32") is torch's
_DTYPE_OF_CODE = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODE_OF_DTYPE = {dtype: code for code, dtype in _DTYPE_OF_CODE.items()}
OUT_DTYPES = ("float32", "float16", "bfloat16", "float64")
# Small files worth carrying from the base model: configuration and tokenizer, never weights.
_COPY_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".md")
_COPY_MAX_BYTES = 64 * 2**20
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_INDEX_MAX_BYTES = 64 * 2**20
_CHUNK_BYTES = 8 * 2**20  # float32 bytes per block of rows: small enough that a block's temporaries stay small


def parse_size(size: str | int) -> int:
    """'5GB', '500MB', '1.5GiB' or a byte count -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    try:
        if isinstance(size, bool) or not isinstance(size, int | str):
            raise TypeError(size)
        if isinstance(size, int):
            count = size
        else:
            text = size.strip().upper()
            number = text.rstrip("KMGIB")
            count = int(float(number) * units[text[len(number) :]])
    except (KeyError, ValueError, TypeError, OverflowError):
        count = 0
    if count < 1:
        raise ConfigError(f"cannot read the size {size!r}; write a positive size, e.g. '5GB', '500MB' or 1000000")
    return count


class Checkpoint:
    """A safetensors checkpoint, one file or sharded with an index, opened lazily."""

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        if "\x00" in str(self.path):
            raise CheckpointError(f"{str(self.path)!r} holds a NUL character, which no file name can")
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such file or folder")
        self.folder = self.path if self.path.is_dir() else self.path.parent
        files = self._shard_files()
        self._handles = {}
        self._where: dict[str, Path] = {}
        for file in files:
            check_readable(file, "safetensors file")
            read_header(file)  # bounds the header before the library parses it
            try:
                handle = safe_open(str(file), framework="pt")
            except Exception as err:
                raise CheckpointError.unreadable(file, "safetensors", err) from None
            self._handles[file] = handle
            for name in handle.keys():
                if name in self._where:
                    raise CheckpointError(
                        f"{self.path}: the tensor {name!r} is in two shards, {self._where[name].name} and {file.name}; "
                        "a checkpoint holds each tensor once (remove the stale shard)"
                    )
                self._where[name] = file

    def _shard_files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        index = self.path / INDEX_NAME
        if index.exists():
            return self._indexed_shards(index)
        if (self.path / SINGLE_NAME).exists():
            return [self.path / SINGLE_NAME]
        found = sorted(self.path.glob("*.safetensors"))
        if len(found) == 1:
            return found
        raise CheckpointError(
            f"{self.path}: no {SINGLE_NAME}, no {INDEX_NAME} and {len(found)} .safetensors files; "
            "point to the weights file or to a folder with one of those"
        )

    def _indexed_shards(self, index: Path) -> list[Path]:
        """The shard files a sharded checkpoint's index names, each checked to lie inside the folder."""
        raw = read_file(index, "safetensors index", _INDEX_MAX_BYTES)
        try:
            weight_map = json.loads(raw)["weight_map"]
        except (ValueError, RecursionError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names")
        folder = self.path.resolve()
        files = sorted({self.path / f for f in weight_map.values()})
        outside = [str(f) for f in files if not f.resolve().is_relative_to(folder)]
        if outside:
            raise CheckpointError(f"{index} names shards outside its folder: {', '.join(outside)}; refused")
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {', '.join(missing)}")
        return files

    def inventory(self) -> dict[str, TensorInfo]:
        """Name -> (shape, dtype) of every tensor, from the headers only."""
        info = {}
        for name, file in self._where.items():
            tensor_slice = self._handles[file].get_slice(name)
            code = tensor_slice.get_dtype()
            dtype = _DTYPE_OF_CODE.get(code)
            info[name] = (tuple(tensor_slice.get_shape()), str(dtype).removeprefix("torch.") if dtype else code.lower())
        return info

    def metadata(self) -> dict[str, str]:
        """The `__metadata__` of the (first) file's header."""
        return dict(next(iter(self._handles.values())).metadata() or {})

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """The tensor `name`, or only its rows `rows` (read from the memory map, not the whole tensor)."""
        handle = self._handles[self._where[name]]
        return handle.get_tensor(name) if rows is None else handle.get_slice(name)[rows]


@dataclass(frozen=True)
class AdaptedModel:
    """A model with a LoRA adapter applied to it (mergekit's `model+adapter` in a config): merged as the model
    whose tensors the adapter changed, without writing that model anywhere."""

    model: Path
    adapter: Path

    def __str__(self) -> str:
        return f"{self.model}+{self.adapter}"


class AdaptedCheckpoint:
    """A checkpoint read through a PEFT LoRA adapter: each tensor the adapter changes is computed when read (its
    rows only, when only rows are read), so the adapted model is never held or written whole."""

    def __init__(self, reference: AdaptedModel) -> None:
        self.reference = reference
        self._model = Checkpoint(reference.model)
        self.adapter = read_adapter(reference.adapter)
        self.adapter.check_fits(self._model.inventory(), str(reference.model))
        self.path, self.folder = self._model.path, self._model.folder

    def inventory(self) -> dict[str, TensorInfo]:
        return self._model.inventory()

    def metadata(self) -> dict[str, str]:
        return self._model.metadata()

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        return self.adapter.apply(name, self._model.read(name, rows), rows)


ModelReference = str | os.PathLike | AdaptedModel


def open_checkpoint(reference: ModelReference) -> Checkpoint | AdaptedCheckpoint:
    """A checkpoint, or a model read through its adapter."""
    return AdaptedCheckpoint(reference) if isinstance(reference, AdaptedModel) else Checkpoint(reference)


def files_of(references) -> list:
    """The files and folders behind model references (both of an adapted model's), for the output checks."""
    files = []
    for reference in references:
        files += [reference.model, reference.adapter] if isinstance(reference, AdaptedModel) else [reference]
    return files


@dataclass
class MergePlan:
    """What a merge will do, checked before any tensor is read."""

    method: str
    models: list[Path | AdaptedModel]
    base: Path | AdaptedModel | None
    params: dict
    out_dtype: str | None
    num_tensors: int
    input_bytes: int
    warnings: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    output_refused: str | None = None  # why the output would be refused, found by a dry run
    protected: list = field(default_factory=list)  # what the output must never replace: the inputs
    config_updates: dict = field(default_factory=dict)  # keys of the copied config.json the merge changes

    def describe(self) -> str:
        lines = [f"merge method {self.method!r} over {len(self.models)} models"]
        if self.base is not None:
            lines.append(f"  base: {_shown(self.base)}")
        lines += [f"  model {i}: {_shown(path)}" for i, path in enumerate(self.models)]
        lines.append(f"  parameters: {self.params or '{}'}")
        lines.append(f"  output dtype: {self.out_dtype or 'as the inputs'}")
        lines.append(f"  {self.num_tensors} tensors, {self.input_bytes / 1e6:.2f} MB read from each input")
        if self.config_updates:
            lines.append(f"  config.json: {self.config_updates}")
        lines.append("  compatibility: " + ("OK" if not self.warnings else "; ".join(self.warnings)))
        if self.out_dir is not None:
            verdict = f"REFUSED: {self.output_refused}" if self.output_refused else "OK"
            lines.append(f"  output: {_shown(self.out_dir)}: {verdict}")
        return "\n".join(lines)


@dataclass(frozen=True)
class TensorSource:
    """Where one output tensor comes from: each merged model's tensor (checkpoint index, tensor name), the
    base's, and this tensor's parameters (None: the merge's)."""

    name: str
    inputs: tuple[tuple[int, str], ...]
    base: tuple[int, str] | None = None
    params: Mapping | None = None


# Given each checkpoint's inventory (the models', then the base's), the output tensors and their sources.
Layout = Callable[[list[Mapping[str, TensorInfo]]], list[TensorSource]]


def _shown(path: Path | AdaptedModel) -> Path | str:
    """A path relative to the working folder when it is inside it, as the user would type it."""
    if isinstance(path, AdaptedModel):
        return f"{_shown(path.model)}+{_shown(path.adapter)}"
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


class StreamingWriter:
    """Writes safetensors shards whose headers are planned before any tensor is merged.

    Every output name, shape and dtype is known from the input headers, so each shard's header (with the
    byte offsets of its tensors) is written first and each merged tensor is appended as soon as it exists:
    the writer never holds more than the tensor it is writing.
    """

    def __init__(
        self,
        folder: Path,
        layout: dict[str, tuple[tuple[int, ...], torch.dtype]],
        max_bytes: int,
        metadata: dict[str, str],
    ) -> None:
        self.folder, self.layout, self.metadata = folder, layout, metadata
        self.shards: list[list[str]] = [[]]
        size = 0
        for name, (shape, dtype) in layout.items():
            nbytes = math.prod(shape) * dtype.itemsize
            if self.shards[-1] and size + nbytes > max_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(name)
            size += nbytes
        self.total_bytes = sum(math.prod(shape) * dtype.itemsize for shape, dtype in layout.values())
        count = len(self.shards)
        self.files = (
            [SINGLE_NAME] if count == 1 else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        )
        self.shard_of = {name: i for i, names in enumerate(self.shards) for name in names}
        self._handle = None
        self._open_index = -1
        self._expected: list[str] = []
        self._remaining = 0  # bytes of the current tensor still to come (tensors may arrive in row chunks)

    def _open(self, index: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header: dict = {"__metadata__": self.metadata}
        offset = 0
        for name in self.shards[index]:
            shape, dtype = self.layout[name]
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {
                "dtype": _CODE_OF_DTYPE[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        self._handle = open(self.folder / self.files[index], "wb")  # noqa: SIM115 - closed in _open/finish
        self._handle.write(len(encoded).to_bytes(8, "little") + encoded)
        self._open_index = index
        self._expected = list(self.shards[index])

    def write(self, name: str, tensor: torch.Tensor) -> None:
        index = self.shard_of[name]
        if index != self._open_index:
            self._open(index)
        shape, dtype = self.layout[name]
        if not self._remaining:  # the first part of a new tensor
            self._remaining = math.prod(shape) * dtype.itemsize
        if self._expected[0] != name or tuple(tensor.shape[1:]) != shape[1:] or tensor.dtype != dtype:
            raise RuntimeError(f"merge wrote {name} {tuple(tensor.shape)} {tensor.dtype} out of its planned place")
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        self._handle.write(data.data)
        self._remaining -= data.nbytes
        if self._remaining <= 0:
            self._expected.pop(0)
            self._remaining = 0

    def finish(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if len(self.files) > 1:
            weight_map = {name: self.files[self.shard_of[name]] for name in self.layout}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def copy_small_files(source: Path, target: Path, out_dtype: str | None, updates: Mapping) -> None:
    """Carry the base model's configuration and tokenizer files, with `updates` (and the output dtype) in its
    config.json; a link that leads outside its folder is skipped, so a model folder cannot smuggle another
    file of the user's into the output."""
    folder = source.resolve()
    for file in sorted(source.iterdir()):
        if not file.is_file() or file.suffix not in _COPY_SUFFIXES or file.name == INDEX_NAME:
            continue
        if not file.resolve().is_relative_to(folder) or file.stat().st_size > _COPY_MAX_BYTES:
            continue
        if file.name == "config.json" and (out_dtype or updates):
            try:
                config = json.loads(read_file(file, "model config", _COPY_MAX_BYTES))
            except (ValueError, RecursionError) as err:
                raise CheckpointError(f"{file}: not valid JSON ({err}); fix or remove it") from None
            if not isinstance(config, dict):
                raise CheckpointError(f"{file}: a model config is a JSON object, got {type(config).__name__}")
            for key, value in updates.items():
                if key == "num_hidden_layers":  # under the name this architecture's config uses
                    key = next((k for k in _LAYER_COUNT_KEYS if k in config), key)
                config[key] = value
            if out_dtype:
                config["torch_dtype"] = out_dtype
            (target / file.name).write_text(json.dumps(config, indent=2) + "\n")
        else:
            shutil.copyfile(file, target / file.name)


def _return_freed_memory_promptly() -> None:
    """Have glibc serve tensor-sized buffers with mmap so that each one goes straight back to the OS on free.

    glibc raises its mmap threshold after big frees and then keeps freed tensors in its heap; over a merge
    of thousands of tensors that shows up as ~200 MB of resident memory no tensor uses (measured on the
    500M-parameter TIES merge of bench/merge.py). A fixed threshold above the block size stops that while
    the many block-sized temporaries keep being recycled from the heap. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 2 * _CHUNK_BYTES)


@checked
def merge_checkpoints(
    models: Sequence[ModelReference],
    out_dir: str | os.PathLike,
    method: str,
    *,
    base: ModelReference | None = None,
    params: Mapping | None = None,
    out_dtype: str | None = None,
    shard_size: str | int = "5GB",
    seed: int = 0,
    dry_run: bool = False,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    progress: bool = True,
    console: Console | None = None,
    layout: Layout | None = None,
    config_updates: Mapping | Callable[[], Mapping] | None = None,
    allow_nonfinite: bool = False,
) -> MergePlan:
    """Merge safetensors checkpoints tensor by tensor into `out_dir`.

    Args:
        models: checkpoints (a .safetensors file, or a folder with model.safetensors or a sharded index), or
            `AdaptedModel(model, adapter)`: a model with a PEFT LoRA adapter applied as it is read.
        out_dir: the output folder, written atomically. An existing non-empty one is replaced only with
            `overwrite`, and never one that is or holds an input (the models, the base, `inputs`).
        method: a name from `METHODS`.
        base: the base checkpoint for methods that use one; its config.json and tokenizer files are copied.
        params: the method's parameters; per-model ones as lists of K values.
        out_dtype: "float32", "float16", "bfloat16", "float64" (default: each tensor keeps its input dtype).
        shard_size: the most bytes per output shard.
        seed: seed of random methods (DARE); each tensor's draws depend only on the seed and its name.
        dry_run: check compatibility and the output, and return the plan without reading or writing tensors.
        inputs: other files of the user's the output must not replace (the config).
        layout: which input tensors make each output tensor, with what parameters (`slices`, gradients and
            filters of a config); by default every model's tensor of the same name, with `params`.
        config_updates: keys to set in the copied config.json (the layer count of a frankenmerge), or a function
            that gives them once the layout has run.
        allow_nonfinite: write merged tensors that hold NaN or inf instead of refusing them (and the merge).

    Returns:
        The `MergePlan` that was (or, with `dry_run`, would be) carried out.
    """
    plan, sources = _plan(
        models,
        out_dir,
        method=method,
        base=base,
        params=dict(params or {}),
        out_dtype=out_dtype,
        dry_run=dry_run,
        overwrite=overwrite,
        inputs=inputs,
        layout=layout,
    )
    plan.config_updates = dict((config_updates() if callable(config_updates) else config_updates) or {})
    if dry_run:
        return plan
    check_space(out_dir, plan.input_bytes)  # the merged tensors: refused now rather than when the disk fills
    _return_freed_memory_promptly()
    with atomic_dir(out_dir, overwrite=overwrite, inputs=plan.protected) as tmp, progress_bar(progress) as bar:
        _write(plan, sources, tmp, parse_size(shard_size), seed, bar, allow_nonfinite)
    (console or terminal_console(stderr=True)).print(f"merged {plan.num_tensors} tensors -> {out_dir}", highlight=False)
    return plan


@dataclass
class _Sources:
    """The opened checkpoints of a plan (the models', then the base's), each output tensor's sources, and the
    tensors the output will hold (name -> shape, dtype)."""

    checkpoints: list[Checkpoint | AdaptedCheckpoint]
    tensors: list[TensorSource]
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]]
    base: Checkpoint | AdaptedCheckpoint | None


def _plan(
    models: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    method: str,
    base: str | os.PathLike | None,
    params: dict,
    out_dtype: str | None,
    dry_run: bool,
    overwrite: bool,
    inputs: Sequence[str | os.PathLike],
    layout: Layout | None,
) -> tuple[MergePlan, _Sources]:
    """Every check that needs no tensor data (method, parameters, output, files, compatibility), and the plan."""
    merge_method = METHODS[method]
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        raise ConfigError(f"unknown dtype {out_dtype!r}; valid: {', '.join(OUT_DTYPES)}")
    if not models:
        raise ConfigError("no models to merge")
    if layout is None:
        merge_method.check(params, len(models))
    protected = [*files_of(models), *files_of([base] if base is not None else []), *inputs]
    try:
        check_output(out_dir, kind="folder", overwrite=overwrite, inputs=protected)
        refused = None
    except OutputError as err:
        if not dry_run:
            raise
        refused = str(err)
    checkpoints = [open_checkpoint(p) for p in models]
    base_checkpoint = open_checkpoint(base) if base is not None else None
    opened = checkpoints + ([base_checkpoint] if base_checkpoint else [])
    inventories = [c.inventory() for c in opened]
    if layout is None:
        order = ([len(models)] if base_checkpoint else []) + list(range(len(models)))  # the base first
        labelled = {_label(opened[i]): inventories[i] for i in order}
        check_compatible(labelled)
        warnings = compatibility_problems(labelled)
        tensors = _same_names(inventories[-1] if base_checkpoint else inventories[0], len(models), base_checkpoint)
    else:
        tensors = layout(inventories)
        _check_sources(tensors, inventories, [_label(c) for c in opened], merge_method)
        warnings = []
    out_layout = {}
    for tensor in tensors:
        index, name = tensor.base or tensor.inputs[0]  # the dtypes the output keeps: the base's, or the first's
        shape, dtype_name = inventories[index][name]
        dtype = torch_dtype(dtype_name)
        out_layout[tensor.name] = (shape, getattr(torch, out_dtype) if out_dtype and dtype.is_floating_point else dtype)
    plan = MergePlan(
        method=method,
        models=[getattr(c, "reference", c.path) for c in checkpoints],
        base=getattr(base_checkpoint, "reference", base_checkpoint.path) if base_checkpoint else None,
        params=params,
        out_dtype=out_dtype,
        num_tensors=len(tensors),
        input_bytes=sum(math.prod(shape) * dtype.itemsize for shape, dtype in out_layout.values()),
        warnings=warnings,
        out_dir=Path(out_dir),
        output_refused=refused,
        protected=protected,
    )
    return plan, _Sources(opened, tensors, out_layout, base_checkpoint)


def _label(checkpoint: Checkpoint | AdaptedCheckpoint) -> str:
    return str(getattr(checkpoint, "reference", checkpoint.path))


def _same_names(reference: Mapping[str, TensorInfo], count: int, base: Checkpoint | None) -> list[TensorSource]:
    """The default layout: each output tensor from the models' (and the base's) tensors of the same name."""
    return [
        TensorSource(name, tuple((i, name) for i in range(count)), (count, name) if base is not None else None)
        for name in reference
    ]


def _check_sources(tensors: list[TensorSource], inventories, labels: list[str], method: MergeMethod) -> None:
    """Every source tensor exists and every output tensor's sources have one shape; each tensor's parameters
    fit the method. All problems are listed, before any tensor is read."""
    problems = []
    for tensor in tensors:
        sources = [*tensor.inputs, *([tensor.base] if tensor.base else [])]
        missing = [f"{labels[i]} has no {name}" for i, name in sources if name not in inventories[i]]
        if missing:
            problems.extend(missing)
            continue
        shapes = {inventories[i][name][0] for i, name in sources}
        if len(shapes) > 1:
            problems.append(f"{tensor.name} comes from tensors of different shapes {sorted(shapes)}")
    if problems:
        listed = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise IncompatibleModelsError(f"the merge's tensors do not line up: {listed}")
    for params, count in {(json.dumps(jsonable(t.params), sort_keys=True), len(t.inputs)) for t in tensors}:
        method.check(json.loads(params), count)


def _write(
    plan: MergePlan, sources: _Sources, folder: Path, shard_bytes: int, seed: int, bar, allow_nonfinite: bool
) -> None:
    """Merge every tensor into shards in `folder`, then carry the base's small files."""
    metadata = {
        "format": "pt",
        "modelfusion.merge": json.dumps({"method": plan.method, "params": jsonable(plan.params)}),
    }
    first = sources.base or sources.checkpoints[0]
    member = _member_description(first)
    if member is not None:  # a saved member's task and factory carry over, so `load_member` reads the merge back
        metadata[MEMBER_KEY] = json.dumps({**member, "name": plan.out_dir.name})
    writer = StreamingWriter(folder, sources.layout, shard_bytes, metadata)
    task = bar.add_task(f"merging ({plan.method})", total=plan.num_tensors)
    merge_method = METHODS[plan.method]
    for tensor in sources.tensors:
        shape, dtype = sources.layout[tensor.name]
        params = plan.params if tensor.params is None else dict(tensor.params)
        blocks = _merged_blocks(tensor, shape, dtype, merge_method, params, sources, tensor_seed(seed, tensor.name))
        for block in blocks:
            block = block.to(dtype)
            if not allow_nonfinite:
                check_finite(tensor.name, block, functools.partial(_inputs_of, tensor, sources))
            writer.write(tensor.name, block)
        bar.advance(task)
    writer.finish()
    if first.path.is_dir():  # a folder is a model; a lone file's neighbours may be anything
        copy_small_files(first.folder, folder, plan.out_dtype, plan.config_updates)


def _merged_blocks(
    tensor: TensorSource,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    method: MergeMethod,
    params: dict,
    sources: _Sources,
    seed: int,
) -> Iterator[torch.Tensor]:
    """One output tensor, as blocks of rows where the method allows streaming, else whole."""
    checkpoints = sources.checkpoints

    def read(source: tuple[int, str], rows: slice | None = None) -> torch.Tensor:
        return checkpoints[source[0]].read(source[1], rows)

    if not dtype.is_floating_point:  # integer buffers are copied, not averaged
        yield read(tensor.base or tensor.inputs[0])
        return
    block_function = method.blockwise(params, tensor.base is not None)
    blockwise = method.rows_separable or block_function is not None
    row_bytes = math.prod(shape[1:]) * 4 if shape else 4
    step = max(1, _CHUNK_BYTES // max(row_bytes, 1)) if blockwise and len(shape) >= 1 else None
    # A tensor with no rows (shape [0, ...]) is still written once, empty.
    blocks = [slice(i, i + step) for i in range(0, shape[0], step)] if step and shape[0] else [None]
    extra = {"seed": seed} if method.random else {}
    if block_function is not None:
        yield from block_function(
            lambda i, rows: read(tensor.inputs[i], rows),
            (lambda rows: read(tensor.base, rows)) if tensor.base else None,
            blocks,
            len(tensor.inputs),
            numel=math.prod(shape),
            **method.resolve(params),
            **extra,
        )
        return
    for rows in blocks:
        tensors = [read(source, rows) for source in tensor.inputs]
        yield method(tensors, read(tensor.base, rows) if tensor.base else None, **params, **extra)
        del tensors


def _inputs_of(tensor: TensorSource, sources: _Sources) -> dict[str, torch.Tensor]:
    """The whole input tensors one output tensor is merged from, by checkpoint (to name a bad one)."""
    labelled = [*tensor.inputs, *([tensor.base] if tensor.base else [])]
    return {_label(sources.checkpoints[i]): sources.checkpoints[i].read(name) for i, name in labelled}


def _member_description(checkpoint: Checkpoint | AdaptedCheckpoint) -> dict | None:
    """The member description (`save_member`'s header) of a checkpoint, if it has a valid one."""
    raw = checkpoint.metadata().get(MEMBER_KEY)
    if raw is None:
        return None
    try:
        description = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{checkpoint.path}: its {MEMBER_KEY!r} description is not JSON ({err})") from None
    if not isinstance(description, dict):
        raise CheckpointError(f"{checkpoint.path}: its {MEMBER_KEY!r} description is not a JSON object")
    return description


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"tensors of dtype {name!r} cannot be merged")
    return dtype
