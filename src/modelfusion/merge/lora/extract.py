"""Extracting a LoRA adapter from a fine-tune (what mergekit-extract-lora does): each weight matrix's change from
the base model, cut to its best rank-r approximation by SVD, one tensor at a time; with the error reported.

As mergekit: `B = U sqrt(S)`, `A = sqrt(S) V^T` with `lora_alpha = r` (scale 1); embeddings and the output head
are stored whole (`modules_to_save`) unless `embeddings="lora"`; tensors that are not matrices (norms) are stored
whole; a changed bias of a decomposed layer is stored as PEFT's `lora_B.bias`. Unlike mergekit, tensors the
fine-tune left unchanged are not stored at all, and layers are found by their tensors' names, not by an
architecture table, so any safetensors model works.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..._checks import PositiveInt, checked
from ...errors import ConfigError
from .adapter import AdapterConfig, LoraAdapter, write_adapter
from .low_rank import factorize

__all__ = ["extract_lora", "LoraExtraction", "REPORT_NAME"]

REPORT_NAME = "extraction.json"
# Input and output embeddings, found by name: stored whole by default, as mergekit does.
_EMBEDDING_HINTS = ("embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings", "embed_in", "lm_head")
_INPUT_EMBEDDINGS = ("embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings", "embed_in")


@dataclass
class LoraExtraction:
    """The extracted adapter and how well it reconstructs the fine-tune.

    Attributes:
        adapter: the adapter.
        errors: per decomposed tensor, `||delta - B A||_F / ||delta||_F`.
        norms: per decomposed tensor, `||delta||_F`.
        rank: the rank asked for.
        stored_whole: tensors stored whole (embeddings, norms), which reconstruct exactly.
        path: where the adapter was written.
    """

    adapter: LoraAdapter
    errors: dict[str, float]
    norms: dict[str, float]
    rank: int
    stored_whole: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def overall_error(self) -> float:
        """The relative Frobenius error over all decomposed tensors together."""
        total = sum(n * n for n in self.norms.values())
        lost = sum((self.errors[k] * self.norms[k]) ** 2 for k in self.errors)
        return math.sqrt(lost / total) if total > 0 else 0.0

    def report(self) -> dict:
        errors = list(self.errors.values())
        return {
            "rank": self.rank,
            "decomposed_tensors": len(errors),
            "overall_relative_error": self.overall_error,
            "mean_relative_error": sum(errors) / len(errors) if errors else 0.0,
            "max_relative_error": max(errors, default=0.0),
            "stored_whole": self.stored_whole,
            "relative_errors": self.errors,
        }

    def summary(self) -> str:
        report = self.report()
        worst = max(self.errors, key=self.errors.get, default=None)
        return (
            f"rank {self.rank}: {report['decomposed_tensors']} matrices decomposed, {len(self.stored_whole)} tensors "
            f"stored whole; reconstruction error (relative Frobenius) overall {report['overall_relative_error']:.4f}, "
            f"mean {report['mean_relative_error']:.4f}, worst {report['max_relative_error']:.4f}"
            + (f" ({worst})" if worst else "")
        )


@dataclass
class _Changes:
    """What a fine-tune changed, tensor by tensor: low-rank updates of weight matrices (with their layouts,
    reconstruction errors and norms), tensors stored whole, and bias deltas of decomposed layers; the settings of
    `extract_lora` say which is which."""

    rank: int
    embeddings: str
    svd: str
    min_singular_value: float
    updates: dict = field(default_factory=dict)
    layouts: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    norms: dict = field(default_factory=dict)
    full: dict = field(default_factory=dict)
    bias: dict = field(default_factory=dict)
    whole: list = field(default_factory=list)

    def _store_whole(self, name: str, tensor: torch.Tensor) -> None:
        self.full[name] = tensor
        self.whole.append(name)

    def add_weight(self, name: str, shape, old: torch.Tensor, new: torch.Tensor) -> None:
        delta = new.float() - old.float()
        if not bool(delta.any()):
            return  # unchanged: nothing to store
        embedding = any(hint in name for hint in _EMBEDDING_HINTS)
        if embedding and self.embeddings == "skip":
            return
        if len(shape) != 2 or not name.endswith(".weight") or (embedding and self.embeddings == "whole"):
            self._store_whole(name, new)
            return
        # an input embedding's update is stored transposed by PEFT (lora_embedding_A [r, vocab]); the factors of
        # the [vocab, dim] update are the same, `write_adapter` transposes them
        self.updates[name], self.errors[name] = factorize(
            delta, self.rank, svd=self.svd, min_singular_value=self.min_singular_value
        )
        self.layouts[name] = "embedding" if any(hint in name for hint in _INPUT_EMBEDDINGS) else "linear"
        self.norms[name] = float(delta.double().norm())

    def add_bias(self, name: str, old: torch.Tensor, new: torch.Tensor) -> None:
        """A decomposed layer's changed bias is a delta; another changed bias is stored whole."""
        if torch.equal(old, new):
            return
        if name.removesuffix(".bias") + ".weight" in self.updates:
            self.bias[name] = new.float() - old.float()
        elif not (any(hint in name for hint in _EMBEDDING_HINTS) and self.embeddings == "skip"):
            self._store_whole(name, new)


