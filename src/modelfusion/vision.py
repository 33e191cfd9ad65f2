"""torchvision's ResNet and VGG classifiers, built from torch alone under torchvision's names and with its exact
state-dict layout (`conv1.weight`, `layer1.0.bn1.running_mean`, `features.0.weight`, `classifier.6.bias`...),
registered in `modelfusion.models.MODELS` as `torchvision.resnet18`, `torchvision.vgg16_bn`, ... (and `timm.resnet18`,
`timm.resnet34`, `timm.resnet50`, whose layout timm shares).

Why not import torchvision: its wheels are compiled against one torch build, and beside the pinned CPU torch it
fails to import; a checkpoint should also never need a library to pick the code that runs. These modules are
checked against torchvision 0.28 and timm 1.0 (`bench/vision_golden.py` wrote `tests/golden/vision.json`: key
names, shapes and outputs on fixed weights and inputs), so a state dict saved from torchvision or timm loads
here by registered name, and one saved here loads in torchvision. For other torchvision or timm architectures,
pass the library's own function as `factory=` (e.g. `factory="torchvision.models:efficientnet_b0"`).

Follows He et al., "Deep Residual Learning for Image Recognition" (2016), https://arxiv.org/abs/1512.03385,
and Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition" (2015),
https://arxiv.org/abs/1409.1556, as torchvision implements them (ResNet v1.5: the stride sits in the 3x3 conv).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ResNet", "VGG", "RESNET_LAYERS", "VGG_LAYERS", "FACTORIES"]


def _conv3x3(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inputs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inputs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inputs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inputs, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's `ResNet` (`[N, in_channels, H, W]` -> `[N, num_classes]`); `in_channels` other than 3 only
    changes `conv1.weight`'s shape (grayscale images)."""

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.inputs = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._layer(block, 64, layers[0])
        self.layer2 = self._layer(block, 128, layers[1], stride=2)
        self.layer3 = self._layer(block, 256, layers[2], stride=2)
        self.layer4 = self._layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for module in self.modules():  # torchvision's initialization
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inputs != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inputs, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inputs, planes, stride, downsample)]
        self.inputs = planes * block.expansion
        layers += [block(self.inputs, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """torchvision's `VGG`: conv layers (`features`), a 7x7 adaptive average pool, three linear layers."""

    def __init__(
        self, layers: list, *, batch_norm: bool, num_classes: int = 1000, dropout: float = 0.5, in_channels: int = 3
    ) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for width in layers:
            if width == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            modules.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            modules += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*modules)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():  # torchvision's initialization
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


RESNET_LAYERS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}
VGG_LAYERS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# timm's ResNets share torchvision's layout (the golden file checks it); its VGGs do not, so are not listed.
TIMM_RESNETS = ("resnet18", "resnet34", "resnet50")


def _resnet(arch: str, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    block, layers = RESNET_LAYERS[arch]
    return ResNet(block, layers, num_classes=num_classes, in_channels=in_channels)


def _vgg(arch: str, batch_norm: bool, num_classes: int = 1000, dropout: float = 0.5, in_channels: int = 3) -> VGG:
    return VGG(
        VGG_LAYERS[arch], batch_norm=batch_norm, num_classes=num_classes, dropout=dropout, in_channels=in_channels
    )


def _resnet_factory(arch: str) -> Callable[..., ResNet]:
    def build(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
        return _resnet(arch, num_classes, in_channels)

    build.__doc__ = f"torchvision's {arch} with `num_classes` outputs (random initialization)."
    return build


def _vgg_factory(arch: str, batch_norm: bool) -> Callable[..., VGG]:
    def build(num_classes: int = 1000, dropout: float = 0.5, in_channels: int = 3) -> VGG:
        return _vgg(arch, batch_norm, num_classes, dropout, in_channels)

    build.__doc__ = f"torchvision's {arch}{'_bn' if batch_norm else ''} with `num_classes` outputs."
    return build


# Registry name -> factory, registered in `modelfusion.models.MODELS`. Each takes only `num_classes` (and
# `in_channels`, `dropout` for VGG): the arguments a checkpoint may pass are plain numbers checked against these
# signatures.
FACTORIES: dict[str, Callable[..., nn.Module]] = {
    **{f"torchvision.{arch}": _resnet_factory(arch) for arch in RESNET_LAYERS},
    **{f"timm.{arch}": _resnet_factory(arch) for arch in TIMM_RESNETS},
    **{f"torchvision.{arch}": _vgg_factory(arch, False) for arch in VGG_LAYERS},
    **{f"torchvision.{arch}_bn": _vgg_factory(arch, True) for arch in VGG_LAYERS},
}
