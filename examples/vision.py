"""torchvision's ResNet-18 and VGG-16 on a folder of your own images: spliced, transferred to new classes, fused,
and saved so that the files reload by registered name with no code from them.

Runs offline with random initialization (no downloads). With your own pretrained weights, load them instead:
    resnet = load_member("resnet18.safetensors", factory="torchvision.resnet18", factory_kwargs={"num_classes": 1000})

    .venv/bin/python examples/vision.py          # about 3 minutes of CPU time (185 s measured)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from modelfusion.datasets import Split, load_data
from modelfusion.features import FeatureFusion, finetune, splice, spliced_member
from modelfusion.io import load_member, save_member
from modelfusion.members import TorchMember
from modelfusion.models import MODELS
from modelfusion.training import train_model


def write_image_folder(root: Path) -> Path:
    """Scikit-learn's digits as coloured 8x8 PNGs in class folders: root/0/17.png, ... (your folder goes here)."""
    digits = load_digits()
    colours = np.random.default_rng(0).uniform(0.3, 1.0, (len(digits.target), 3))
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        rgb = (pixels[..., None] / 16.0 * colours[index] * 255).astype(np.uint8)
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(root / str(label) / f"{index}.png")
    return root


def accuracy(model: torch.nn.Module, split: Split) -> float:
    with torch.no_grad():
        return (model.eval()(split.X).argmax(1) == split.y).float().mean().item()


def classes(split: Split, labels: range, per_class: int | None = None) -> Split:
    """The samples of `labels` (relabelled from 0), the first `per_class` of each when given."""
    keep = torch.cat([torch.nonzero(split.y == label)[:per_class, 0] for label in labels]).sort().values
    return Split(split.name, split.X[keep], split.y[keep] - labels.start)


work = Path(tempfile.mkdtemp(prefix="modelfusion-vision-"))
data = load_data(write_image_folder(work / "digits"), as_images=True, image_size=(32, 32), seed=0)
print(data.summary(), "| preprocessing:", data.preprocessing.mode, data.preprocessing.size)
old, new = range(0, 5), range(5, 10)
example = data.train.X[:2]

# 1. A torchvision ResNet-18 by registered name, trained on digits 0-4 (stands in for your pretrained backbone).
torch.manual_seed(0)
resnet = MODELS["torchvision.resnet18"](num_classes=5)
train_model(resnet, classes(data.train, old), classes(data.val, old), epochs=3, lr=1e-3, seed=0)
print(f"ResNet-18 on digits 0-4: {accuracy(resnet, classes(data.test, old)):.3f}")

# 2. Splice and transfer: cut after layer3, a new head for digits 5-9, fine-tuned from 10 images per class.
few = classes(data.train, new, per_class=10)
member = spliced_member(
    TorchMember(resnet, name="resnet18", factory="torchvision.resnet18", factory_kwargs={"num_classes": 5}),
    5,
    at="layer3",
    example_input=example,
)
result = finetune(member.module, few, classes(data.val, new), schedule="probe_then_finetune", epochs=10, lr=1e-3)
print("stages:", [(s["name"], round(s["val_accuracy"], 3)) for s in result.stages])
print(f"digits 5-9 from 50 labels: {accuracy(member.module, classes(data.test, new)):.3f}")

# The spliced file names only registered factories (spliced -> torchvision.resnet18): it reloads without code.
path = save_member(member, work / "resnet18_spliced.safetensors")
reloaded = load_member(path)
assert torch.allclose(reloaded.predict(data.test.X[:8]), member.predict(data.test.X[:8]), atol=1e-5)
print(f"saved and reloaded by registered name: {path.name}")

# 3. A VGG-16 by registered name, cut after its conv layers (the 102M-parameter classifier is dropped), and fused
#    with the ResNet's pooled features by attention under one head for digits 5-9; both backbones stay frozen.
torch.manual_seed(0)
vgg = MODELS["torchvision.vgg16"](num_classes=10)
vgg_trunk = splice(vgg, 5, at="features", example_input=example).backbone
fused = FeatureFusion(
    {"resnet18": resnet, "vgg16": vgg_trunk}, example, layers=["avgpool", None], fusion="attention", head=5
)
train_model(fused, few, classes(data.val, new), epochs=10, lr=3e-3, seed=0)
print(f"ResNet-18 + VGG-16 feature fusion, digits 5-9 from 50 labels: {accuracy(fused, classes(data.test, new)):.3f}")
