"""`EnsembleModule`: torch members and a fitted combiner served as one `nn.Module`."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from torch import nn

from .._atomic import atomic_dir
from .._checks import first_problem
from .._files import read_file, unique_stems
from ..errors import CheckpointError, ConfigError, IncompatibleModelsError, InvalidInputError, NotFittedError
from ..members import TorchMember
from ..tasks import Task
from .base import Combiner
from .serialize import load_combiner, save_combiner

__all__ = ["EnsembleModule", "same_architecture", "apply_guard", "ON_REJECT"]

ON_REJECT = ("raise", "abstain")
MANIFEST_FILE = "ensemble.json"

# Whether members of one architecture run through torch.func.vmap by default. bench/ensemble_module.py
# measures it on this CPU (docs/benchmarks.md): the loop was as fast or faster there, so vmap is opt-in.
VECTORIZE_BY_DEFAULT = False


def same_architecture(modules: Sequence[nn.Module]) -> bool:
    """True when every module has the first one's class and parameter/buffer names and shapes."""

    def signature(module: nn.Module):
        return type(module), [(k, tuple(v.shape), v.dtype) for k, v in module.state_dict().items()]

    first = signature(modules[0])
    return all(signature(m) == first for m in modules[1:])


class EnsembleModule(nn.Module):
    """Torch members plus a fitted combiner: `forward(x)` returns the fused logits.

    Fused logits are the log of the fused probabilities (classification; `softmax` of them gives the
    combiner's probabilities exactly) or the fused values (regression). The combiner's `_fuse` is plain torch,
    so the module runs on any device and exports with `torch.export` when its members do (stacking only with
    a linear meta-learner, which it runs as a matrix product).

    Args:
        members: torch modules (or `TorchMember`s) in the order the combiner was fitted on.
        combiner: a fitted combiner.
        task: "classification" or "regression" (default: the combiner's).
        vectorize: run members of one architecture as one batched call (`torch.func.stack_module_state` +
            `vmap`). Default: `VECTORIZE_BY_DEFAULT` when the members share an architecture.
        guard: a fitted input guard (`modelfusion.guard.InputGuard`, or anything whose `check(x)` returns
            verdicts with `ok` and `reasons`) that screens every batch before it is answered (see
            `apply_guard`). It is not saved with the module: save it apart (`InputGuard.save`).
        on_reject: "raise" (an `InvalidInputError` naming the rejected rows and why) or "abstain" (NaN rows).

    Example:
        >>> module = EnsembleModule(torch_members, make_combiner("weighted").fit(val_preds)).eval()
        >>> fused_logits = module(x)
        >>> module.save("served/")
    """

    def __init__(
        self,
        members: Sequence[nn.Module | TorchMember],
        combiner: Combiner,
        *,
        task: Task | None = None,
        vectorize: bool | None = None,
        guard=None,
        on_reject: str = "raise",
    ) -> None:
        super().__init__()
        if on_reject not in ON_REJECT:
            raise ConfigError(f"on_reject must be one of {ON_REJECT}, got {on_reject!r}")
        self.guard, self.on_reject = guard, on_reject
        if not hasattr(combiner, "member_names_"):
            raise NotFittedError(f"combiner {combiner.name!r} is not fitted; fit it before building an EnsembleModule")
        modules, self.factories = [], []
        for member in members:
            if isinstance(member, TorchMember):
                modules.append(member.module)
                self.factories.append((member.factory, member.factory_kwargs))
            elif isinstance(member, nn.Module):
                modules.append(member)
                self.factories.append((None, {}))
            else:
                raise InvalidInputError(
                    f"EnsembleModule serves torch members only, got {type(member).__name__}; scikit-learn members "
                    "can be fused with combiners on Predictions but not traced into one nn.Module"
                )
        if len(modules) != len(combiner.member_names_):
            raise IncompatibleModelsError(
                f"got {len(modules)} members but the combiner was fitted on {len(combiner.member_names_)} "
                f"({', '.join(combiner.member_names_)})"
            )
        self.members = nn.ModuleList(modules)
        self.combiner = combiner
        self.member_names = tuple(combiner.member_names_)
        self.task = task or combiner.task_
        uniform = same_architecture(modules)
        if vectorize and not uniform:
            raise IncompatibleModelsError("vectorize=True needs members of one architecture (same class and shapes)")
        self.vectorize = uniform and (VECTORIZE_BY_DEFAULT if vectorize is None else vectorize)
        if self.vectorize:
            self._stack()

    def _stack(self) -> None:
        """Stacked copies of the members' weights for vmap (a second copy: the members stay for saving)."""
        params, buffers = torch.func.stack_module_state(list(self.members))
        self._stacked = ({k: v.detach() for k, v in params.items()}, buffers)
        self._template = copy.deepcopy(self.members[0]).to("meta")

    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output on `x`: logits `[K, N, C]` or values `[K, N]`."""
        if self.vectorize:
            params, buffers = self._stacked

            def call(p, b, inputs):
                return torch.func.functional_call(self._template, (p, b), (inputs,))

            outputs = torch.vmap(call, in_dims=(0, 0, None))(params, buffers, x)
        else:
            outputs = torch.stack([member(x) for member in self.members])
        if self.task == "regression" and outputs.ndim == 3:
            outputs = outputs[..., 0]
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.combiner._fuse(self.member_outputs(x), x if self.combiner.uses_features else None)
        if self.task != "regression":
            fused = torch.log(fused.clamp_min(torch.finfo(fused.dtype).tiny))
        return fused if self.guard is None else apply_guard(self.guard, self.on_reject, x, fused)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save into a folder (atomically): members as safetensors, the combiner, and `ensemble.json`.

        Every member needs a known factory (members built by `load_member` or given as `TorchMember` with
        `factory=`), so that `EnsembleModule.load` can rebuild it. An existing non-empty folder is replaced
        only with `overwrite`.
        """
        from ..io import save_member

        missing = [name for name, (factory, _) in zip(self.member_names, self.factories, strict=True) if not factory]
        if missing:
            raise InvalidInputError(
                f"cannot save members {missing}: their model factory is unknown; wrap them as "
                "TorchMember(module, name=..., factory='package.module:function', factory_kwargs={...})"
            )
        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            entries = []
            stems = unique_stems(self.member_names)  # names are data: the files get safe stems
            members = zip(self.member_names, stems, self.members, self.factories, strict=True)
            for name, stem, module, (factory, kwargs) in members:
                member = TorchMember(module, name=name, task=self.task, factory=factory, factory_kwargs=kwargs)
                file = save_member(member, tmp / "members" / f"{stem}.safetensors")
                entries.append({"name": name, "file": str(file.relative_to(tmp))})
            save_combiner(self.combiner, tmp / "combiner.safetensors")
            manifest = {"task": self.task, "members": entries, "combiner": "combiner.safetensors"}
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, factories: dict | None = None, vectorize: bool | None = None
    ) -> EnsembleModule:
        """Load a folder written by `save`. `factories` maps member names to factories outside modelfusion."""
        from ..io import load_member

        path = Path(path)
        manifest_path = path / MANIFEST_FILE
        if not (manifest_path.exists() or manifest_path.is_symlink()):
            raise CheckpointError(f"{path} is not a saved EnsembleModule (no ensemble.json)")
        raw = read_file(manifest_path, "ensemble manifest", _MANIFEST_MAX_BYTES)
        try:
            manifest = _Manifest.model_validate_json(raw)
        except ValidationError as err:
            where, problem = first_problem(err)
            raise CheckpointError(f"{manifest_path}: field {where!r} is invalid ({problem})") from None
        folder = path.resolve()
        files = [path / entry.file for entry in manifest.members] + [path / manifest.combiner]
        outside = [str(f) for f in files if not f.resolve().is_relative_to(folder)]
        if outside:
            raise CheckpointError(f"{manifest_path} names files outside its folder: {', '.join(outside)}; refused")
        factories = factories or {}
        members = [
            load_member(path / entry.file, factory=factories.get(entry.name), task=manifest.task, name=entry.name)
            for entry in manifest.members
        ]
        combiner = load_combiner(path / manifest.combiner)
        return cls(members, combiner, task=manifest.task, vectorize=vectorize).eval()


