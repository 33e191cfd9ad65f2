"""Loading and saving members. Loading never executes code from a checkpoint unless the caller says so.

| format | suffix | how it is read |
|---|---|---|
| safetensors state dict | `.safetensors` | `safetensors` + a model factory `package.module:function` |
| PyTorch state dict | `.pt`, `.pth`, `.bin` | `torch.load(weights_only=True)` + a model factory |
| TorchScript | `.pt`, `.pth`, `.ts`, `.torchscript` (zip with code/) | `torch.jit.load` |
| `torch.export` program | `.pt2` | `torch.export.load` |
| scikit-learn estimator | `.skops` | skops' safe loader (types checked first) |
| pickled model | `.pkl`, `.pickle`, `.joblib`, pickled `.pt` | refused, unless `trust_pickle=True` |
"""

from .loading import SUFFIXES, load_member, load_model
from .saving import save_member

__all__ = ["load_member", "load_model", "save_member", "SUFFIXES"]
