"""Model splicing: a trained backbone cut at a named layer, with a new head on top."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .._checks import checked
from .._modules import output_width, truncate
from ..errors import CheckpointError, InvalidInputError
from ..io.factory import MAX_ARGUMENT_ITEMS, build_named_model
from ..members import TorchMember
from ..models import MODELS

__all__ = ["Spliced", "splice", "spliced_member", "spliced_model"]


class Spliced(nn.Module):
    """`head(backbone(x))`: a plain module whose state dict keys start with `backbone.` and `head.`."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@checked
def splice(
    backbone: nn.Module,
    head: int | nn.Module | Callable[[int], nn.Module],
    *,
    at: str,
    example_input: torch.Tensor,
) -> Spliced:
    """Cut a copy of `backbone` after its module `at` and attach `head`.

    Args:
        backbone: a trained model (left unchanged: the spliced model holds a copy).
        head: the number of outputs (a new `Flatten + Linear`), a function of the cut's flattened width that
            returns the head, or a ready module.
        at: the name of the last module kept (as in `backbone.named_modules()`); an unknown name lists them.
        example_input: a small batch the backbone accepts; the head's input width comes from a dry forward.

    Example:
        >>> model = splice(pretrained_cnn, 5, at="9", example_input=data.train.X[:4])
    """
    trunk = truncate(copy.deepcopy(backbone), at)
    width = output_width(trunk, example_input, f"the backbone cut at {at!r}")
    if isinstance(head, int):
        head = nn.Sequential(nn.Flatten(), nn.Linear(width, head))
    elif not isinstance(head, nn.Module):
        head = head(width)
    model = Spliced(trunk, head)
    try:
        output_width(model, example_input, "the spliced model")
    except InvalidInputError as err:
        raise InvalidInputError(f"the head does not take the cut's output (flattened width {width}): {err}") from None
    return model


def spliced_member(backbone: TorchMember, num_outputs: int, *, at: str, example_input: torch.Tensor) -> TorchMember:
    """`splice` for a saved member: the backbone cut after `at` with a new `num_outputs` head, as a member whose
    file rebuilds itself (the registered factory "spliced" rebuilds the backbone from its own factory).

    Example:
        >>> member = spliced_member(load_member("cnn.safetensors"), 5, at="8", example_input=data.train.X[:2])
        >>> save_member(member, "spliced.safetensors")
    """
    if backbone.factory is None:
        raise InvalidInputError(
            f"member {backbone.name!r} was saved without a registered factory, so a spliced file could not rebuild "
            "it; splice the module in Python (`splice`) and save its state dict"
        )
    model = splice(backbone.module, num_outputs, at=at, example_input=example_input)
    kwargs = {
        "backbone": backbone.factory,
        "backbone_kwargs": backbone.factory_kwargs,
        "at": at,
        "num_outputs": num_outputs,
        "in_features": int(example_input[0].numel()),
        "input_shape": list(example_input.shape[1:]),
    }
    return TorchMember(model, name=f"{backbone.name}_spliced", factory="spliced", factory_kwargs=kwargs)


@MODELS.register("spliced")
def spliced_model(
    backbone: str,
    backbone_kwargs: Mapping,
    at: str,
    num_outputs: int,
    in_features: int,
    input_shape: list[int] | None = None,
) -> nn.Module:
    """A factory for checkpoints of spliced models (registered as "spliced"): rebuilds the backbone from its
    own factory, cuts it and adds a `num_outputs` head, so `load_member` restores the weights. The backbone
    factory must be registered too, with arguments checked like a file's: a checkpoint never names code to run.
    For any other backbone, rebuild with `splice(your_backbone, ...)` and load the weights with load_state_dict.
    `input_shape` is one sample's shape for backbones that take images (`[3, 32, 32]`), else `[in_features]`.
    A file naming "spliced" imports this module (the entry point `spliced` of `modelfusion.models`).
    """
    shape = list(input_shape) if input_shape else [in_features]
    if not all(isinstance(d, int) and 0 < d <= MAX_ARGUMENT_ITEMS for d in shape) or math.prod(shape) != in_features:
        raise CheckpointError(f"a spliced checkpoint's input_shape {shape} does not hold {in_features} features")
    trunk = build_named_model(backbone, backbone_kwargs, "a spliced checkpoint's backbone")
    return splice(trunk, num_outputs, at=at, example_input=torch.zeros(2, *shape))
