"""Compress, optionally recover, and measure before and after: what `modelfusion compress` runs."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..members import TorchMember
from .api import compress
from .measure import dense_bytes, measure
from .recover import recover

__all__ = ["CompressionRun", "compress_and_measure"]


@dataclass
class CompressionRun:
    """The compressed result and, for the model before and after, `measure`'s figures plus `bytes`; `mcnemar`
    compares the two on the test split (exact test on the samples one gets right and the other wrong)."""

    result: object  # Compressed or CompressedEnsemble
    before: dict
    after: dict
    mcnemar: dict

    def summary(self) -> dict:
        """Everything but the per-sample correctness lists, for report.json."""

        def figures(row: dict) -> dict:
            return {k: v for k, v in row.items() if k != "correct"}

        return {
            "method": self.result.method,
            "params": self.result.params,
            "recover_epochs": getattr(self.result, "recover_epochs", 0),
            "before": figures(self.before),
            "after": figures(self.after),
            "mcnemar": self.mcnemar,
        }


def compress_and_measure(
    model: nn.Module | TorchMember,
    method: str,
    data,
    *,
    recover_epochs: int = 0,
    seed: int = 0,
    runs: int = 20,
    **params,
) -> CompressionRun:
    """`compress(model, method, X=data.train.X, **params)`, then with `recover_epochs` a distillation from the
    uncompressed model on `data.train` (epoch chosen on `data.val`), then `measure` of both on `data.test`."""
    from ..evaluate.stats import mcnemar_exact

    if recover_epochs < 0:
        raise ConfigError(f"recover_epochs is a number of epochs (0: no recovery), got {recover_epochs}")
    module = model.module if isinstance(model, TorchMember) else model
    result = compress(model, method, X=data.train.X, **params)
    if recover_epochs:
        result = recover(result, module, data.train, data.val, epochs=recover_epochs, seed=seed)
    before = {**measure(module, data.test, runs=runs, seed=seed), "bytes": dense_bytes(module)}
    after = {**measure(result.model, data.test, runs=runs, seed=seed), "bytes": result.size_bytes}
    return CompressionRun(result, before, after, mcnemar_exact(before["correct"], after["correct"]))
