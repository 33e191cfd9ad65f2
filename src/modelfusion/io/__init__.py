"""Loading and saving members. Loading never executes code from a checkpoint unless the caller says so.

| format | suffix | how it is read |
|---|---|---|
| safetensors state dict | `.safetensors` | `safetensors` + the registered factory its header names, or the caller's |
| PyTorch state dict | `.pt`, `.pth`, `.bin` (zip) | `torch.load(weights_only=True)` + the caller's model factory |
| scikit-learn estimator | `.skops` | skops' safe loader (types checked first) |
| TorchScript | `.pt`, `.pth`, `.ts`, `.torchscript` (zip with code/) | `torch.jit.load`, only with `trust_code=True` |
| `torch.export` program | `.pt2` | `torch.export.load`, only with `trust_code=True` |
| pickled model | `.pkl`, `.pickle`, `.joblib`, pickled or legacy `.pt` | refused, unless `trust_code=True` |
| transformers classifier | a folder (`config.json`, ...) | its own architectures only (`io.transformers`) |

TorchScript and torch.export files are programs: TorchScript runs the file's `__setstate__` code while loading
and `torch.export.load` unpickles parts of the archive, so they count as code (docs/security.md).
"""

from .loading import SUFFIXES, load_member, load_members, load_model
from .saving import save_member

__all__ = ["load_member", "load_members", "load_model", "save_member", "SUFFIXES"]
