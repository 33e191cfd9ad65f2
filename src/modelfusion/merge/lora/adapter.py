"""PEFT LoRA adapters on disk: a folder with `adapter_config.json` and `adapter_model.safetensors`.

An adapter updates some tensors of a base model by low-rank products: for a Linear layer `W += s B A` with
`A` [r, in], `B` [out, r] and `s = lora_alpha / r` (`/ sqrt(r)` with rsLoRA); for an embedding (and for GPT-2's
Conv1D, `fan_in_fan_out`) the product is transposed. Here every update is held as a `LowRank` in the
orientation of the tensor it changes (`delta = left @ right`, `left` [rows, r], `right` [r, cols]), with the
scale folded in, so that merging and applying never need to know where it came from. Tensors an adapter stores
whole (`modules_to_save`, e.g. a retrained head, or a wrapped layer's `base_layer` weight) replace the base's
before its update is added; `lora_B.bias` (PEFT's `lora_bias`) is added to the base's bias.

Reading follows the rules for files a user did not write: the config is bounded and validated, every tensor's
shape and pairing is checked from the header before use, names from the file are data (never paths or patterns
that run), and every problem is one `CheckpointError`. `adapter_model.bin` (a pickle) is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..._atomic import atomic_dir
from ..._files import read_json_object
from ..._safetensors import check_readable, parse_description, read_header
from ...errors import CheckpointError, IncompatibleModelsError

__all__ = ["LowRank", "LoraAdapter", "AdapterConfig", "read_adapter", "write_adapter", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
MAX_CONFIG_BYTES = 2**20
MAX_RANK = 2**16
# The parts of a module's name PEFT patterns may hold that we read literally; a key with anything else is a
# regular expression, which we refuse rather than run (a hostile one could take forever).
_LITERAL = re.compile(r"^[A-Za-z0-9_.\-]+$")
Layout = Literal["linear", "transposed", "embedding"]
# Settings of an adapter's config that a merged or extracted adapter keeps; the others (layers_to_transform,
# exclude_modules, ...) would change which modules PEFT wraps, which the written config names itself.
_KEPT = ("task_type", "revision")


@dataclass(frozen=True)
class LowRank:
    """`delta = left @ right` ([rows, r] @ [r, cols]) in the orientation of the tensor it updates."""

    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    def delta(self, rows: slice | None = None) -> torch.Tensor:
        """The update (float32), or only its rows `rows`."""
        left = self.left if rows is None else self.left[rows]
        return left.float() @ self.right.float()


class AdapterConfig(BaseModel):
    """The fields of a PEFT LoRA config that decide what its tensors mean; the others are kept as they are."""

    model_config = ConfigDict(extra="allow")

    peft_type: Literal["LORA"] = "LORA"
    r: int = Field(8, ge=1, le=MAX_RANK)
    lora_alpha: float = Field(8.0, gt=0, allow_inf_nan=False)
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    use_dora: Literal[False] = False
    rank_pattern: dict[Annotated[str, Field(max_length=1024)], Annotated[int, Field(ge=1, le=MAX_RANK)]] = {}
    alpha_pattern: dict[Annotated[str, Field(max_length=1024)], Annotated[float, Field(gt=0, allow_inf_nan=False)]] = {}
    base_model_name_or_path: str | None = None  # shown, never opened

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _literal_keys(cls, value: dict) -> dict:
        for key in value:
            if not _LITERAL.match(key):
                raise ValueError(f"key {key[:60]!r} is a regular expression; only module names are read")
        return value

    def scale(self, module: str, rank: int) -> float:
        """PEFT's scaling of `module`'s update: its alpha over its rank (or over the rank's square root)."""
        pattern_rank = _by_module(self.rank_pattern, module)
        if pattern_rank is not None and pattern_rank != rank or pattern_rank is None and rank != self.r:
            expected = pattern_rank if pattern_rank is not None else self.r
            raise CheckpointError(f"{module}: rank {rank} in the weights but {expected} in {CONFIG_NAME}")
        alpha = _by_module(self.alpha_pattern, module) or self.lora_alpha
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)


def _by_module(pattern: Mapping[str, float], module: str):
    """The value of the longest key naming `module` or a suffix of it at a dot (PEFT's matching of plain names)."""
    keys = [k for k in pattern if module == k or module.endswith("." + k)]
    return pattern[max(keys, key=len)] if keys else None


