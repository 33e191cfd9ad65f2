"""Merge methods, one module per family; each registers a `MergeMethod` in `METHODS` that describes itself.

| family | methods |
|---|---|
| `averaging` | `linear` (model soups), `model_stock`, `passthrough` |
| `interpolation` | `slerp`, `nearswap` |
| `spherical` | `nuslerp`, `multislerp`, `karcher` |
| `tsv` | `tsv` (Task Singular Vectors) |
| `wudi` | `wudi` (WUDI-merging: least interference, data-free) |
| `task_arithmetic` | `task_arithmetic`, `ties`, `dare_ties`, `dare_linear`, `breadcrumbs`, `breadcrumbs_ties`, |
| | `della`, `della_linear`, and `sce` |

`sparsify` holds the task-vector sparsifications that the task-arithmetic family configures. Arithmetic runs
in float32 (float64 when an input is float64); the result has the first input's dtype.
"""

from __future__ import annotations

from .averaging import linear, model_stock, passthrough
from .base import METHODS, MergeMethod, register_method
from .interpolation import nearswap, slerp
from .sparsify import sparsify, task_vector_blocks
from .spherical import karcher, multislerp, nuslerp
from .task_arithmetic import TaskArithmeticOptions, sce, task_arithmetic, task_arithmetic_blocks
from .tsv import tsv
from .wudi import wudi

__all__ = [
    "METHODS",
    "MergeMethod",
    "register_method",
    "linear",
    "slerp",
    "model_stock",
    "passthrough",
    "nearswap",
    "nuslerp",
    "multislerp",
    "karcher",
    "sce",
    "tsv",
    "wudi",
    "task_arithmetic",
    "TaskArithmeticOptions",
    "task_arithmetic_blocks",
    "sparsify",
    "task_vector_blocks",
]
