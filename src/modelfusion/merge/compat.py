"""Compatibility of checkpoints before merging: names, shapes and dtypes, every mismatch reported by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..errors import IncompatibleModelsError

__all__ = ["TensorInfo", "compatibility_problems", "check_compatible", "check_finite"]

# (shape, dtype name) of one tensor, read from a header without loading data.
TensorInfo = tuple[tuple[int, ...], str]
_EMBEDDING_HINTS = ("embed", "lm_head", "wte", "word_embeddings")
MAX_LISTED = 10


def compatibility_problems(inventories: Mapping[str, Mapping[str, TensorInfo]]) -> list[str]:
    """Every difference between the models' tensors, against the first model, one line each."""
    names = list(inventories)
    reference_name, reference = names[0], inventories[names[0]]
    problems = []
    for other_name in names[1:]:
        other = inventories[other_name]
        missing = [k for k in reference if k not in other]
        extra = [k for k in other if k not in reference]
        if missing:
            problems.append(f"{other_name} lacks {len(missing)} tensors of {reference_name}: {_listed(missing)}")
        if extra:
            problems.append(f"{other_name} has {len(extra)} tensors that {reference_name} lacks: {_listed(extra)}")
        for key in reference:
            if key not in other:
                continue
            (shape_a, dtype_a), (shape_b, dtype_b) = reference[key], other[key]
            if shape_a != shape_b:
                vocab = any(h in key for h in _EMBEDDING_HINTS) and shape_a[1:] == shape_b[1:]
                hint = (
                    f" (vocabulary sizes differ: {shape_a[0]} vs {shape_b[0]}; the models use different "
                    "tokenizers, so their embeddings cannot be merged row by row)"
                    if vocab
                    else ""
                )
                problems.append(f"{key}: shape {shape_a} in {reference_name} but {shape_b} in {other_name}{hint}")
            elif dtype_a != dtype_b:
                problems.append(f"{key}: dtype {dtype_a} in {reference_name} but {dtype_b} in {other_name}")
    return problems


def check_compatible(inventories: Mapping[str, Mapping[str, TensorInfo]]) -> None:
    """Raise one `IncompatibleModelsError` listing every mismatch (dtype differences are allowed: merging
    computes in float32 and casts)."""
    problems = [p for p in compatibility_problems(inventories) if ": dtype " not in p]
    if problems:
        raise IncompatibleModelsError(
            f"the models cannot be merged tensor by tensor ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def check_finite(name: str, merged: torch.Tensor, inputs: Callable[[], Mapping[str, torch.Tensor]]) -> None:
    """Refuse a merged tensor that holds NaN or inf, naming the input that does, or the arithmetic that overflowed.

    `inputs` gives the tensors the merge read for it, by model label; it is called only when the check fails.
    """
    # A finite sum means every entry is finite (NaN and inf propagate through it); summing is a tenth of the
    # cost of `isfinite(...).all()`, which is asked only when the sum is not finite (an overflowing sum too).
    if not merged.is_floating_point() or bool(torch.isfinite(merged.sum())) or bool(torch.isfinite(merged).all()):
        return
    culprits = [label for label, tensor in inputs().items() if not bool(torch.isfinite(tensor).all())]
    cause = (
        f"{_listed(culprits)} {'holds' if len(culprits) == 1 else 'hold'} NaN or inf in it"
        if culprits
        else "its inputs are finite, so the merge's arithmetic overflowed (check the weights and scales)"
    )
    raise IncompatibleModelsError(
        f"the merged tensor {name!r} holds NaN or inf: {cause}; fix them, or allow non-finite values "
        "(--allow-nonfinite, allow_nonfinite=True) to write it anyway"
    )