def apply_guard(guard, on_reject: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out` (a model's answer to `x`) after `guard.check(x)`: unchanged when every row passes; otherwise an
    `InvalidInputError` naming the first rejected rows and why ("raise"), or NaN in the rejected rows
    ("abstain": the caller finds them with `out.isnan().any(-1)`)."""
    verdicts = guard.check(x.detach().cpu())
    if bool(verdicts.ok.all()):
        return out
    rejected = [i for i, ok in enumerate(verdicts.ok) if not ok]
    if on_reject == "raise":
        shown = "; ".join(f"row {i}: {verdicts.reasons[i]}" for i in rejected[:3])
        more = f" (and {len(rejected) - 3} more)" if len(rejected) > 3 else ""
        raise InvalidInputError(f"the input guard rejected {len(rejected)} of {len(x)} rows: {shown}{more}")
    mask = torch.zeros(len(x), dtype=torch.bool, device=out.device)
    mask[rejected] = True
    return out.masked_fill(mask.reshape(-1, *([1] * (out.ndim - 1))), float("nan"))


_MANIFEST_MAX_BYTES = 16 * 2**20  # a manifest lists file names: 10,000 members take well under 1 MB


class _ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    file: StrictStr


class _Manifest(BaseModel):
    """`ensemble.json`: what `EnsembleModule.save` writes."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    members: list[_ManifestEntry] = Field(min_length=1, max_length=10_000)
    combiner: StrictStr
