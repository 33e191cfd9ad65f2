"""Fixed weights and inputs for comparing our torchvision architectures with torchvision's and timm's own.

Imported by tests/test_vision.py and by bench/vision_golden.py's runner inside the reference venv, so it needs
torch alone. The weights are drawn per tensor from a generator seeded with the tensor's position, scaled so that
activations stay of order one through a hundred layers.
"""

import math

import torch

# (architecture, num_classes, input shape): ResNets at 64x64, VGGs at 32x32 (their adaptive pool takes any size).
CASES = {
    "torchvision.resnet18": ("torchvision", "resnet18", 10, (2, 3, 64, 64)),
    "torchvision.resnet34": ("torchvision", "resnet34", 10, (2, 3, 64, 64)),
    "torchvision.resnet50": ("torchvision", "resnet50", 10, (2, 3, 64, 64)),
    "torchvision.resnet101": ("torchvision", "resnet101", 10, (2, 3, 64, 64)),
    "torchvision.resnet152": ("torchvision", "resnet152", 10, (2, 3, 64, 64)),
    "torchvision.vgg11": ("torchvision", "vgg11", 10, (2, 3, 32, 32)),
    "torchvision.vgg11_bn": ("torchvision", "vgg11_bn", 10, (2, 3, 32, 32)),
    "torchvision.vgg13": ("torchvision", "vgg13", 10, (2, 3, 32, 32)),
    "torchvision.vgg13_bn": ("torchvision", "vgg13_bn", 10, (2, 3, 32, 32)),
    "torchvision.vgg16": ("torchvision", "vgg16", 10, (2, 3, 32, 32)),
    "torchvision.vgg16_bn": ("torchvision", "vgg16_bn", 10, (2, 3, 32, 32)),
    "torchvision.vgg19": ("torchvision", "vgg19", 10, (2, 3, 32, 32)),
    "torchvision.vgg19_bn": ("torchvision", "vgg19_bn", 10, (2, 3, 32, 32)),
    "timm.resnet18": ("timm", "resnet18", 10, (2, 3, 64, 64)),
    "timm.resnet34": ("timm", "resnet34", 10, (2, 3, 64, 64)),
    "timm.resnet50": ("timm", "resnet50", 10, (2, 3, 64, 64)),
}
# Only these have their outputs compared (the others: names and shapes), to keep the test quick.
OUTPUT_CASES = (
    "torchvision.resnet18",
    "torchvision.resnet50",
    "torchvision.vgg16",
    "torchvision.vgg11_bn",
    "timm.resnet18",
    "timm.resnet50",
)


def fixed_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for `model` that depends only on its key order and shapes."""
    state = {}
    for index, (name, tensor) in enumerate(model.state_dict().items()):
        generator = torch.Generator().manual_seed(index)
        if not tensor.is_floating_point():
            state[name] = torch.zeros_like(tensor)
        elif name.endswith("running_var"):
            state[name] = torch.rand(tensor.shape, generator=generator) + 0.5
        elif tensor.ndim == 1:
            state[name] = (torch.rand(tensor.shape, generator=generator) - 0.5) * (
                0.4 if name.endswith("bias") else 0.2
            ) + (1.0 if name.endswith("weight") else 0.0)
        else:
            fan_in = math.prod(tensor.shape[1:])
            state[name] = torch.randn(tensor.shape, generator=generator) * math.sqrt(2.0 / fan_in)
    return state


def fixed_input(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1234))
