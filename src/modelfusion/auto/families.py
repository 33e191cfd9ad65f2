"""The families `auto` tries, one function each: given the members and what earlier families found, the
candidates a family adds (or the reason it adds none)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..datasets import Dataset
from ..errors import ModelFusionError, first_line
from ..members import Member, TorchMember
from ..predictions import Predictions, collect_predictions
from .candidates import Candidate, member_cost, model_cost

__all__ = [
    "Context",
    "Skip",
    "members_family",
    "output_family",
    "merge_family",
    "distill_family",
    "cascade_family",
    "compress_family",
]


class Skip(Exception):
    """A family that does not apply, with the reason the log shows."""


@dataclass
class Context:
    """What every family reads: the data, the members and their predictions, and what earlier families found."""

    data: Dataset
    members: list[Member]
    val: Predictions
    test: Predictions
    seed: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    curves: dict = field(default_factory=lambda: {"interpolation": {}, "cascade": {}})
    fusion: object | None = None  # the output fusion chosen on validation (a fitted combiner), for distillation

    @property
    def torch_members(self) -> list[TorchMember]:
        return [m for m in self.members if isinstance(m, TorchMember)]

    def best_network(self) -> Candidate | None:
        """The most accurate candidate on validation that is one torch network with a registered factory (a
        member, a merge, a student): what compression starts from."""
        networks = [c for c in self.candidates if c.network is not None]
        return max(networks, key=lambda c: (c.val["accuracy"], -c.val["nll"]), default=None)


def _own_scores(proba: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from ..evaluate.metrics import classification_metrics

    metrics = classification_metrics(proba, y)
    return {"accuracy": float(metrics["accuracy"]), "nll": float(metrics["nll"])}


def _proba(model: nn.Module, X: torch.Tensor) -> np.ndarray:
    from .._modules import evaluating

    with evaluating(model), torch.no_grad():
        return torch.softmax(model(X).double(), dim=1).numpy()


def _torch_candidate(
    ctx: Context, family: str, member: TorchMember, *, export=None, stored_bytes: int | None = None, note: str = ""
) -> Candidate:
    """A candidate that is one torch network; exported as its member file unless `export` says otherwise."""
    from ..io import save_member

    model = member.module.eval()
    val_proba, test_proba = _proba(model, ctx.data.val.X), _proba(model, ctx.data.test.X)
    return Candidate(
        member.name,
        family,
        val_proba,
        test_proba,
        model_cost(model, ctx.data.test.X, stored_bytes=stored_bytes),
        export or (lambda path: save_member(member, path.with_suffix(".safetensors"))),
        _own_scores(val_proba, ctx.data.val.y.numpy()),
        note,
        network=member if export is None else None,
    )


# -- the families ---------------------------------------------------------------------------------------------
def members_family(ctx: Context) -> list[Candidate]:
    """Every member as it is."""
    from ..io import save_member

    val_proba, test_proba = ctx.val.probabilities(torch.float64).numpy(), ctx.test.probabilities(torch.float64).numpy()
    y = ctx.data.val.y.numpy()
    return [
        Candidate(
            member.name,
            "member",
            val_proba[k],
            test_proba[k],
            member_cost(member, ctx.data.test.X),
            lambda path, member=member: save_member(member, path),
            _own_scores(val_proba[k], y),
            network=member if isinstance(member, TorchMember) and member.factory else None,
        )
        for k, member in enumerate(ctx.members)
    ]


def output_family(ctx: Context) -> list[Candidate]:
    """Every output combiner, fitted on validation; their validation scores are 5-fold cross-validated on it
    (`choose_combiner`), so that fitting on validation does not flatter them; the fusion chosen there (by NLL)
    becomes the teacher of the distillation family."""
    from ..ensemble import combiners_for, fuse_and_evaluate

    if len(ctx.members) < 2:
        raise Skip("one member: nothing to fuse")
    run = fuse_and_evaluate(ctx.val, ctx.test, combiners_for("classification"), seed=ctx.seed)
    if run.choice is None:
        raise Skip("too few validation samples per class to cross-validate the combiners")
    ctx.fusion = run.combiners[run.choice.name]
    latencies = {c.name: c.cost["latency_batch_1_us"] for c in ctx.candidates if c.family == "member"}
    sizes = {c.name: c.cost["bytes"] for c in ctx.candidates if c.family == "member"}
    candidates = []
    for name, combiner in run.combiners.items():
        used = _members_used(combiner, ctx.val.member_names)
        candidates.append(
            Candidate(
                name,
                "output",
                combiner.fuse(ctx.val).double().numpy(),
                combiner.fuse(ctx.test).double().numpy(),
                {
                    "parameters": None,
                    "bytes": sum(sizes[m] or 0 for m in used),
                    "latency_batch_1_us": sum(latencies[m] for m in used),  # members run one after another
                    "forward_passes": len(used),
                },
                lambda path, combiner=combiner: _export_fusion(ctx, combiner, path),
                dict(run.choice.scores[name]),
                f"fitted on validation; its validation scores are 5-fold cross-validated ({run.choice.reason()})"
                if name == run.choice.name
                else "fitted on validation; its validation scores are 5-fold cross-validated",
            )
        )
    return candidates


def _members_used(combiner, names: Sequence[str]) -> list[str]:
    weights = getattr(combiner, "weights_", None)
    if isinstance(weights, torch.Tensor) and weights.ndim == 1 and len(weights) == len(names):
        return [n for n, w in zip(names, weights.tolist(), strict=True) if w != 0]
    return list(names)


def _export_fusion(ctx: Context, combiner, path: Path) -> Path:
    """An `EnsembleModule` folder when every member is a torch model with a factory; otherwise the members'
    files and the combiner (`modelfusion.auto.save_fusion`, read back by `load_fusion`)."""
    from ..ensemble import EnsembleModule
    from .export import save_fusion

    if all(isinstance(m, TorchMember) and m.factory for m in ctx.members):
        return EnsembleModule(ctx.members, combiner, vectorize=False).save(path)
    return save_fusion(ctx.members, combiner, path)


def merge_family(ctx: Context) -> list[Candidate]:
    """Weight averaging of the members that share an architecture: plainly, and after aligning their hidden
    units to the first (weight matching, Ainsworth et al. 2022), for members trained apart."""
    from ..align import align, interpolation_curve
    from ..ensemble.module import same_architecture
    from ..merge.soups import uniform_soup

    groups: dict[str, list[TorchMember]] = {}
    for member in ctx.torch_members:
        if member.factory:
            key = json.dumps([member.factory, member.factory_kwargs], sort_keys=True, default=str)
            groups.setdefault(key, []).append(member)
    group = max(groups.values(), key=len, default=[])
    if len(group) < 2 or not same_architecture([m.module for m in group]):
        raise Skip("members differ in architecture (no two torch members share one)")
    models = [m.module.eval() for m in group]
    candidates = []

    def add(name: str, merged: nn.Module, note: str) -> None:
        member = TorchMember(merged, name=name, factory=group[0].factory, factory_kwargs=group[0].factory_kwargs)
        candidates.append(_torch_candidate(ctx, "merge", member, note=note))

    add(f"average of {len(models)}", uniform_soup(models), f"the mean of {', '.join(m.name for m in group)}'s weights")
    try:
        aligned = align(models, X=ctx.data.train.X[:1024], seed=ctx.seed).models
    except ModelFusionError as err:  # an architecture the spec derivation does not cover: say so, go on
        ctx.curves.setdefault("notes", []).append(f"merge: alignment skipped ({first_line(err, 120)})")
    else:
        add(f"aligned average of {len(models)}", uniform_soup(aligned), "weights averaged after weight matching")
        ctx.curves["interpolation"][f"{group[0].name} -> {group[1].name} (aligned)"] = interpolation_curve(
            aligned[0], aligned[1], ctx.data.val
        )
    ctx.curves["interpolation"][f"{group[0].name} -> {group[1].name}"] = interpolation_curve(
        models[0], models[1], ctx.data.val
    )
    return candidates


def distill_family(ctx: Context) -> list[Candidate]:
    """The fusion chosen on validation distilled into one network (Hinton et al. 2015): the architecture of the
    best torch member (by validation), or the dataset's recipe when the members are not torch models; offline
    (the fusion's probabilities on the training split), so scikit-learn members teach too."""
    from ..distill import OfflineTeacher, distill
    from ..io.factory import build_named_model
    from ..training import recipe_for

    if ctx.fusion is None:
        raise Skip("no output fusion was chosen to distill")
    by_name = {c.name: c for c in ctx.candidates if c.family == "member"}
    torch_members = [m for m in ctx.torch_members if m.factory and m.name in by_name]
    recipe = recipe_for(ctx.data)
    if torch_members:
        best = max(torch_members, key=lambda m: by_name[m.name].val["accuracy"])
        factory, kwargs, source = best.factory, dict(best.factory_kwargs or {}), f"the architecture of {best.name}"
    else:
        factory, kwargs, source = recipe.factory, recipe.factory_kwargs(ctx.data), f"the {recipe.name} recipe"
    train = collect_predictions(ctx.members, ctx.data.train.X, ctx.data.train.y, "train", progress=False)
    torch.manual_seed(ctx.seed)
    student = build_named_model(factory, kwargs, "the student")
    student = distill(
        student,
        OfflineTeacher(train, combiner=ctx.fusion),
        ctx.data.train,
        ctx.data.val,
        epochs=recipe.epochs,
        lr=recipe.lr,
        seed=ctx.seed,
        progress=False,
    ).student.eval()
    member = TorchMember(student, name=f"student of {ctx.fusion.name}", factory=factory, factory_kwargs=kwargs)
    note = f"{source}, {recipe.epochs} epochs of Hinton distillation; the epoch chosen on validation"
    return [_torch_candidate(ctx, "distill", member, note=note)]


def cascade_family(ctx: Context) -> list[Candidate]:
    """The cheapest member first, the chosen fusion for the samples it is unsure of (a confidence cascade);
    thresholds chosen on validation to reach the fusion's validation accuracy at the least cost."""
    from ..features.cascade import Cascade

    members = [c for c in ctx.candidates if c.family == "member"]
    fusion = next((c for c in ctx.candidates if ctx.fusion is not None and c.name == ctx.fusion.name), None)
    if fusion is None or len(members) < 2:
        raise Skip("no output fusion to fall back on")
    # the fastest members (within 1.5x of the fastest: timings vary from run to run), the most accurate of them
    fastest = min(c.cost["latency_batch_1_us"] for c in members)
    quick = [c for c in members if c.cost["latency_batch_1_us"] <= 1.5 * fastest]
    cheap = max(quick, key=lambda c: (c.val["accuracy"], -c.val["nll"]))
    costs = [cheap.cost["latency_batch_1_us"], fusion.cost["latency_batch_1_us"]]

    def stages(first: np.ndarray, last: np.ndarray, y: torch.Tensor, split: str) -> Predictions:
        logits = torch.log(torch.from_numpy(np.stack([first, last])).clamp_min(1e-12)).float()
        return Predictions(logits, y, (cheap.name, fusion.name), "classification", split)

    val = stages(cheap.val_proba, fusion.val_proba, ctx.data.val.y, "val")
    test = stages(cheap.test_proba, fusion.test_proba, ctx.data.test.y, "test")
    cascade = Cascade(costs=costs).fit(val)
    routed_val, routed_test = cascade.route(val), cascade.route(test)
    name = f"cascade {cheap.name} -> {fusion.name}"
    ctx.curves["cascade"][name] = cascade.curve(val)
    val_proba = routed_val.proba.numpy()
    candidate = Candidate(
        name,
        "cascade",
        val_proba,
        routed_test.proba.numpy(),
        {
            "parameters": None,
            "bytes": (cheap.cost["bytes"] or 0) + (fusion.cost["bytes"] or 0),
            "latency_batch_1_us": routed_test.mean_cost,  # mean over the test samples
            "forward_passes": float(1 + (routed_test.stage > 0).double().mean() * fusion.cost["forward_passes"]),
        },
        None,
        _own_scores(val_proba, ctx.data.val.y.numpy()),
        f"threshold {cascade.thresholds_[0]:.3f} chosen on validation (where it is scored in-sample); no export",
    )
    return [candidate]


def compress_family(ctx: Context) -> list[Candidate]:
    """The best single network on validation quantized (`int8`), and with half its units pruned and then
    recovered by distillation from it (a quarter of the recipe's epochs)."""
    from ..compress import compress, recover
    from ..training import recipe_for

    best = ctx.best_network()
    if best is None or best.network is None:
        raise Skip("no single torch network with a registered factory among the candidates to compress")
    member, X = best.network, ctx.data.train.X

    def candidate(result, name: str, note: str) -> Candidate:
        compressed = TorchMember(result.model, name=name, factory=None)
        return _torch_candidate(
            ctx, "compress", compressed, export=result.save, stored_bytes=result.size_bytes, note=note
        )

    small = compress(member, "int8", X=X)
    chosen = list(small.params["kernels"].values())
    kernels = ", ".join(f"{chosen.count(k)} on {k}" for k in sorted(set(chosen)))
    note = f"int8 weights, activation ranges calibrated on train; layers on the kernel measured cheapest: {kernels}"
    candidates = [candidate(small, f"{best.name}, int8", note)]
    try:
        pruned = compress(member, "prune-structured", X=X, amount=0.5)
    except ModelFusionError as err:  # an architecture structured pruning does not cover: say so, go on
        ctx.curves.setdefault("notes", []).append(f"compress: structured pruning skipped ({first_line(err, 120)})")
        return candidates
    recipe = recipe_for(ctx.data)
    epochs = max(1, recipe.epochs // 4)
    recovered = recover(pruned, member.module, ctx.data.train, ctx.data.val, epochs=epochs, lr=recipe.lr, seed=ctx.seed)
    note = f"half the units removed (structured pruning), {epochs} epochs of recovery by distillation"
    candidates.append(candidate(recovered, f"{best.name}, half the units", note))
    return candidates
