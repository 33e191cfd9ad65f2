"""The model factory "compressed": what a compressed member's file names, so that `load_member` rebuilds it.

A file naming "compressed" imports this module (the entry point `compressed` of `modelfusion.models`), so
loading other checkpoints imports nothing of `compress`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..io.factory import build_named_model
from ..models import MODELS
from .methods import apply_compression
from .structured import resize_tensors

__all__ = ["compressed_model"]


@MODELS.register("compressed")
def compressed_model(
    model: str, model_kwargs: Mapping, method: str, params: Mapping, shapes: Mapping | None = None
) -> nn.Module:
    """A factory for checkpoints of compressed models (registered as "compressed"): rebuilds the original from
    its own registered factory, checked like a file's, shrinks the tensors structured pruning shrank
    (`shapes`: name -> shape, never larger than the original's), and gives it the compression's structure
    (quantized layers, half precision) so that `load_member` restores the compressed weights."""
    original = build_named_model(model, model_kwargs, "a compressed checkpoint's original model")
    if shapes:
        resize_tensors(original, shapes, what="a compressed checkpoint's shapes")
    return apply_compression(original, method, dict(params), structure_only=True)
