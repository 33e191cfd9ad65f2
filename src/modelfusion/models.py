"""Small model factories for the embedded data, in the registry `MODELS` that checkpoints refer to by name.

A checkpoint may name only a registered factory (`"factory": "mlp"` in its header), so register your own
architectures here to make their files load without `factory=`: `MODELS.register("mynet")(mynet)`.
torchvision's ResNets and VGGs are registered too, under their names (`torchvision.resnet18`, ...: see
`modelfusion.vision`).

Every model takes flat features `[N, F]`; the CNNs reshape to their image shape inside (`ImageInput`), so CNNs,
MLPs and scikit-learn estimators can all be fed the same `X` and fused. A CNN also takes its samples already in
image form (`load_dataset(name, as_images=True)`): one recipe trains on either form of its data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .registry import Registry
from .vision import FACTORIES as VISION_FACTORIES

__all__ = ["MODELS", "mlp", "cnn2d", "cnn1d", "OutputScale", "ImageInput"]

# Families register their own factories ("spliced" in features, "compressed" in compress); the entry points of
# the group `modelfusion.models` (pyproject.toml) say which module registers a name, imported when a file names it.
MODELS: Registry = Registry("model factory", plugins="modelfusion.models")


class OutputScale(nn.Module):
    """`y = x * scale + shift`: lets a regression network predict standardized targets in original units."""

    def __init__(self, shift: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class ImageInput(nn.Module):
    """Samples as images of `shape` (channels first): takes them flat `[N, prod(shape)]` or already in that shape
    `[N, *shape]`, so a CNN reads both forms its data comes in. Holds no state: checkpoints of the `nn.Unflatten`
    it replaced load unchanged."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(size) for size in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x.shape[0], not -1: a sample of the wrong width fails here instead of becoming several samples
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _dropout(p: float) -> list[nn.Module]:
    # Dropout layers only when used, so that the layer indices of files saved without them stay valid.
    return [nn.Dropout(p)] if p else []


@MODELS.register("mlp")
def mlp(
    in_features: int,
    num_outputs: int,
    hidden: Sequence[int] = (128,),
    dropout: float = 0.0,
    target_mean: float | None = None,
    target_std: float | None = None,
    norm: Literal["batch", "layer"] | None = None,
) -> nn.Sequential:
    """A ReLU multi-layer perceptron; with `target_mean`/`target_std` its output is a regression value.

    `norm` puts a BatchNorm (Ioffe & Szegedy, 2015) or LayerNorm (Ba et al., 2016) between each hidden linear
    layer and its ReLU, as strong tabular MLPs do (Kadra et al., "Well-tuned Simple Nets Excel on Tabular
    Datasets", 2021); without it the layers sit where files saved before it expect them.
    """
    if norm not in (None, "batch", "layer"):
        raise ValueError(f"norm must be 'batch', 'layer' or None, got {norm!r}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        normalize = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[norm](size) if norm else None
        layers += [nn.Linear(width, size), *([normalize] if normalize else []), nn.ReLU(), *_dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_outputs))
    if target_mean is not None or target_std is not None:
        layers.append(OutputScale(target_mean or 0.0, target_std or 1.0))
    return nn.Sequential(*layers)


@MODELS.register("cnn2d")
def cnn2d(
    image_shape: Sequence[int] = (1, 8, 8),
    num_outputs: int = 10,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A small 2-D CNN (3x3 convs, BatchNorm, one 2x2 max-pool) for 8x8 digits given as flat 64 features;
    with `dropout`, a Dropout before each linear layer."""
    in_channels, height, width = image_shape
    c1, c2 = channels
    return nn.Sequential(
        ImageInput(image_shape),
        nn.Conv2d(in_channels, c1, 3, padding=1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *_dropout(dropout),
        nn.Linear(c2 * (height // 2) * (width // 2), hidden),
        nn.ReLU(),
        *_dropout(dropout),
        nn.Linear(hidden, num_outputs),
    )


@MODELS.register("cnn1d")
def cnn1d(
    length: int = 40,
    num_outputs: int = 10,
    channels: int = 32,
    hidden: int = 0,
    batchnorm: bool = False,
    in_channels: int = 1,
) -> nn.Sequential:
    """The 1-D CNN of the mnist1d paper: three strided conv layers (each optionally followed by BatchNorm),
    then a linear classifier, on flat inputs `[N, in_channels * length]` (or shaped `[N, in_channels, length]`)."""
    layers: list[nn.Module] = [ImageInput((in_channels, length))]
    for inputs, kernel in ((in_channels, 5), (channels, 3), (channels, 3)):
        layers.append(nn.Conv1d(inputs, channels, kernel, stride=2, padding=1))
        if batchnorm:
            layers.append(nn.BatchNorm1d(channels))
        layers.append(nn.ReLU())
    layers.append(nn.Flatten())
    with torch.no_grad():
        width = nn.Sequential(*layers)(torch.zeros(1, in_channels * length)).shape[1]
    if hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


for _name, _factory in VISION_FACTORIES.items():
    MODELS.register(_name)(_factory)
