"""Compress, optionally recover, and measure before and after: what `modelfusion compress` runs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .._atomic import atomic_dir
from .._files import safe_stem
from ..errors import ConfigError
from ..members import TorchMember
from ..results import Candidate, Cost, Results, Verdict, versions
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
    name: str = "model"  # the uncompressed model's
    config: dict = field(default_factory=dict)  # the dataset it was measured on

    @property
    def compressed_name(self) -> str:
        return f"{self.name}, {self.result.method}"

    def results(self) -> Results:
        """The run in the one results schema: the model before (family "uncompressed") and after ("compress")
        with test accuracy and NLL and their intervals, stored values, bytes and batch-1 latency
        (`details`: batch-256 latency, threads), and the compressed model tested against the uncompressed one."""

        def candidate(name: str, family: str, row: dict) -> Candidate:
            return Candidate(
                name=name,
                family=family,
                test={k: row[k] for k in ("accuracy", "nll", "accuracy_ci", "nll_ci")},
                cost=Cost(
                    parameters=row["parameters"], bytes=row["bytes"], latency_batch_1_us=row["latency_batch_1_us"]
                ),
                details={"latency_batch_256_us": row["latency_batch_256_us"], "threads": row["threads"]},
            )

        before = candidate(self.name, "uncompressed", self.before)
        after = candidate(self.compressed_name, "compress", self.after)
        recover_epochs = getattr(self.result, "recover_epochs", 0)
        return Results(
            chosen=after,
            leaderboard=[before, after.scored(p_vs_best_member=self.mcnemar["p_value"])],
            verdict=Verdict(
                best_member=before.name,
                chosen=after.name,
                p_value=self.mcnemar["p_value"],
                subject="compressed model",
                baseline="uncompressed model",
            ),
            config={"method": self.result.method, "params": self.result.params, "recover_epochs": recover_epochs}
            | self.config,
            versions=versions(),
            notes=[
                "test split only scores: accuracy and NLL with 95% percentile bootstrap intervals, McNemar's exact "
                "test of the compressed model against the uncompressed one; latency: median of warm runs on this CPU"
            ],
        )

    def save(
        self, out: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
    ) -> Path:
        """Write the compressed model (`NAME_METHOD.*`) and results.json into the folder `out`, all or nothing;
        an existing non-empty `out` is replaced only with `overwrite`, never one that is or holds an input.
        Returns the model's path."""
        out = Path(out)
        with atomic_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
            # the name comes from the file: a safe stem, never a path
            saved = self.result.save(tmp / f"{safe_stem(self.name)}_{safe_stem(self.result.method)}")
            self.results().save(tmp / "results.json")
        return out / saved.name


def compress_and_measure(
    model: nn.Module | TorchMember,
    method: str,
    data,
    *,
    recover_epochs: int = 0,
    seed: int = 0,
    runs: int = 20,
    name: str | None = None,
    **params,
) -> CompressionRun:
    """`compress(model, method=method, X=data.train.X, **params)`, then with `recover_epochs` a distillation from the
    uncompressed model on `data.train` (epoch chosen on `data.val`), then `measure` of both on `data.test`;
    `name` (default: the member's) names the model in the results and the saved file."""
    from ..evaluate.stats import mcnemar_exact

    if recover_epochs < 0:
        raise ConfigError(f"recover_epochs is a number of epochs (0: no recovery), got {recover_epochs}")
    module = model.module if isinstance(model, TorchMember) else model
    result = compress(model, method=method, X=data.train.X, **params)
    if recover_epochs:
        result = recover(result, module, data.train, data.val, epochs=recover_epochs, seed=seed)
    before = {**measure(module, data.test, runs=runs, seed=seed), "bytes": dense_bytes(module)}
    after = {**measure(result.model, data.test, runs=runs, seed=seed), "bytes": result.size_bytes}
    mcnemar = mcnemar_exact(before.pop("correct"), after.pop("correct"))
    name = name or getattr(model, "name", None) or "model"
    config = {"dataset": {"name": data.name, "seed": data.seed}}
    return CompressionRun(result, before, after, mcnemar, name=name, config=config)