@checked
def extract_lora(
    base: str | os.PathLike,
    finetune: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    rank: PositiveInt,
    embeddings: Literal["whole", "lora", "skip"] = "whole",
    svd: Literal["exact", "randomized"] = "exact",
    min_singular_value: float = 0.0,
    overwrite: bool = False,
) -> LoraExtraction:
    """A rank-`rank` LoRA adapter that turns `base` into (approximately) `finetune`, with its reconstruction error.

    Args:
        base, finetune: safetensors checkpoints (files or Hugging Face folders) of one architecture.
        out_dir: where to write the adapter (a PEFT folder, with `extraction.json`: the errors); None keeps it in
            memory.
        rank: the largest rank of each update.
        embeddings: "whole" stores changed embeddings and the output head whole (`modules_to_save`, mergekit's
            default), "lora" decomposes them too, "skip" leaves them out.
        svd: "exact" (mergekit's), or "randomized" for large matrices (much faster, nearly the same error).
        min_singular_value: directions with singular values at most this are dropped (mergekit's --sv-epsilon).

    Example:
        >>> result = extract_lora("base", "finetune", "finetune-lora", rank=32)
        >>> result.overall_error
        0.0831
    """
    from ..._atomic import check_output
    from ..compat import check_compatible
    from ..engine import Checkpoint

    if out_dir is not None:
        check_output(out_dir, kind="folder", overwrite=overwrite, inputs=[base, finetune])
    before, after = Checkpoint(base), Checkpoint(finetune)
    inventory = before.inventory()
    check_compatible({str(before.path): inventory, str(after.path): after.inventory()})
    changes = _Changes(rank, embeddings, svd, min_singular_value)
    for name, (shape, dtype) in inventory.items():
        if getattr(torch, dtype, torch.int64).is_floating_point and not name.endswith(".bias"):
            changes.add_weight(name, shape, before.read(name), after.read(name))
    for name, (_, dtype) in inventory.items():  # biases after the weights: a decomposed layer's bias is a delta
        if getattr(torch, dtype, torch.int64).is_floating_point and name.endswith(".bias"):
            changes.add_bias(name, before.read(name), after.read(name))
    updates, full, bias = changes.updates, changes.full, changes.bias
    if not updates and not full and not bias:
        raise ConfigError(f"{finetune} equals {base} in every tensor: there is no change to extract")
    config = AdapterConfig(r=rank, lora_alpha=rank, base_model_name_or_path=str(base), task_type="CAUSAL_LM")
    adapter = LoraAdapter(updates, changes.layouts, full, bias, config)
    result = LoraExtraction(adapter, changes.errors, changes.norms, rank, changes.whole)
    if out_dir is not None:
        report = json.dumps(result.report(), indent=2) + "\n"
        result.path = write_adapter(
            result.adapter, out_dir, overwrite=overwrite, inputs=[base, finetune], extra_files={REPORT_NAME: report}
        )
    return result