@dataclass
class LoraAdapter:
    """A LoRA adapter in memory, keyed by the names of the base tensors it changes.

    Attributes:
        updates: base tensor name (e.g. "model.layers.0.self_attn.q_proj.weight") -> its low-rank update.
        layouts: base tensor name -> how PEFT stores its update: "linear", "transposed" (fan_in_fan_out) or
            "embedding".
        full: base tensor name -> the tensor that replaces it (modules_to_save).
        bias: base tensor name (a ".bias") -> what is added to it.
        config: the adapter's config.
        path: the folder it was read from.
    """

    updates: dict[str, LowRank]
    layouts: dict[str, Layout]
    full: dict[str, torch.Tensor] = field(default_factory=dict)
    bias: dict[str, torch.Tensor] = field(default_factory=dict)
    config: AdapterConfig = field(default_factory=AdapterConfig)
    path: Path | None = None

    def changed(self) -> set[str]:
        return set(self.updates) | set(self.full) | set(self.bias)

    def check_fits(self, inventory: Mapping[str, tuple[tuple[int, ...], str]], model: str) -> None:
        """Raise one IncompatibleModelsError listing every tensor of the adapter the model lacks or that has
        another shape there."""
        problems = []
        expected = {name: update.shape for name, update in self.updates.items()}
        expected |= {name: tuple(t.shape) for name, t in {**self.full, **self.bias}.items()}
        for name, shape in expected.items():
            if name not in inventory:
                problems.append(f"{model} has no tensor {name}")
            elif tuple(inventory[name][0]) != tuple(shape):
                problems.append(f"{name} is {tuple(inventory[name][0])} in {model} but the adapter updates {shape}")
        if problems:
            listed = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            where = self.path or "the adapter"
            raise IncompatibleModelsError(f"{where} does not fit {model}: {listed}")

    def apply(self, name: str, tensor: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """The base tensor `name` (or its rows `rows`, given as `tensor`) with this adapter's change: replaced by
        the tensor the adapter stores whole, if any, then its low-rank update or bias change added."""
        if name in self.full:
            tensor = (self.full[name] if rows is None else self.full[name][rows]).to(tensor.dtype)
        if name in self.updates:
            return (tensor.float() + self.updates[name].delta(rows)).to(tensor.dtype)
        if name in self.bias:
            change = self.bias[name] if rows is None else self.bias[name][rows]
            return (tensor.float() + change.float()).to(tensor.dtype)
        return tensor


# -- reading --------------------------------------------------------------------------------------------------
def _read_config(folder: Path) -> AdapterConfig:
    path = folder / CONFIG_NAME
    raw = read_json_object(path, "PEFT adapter config", MAX_CONFIG_BYTES)
    if raw.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type {str(raw['peft_type'])[:40]!r} is not supported; only LORA is")
    if raw.get("use_dora"):
        raise CheckpointError(f"{path}: DoRA adapters (use_dora) are not supported; merge it into its model first")
    return parse_description(AdapterConfig, raw, path, "PEFT adapter config")


_SUFFIXES = {  # a tensor's name ends -> (the pair's part, layout)
    ".lora_A.weight": ("A", "linear"),
    ".lora_B.weight": ("B", "linear"),
    ".lora_embedding_A": ("A", "embedding"),
    ".lora_embedding_B": ("B", "embedding"),
}


def read_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`).

    Example:
        >>> adapter = read_adapter("runs/my-lora")
        >>> adapter.updates["model.layers.0.self_attn.q_proj.weight"].rank
        16
    """
    from safetensors import safe_open

    folder = Path(path)
    if "\x00" in str(folder):
        raise CheckpointError(f"{str(folder)!r} holds a NUL character, which no file name can")
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "a file, not an adapter folder"
        raise CheckpointError(f"{folder}: {what} (a PEFT adapter is a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    weights = folder / WEIGHTS_NAME
    if not weights.exists() and (folder / "adapter_model.bin").exists():
        raise CheckpointError(
            f"{folder}: only {WEIGHTS_NAME} is read; adapter_model.bin is a pickle, which can run code when loaded. "
            "Convert it with PEFT (save_pretrained(..., safe_serialization=True)) where you trust it"
        )
    config = _read_config(folder)
    check_readable(weights, "PEFT adapter weights")
    header = read_header(weights)
    pairs: dict[str, dict[str, str]] = {}
    layouts: dict[str, Layout] = {}
    whole: dict[str, str] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not key.startswith(PREFIX):
            raise CheckpointError(f"{weights}: tensor {key[:120]!r} does not start with {PREFIX!r}, as PEFT's do")
        name = key[len(PREFIX) :]
        if ".lora_magnitude_vector" in name:
            raise CheckpointError(f"{weights}: DoRA magnitudes ({key[:120]!r}) are not supported")
        suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
        if suffix is not None:
            module = name[: -len(suffix)]
            part, layout = _SUFFIXES[suffix]
            pairs.setdefault(module, {})[part] = key
            layouts[module] = "transposed" if layout == "linear" and config.fan_in_fan_out else layout
        elif name.endswith(".lora_B.bias"):
            whole[name[: -len(".lora_B.bias")] + ".bias+"] = key  # a change of the bias, not a new bias
        elif ".lora_" in name:
            raise CheckpointError(f"{weights}: tensor {key[:120]!r} is no LoRA tensor this reader knows")
        else:  # stored whole; PEFT stores a wrapped layer's own weight (an embedding's) under `base_layer`
            whole[name.replace(".base_layer.", ".")] = key
        _check_entry(weights, key, entry)
    try:
        with safe_open(str(weights), framework="pt") as handle:
            adapter = _assemble(weights, handle, config, pairs, layouts, whole)
    except CheckpointError:
        raise
    except Exception as err:  # the library's own complaint about a corrupt file
        raise CheckpointError.unreadable(weights, "safetensors", err) from None
    adapter.path = folder
    return adapter


def _check_entry(weights: Path, key: str, entry) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
        raise CheckpointError(f"{weights}: tensor {key[:120]!r} has no valid header entry")
    if entry.get("dtype") not in ("F64", "F32", "F16", "BF16"):
        raise CheckpointError(f"{weights}: tensor {key[:120]!r} is {str(entry.get('dtype'))[:10]}, not floating point")


def _assemble(weights: Path, handle, config: AdapterConfig, pairs, layouts, whole) -> LoraAdapter:
    updates: dict[str, LowRank] = {}
    out_layouts: dict[str, Layout] = {}
    scales: dict[str, float] = {}
    for module, parts in pairs.items():
        if set(parts) != {"A", "B"}:
            (present,) = parts
            raise CheckpointError(f"{weights}: {module} has a lora_{present} factor but not the other one")
        shape_a = handle.get_slice(parts["A"]).get_shape()
        shape_b = handle.get_slice(parts["B"]).get_shape()
        if len(shape_a) != 2 or len(shape_b) != 2 or shape_a[0] != shape_b[1] or not 1 <= shape_a[0] <= MAX_RANK:
            raise CheckpointError(
                f"{weights}: {module}'s factors {shape_a} and {shape_b} are not [r, in] and [out, r] of one rank"
            )
        scale = config.scale(module, shape_a[0])
        scales[module] = scale
        a, b = handle.get_tensor(parts["A"]).float(), handle.get_tensor(parts["B"]).float()
        name = module + ".weight"
        if layouts[module] == "linear":
            updates[name] = LowRank(b * scale, a)  # W [out, in] += s B A
        else:
            updates[name] = LowRank(a.T.contiguous(), b.T * scale)  # W [in, out] (or [vocab, dim]) += s A^T B^T
        out_layouts[name] = layouts[module]
    full, bias = {}, {}
    for name, key in whole.items():
        tensor = handle.get_tensor(key)
        if name.endswith(".bias+"):
            module = name[: -len(".bias+")]
            if module not in scales:
                raise CheckpointError(f"{weights}: {key[:120]!r} changes the bias of a module without LoRA factors")
            bias[module + ".bias"] = tensor.float() * scales[module]
        else:
            full[name] = tensor
    return LoraAdapter(updates, out_layouts, full, bias, config)


# -- writing --------------------------------------------------------------------------------------------------
def write_adapter(
    adapter: LoraAdapter,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    inputs=(),
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write `adapter` as a PEFT folder, atomically: each update as its factors with scale 1 (`lora_alpha` equal
    to each module's rank), ranks that differ from the largest in `rank_pattern` / `alpha_pattern`, every module
    named in full in `target_modules`. `extra_files` (name -> text) go beside them (a report)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, update in adapter.updates.items():
        module = name.removesuffix(".weight")
        ranks[module] = update.rank
        layout = adapter.layouts.get(name, "linear")
        if layout == "linear":
            a, b = update.right, update.left
        else:
            a, b = update.left.T, update.right.T
        kind = ("lora_embedding_A", "lora_embedding_B") if layout == "embedding" else ("lora_A.weight", "lora_B.weight")
        tensors[f"{PREFIX}{module}.{kind[0]}"] = a.to(dtype).contiguous()
        tensors[f"{PREFIX}{module}.{kind[1]}"] = b.to(dtype).contiguous()
    for name, change in adapter.bias.items():
        tensors[f"{PREFIX}{name.removesuffix('.bias')}.lora_B.bias"] = change.to(dtype).contiguous()
    for name, tensor in adapter.full.items():
        tensors[PREFIX + name] = tensor.contiguous()
    rank = max(ranks.values(), default=1)
    different = {module: r for module, r in sorted(ranks.items()) if r != rank}
    layouts = set(adapter.layouts.values()) - {"embedding"}
    config = {
        **{k: v for k, v in adapter.config.model_extra.items() if k in _KEPT},
        "peft_type": "LORA",
        "base_model_name_or_path": adapter.config.base_model_name_or_path,
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": different,
        "alpha_pattern": different,
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": layouts == {"transposed"},
        "target_modules": sorted(ranks),
        "modules_to_save": sorted({n.rsplit(".", 1)[0] for n in adapter.full}) or None,
        "lora_bias": bool(adapter.bias),
        "lora_dropout": 0.0,
        "inference_mode": True,
    }
    with atomic_dir(out_dir, overwrite=overwrite, inputs=inputs) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out_dir)
