"""The families `auto` tries, one function each, registered in the order `auto` runs them (`family.py`): given
the members and the results of the families it needs, the candidates a family adds (or the reason it adds
none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelFusionError, first_line
from ..io.transformers import TransformersMember
from ..members import TorchMember
from ..predictions import Predictions, collect_predictions
from .candidates import Candidate, Cost, member_cost, model_cost
from .family import FamilyResult, Inputs, Skip, family

__all__ = [
    "members_family",
    "output_family",
    "merge_family",
    "distill_family",
    "cascade_family",
    "compress_family",
]


def _own_scores(proba: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from ..evaluate.metrics import classification_metrics

    metrics = classification_metrics(proba, y)
    return {"accuracy": float(metrics["accuracy"]), "nll": float(metrics["nll"])}


def _proba(model: nn.Module, X: torch.Tensor) -> np.ndarray:
    from .._modules import evaluating

    with evaluating(model), torch.no_grad():
        return torch.softmax(model(X).double(), dim=1).numpy()


def _torch_candidate(
    ctx: Inputs, family: str, member: TorchMember, *, export=None, stored_bytes: int | None = None, note: str = ""
) -> Candidate:
    """A candidate that is one torch network; exported as its member file unless `export` says otherwise."""
    from ..io import save_member

    model = member.module.eval()
    val_proba, test_proba = _proba(model, ctx.data.val.X), _proba(model, ctx.data.test.X)
    return Candidate(
        name=member.name,
        family=family,
        val=_own_scores(val_proba, ctx.data.val.y.numpy()),
        cost=model_cost(model, ctx.data.test.X, stored_bytes=stored_bytes),
        description=note,
        val_proba=val_proba,
        test_proba=test_proba,
        export=export or (lambda path: save_member(member, path.with_suffix(".safetensors"))),
        network=member if export is None else None,
    )


def _network_recipe(data):
    """The network recipe for `data` (by its shape), or `Skip` saying why there is none (text data)."""
    from ..training import recipe_for

    try:
        return recipe_for(data)
    except ModelFusionError as err:
        raise Skip(first_line(err, 160)) from None


# -- the families ---------------------------------------------------------------------------------------------
def members_family(ctx: Inputs) -> FamilyResult:
    """Every member as it is (always tried, first: what every other family is measured against)."""
    from ..io import save_member

    val_proba, test_proba = ctx.val.probabilities(torch.float64).numpy(), ctx.test.probabilities(torch.float64).numpy()
    y = ctx.data.val.y.numpy()
    candidates = [
        Candidate(
            name=member.name,
            family="member",
            val=_own_scores(val_proba[k], y),
            cost=member_cost(member, ctx.data.test.X),
            val_proba=val_proba[k],
            test_proba=test_proba[k],
            export=lambda path, member=member: save_member(member, path),
            network=member if isinstance(member, TorchMember) and member.factory else None,
        )
        for k, member in enumerate(ctx.members)
    ]
    return FamilyResult(candidates)


@family("output")
def output_family(ctx: Inputs) -> FamilyResult:
    """Every output combiner, fitted on validation; their validation scores are 5-fold cross-validated on it
    (`choose_combiner`), so that fitting on validation does not flatter them; the fusion chosen there (by NLL)
    becomes the teacher of the distillation family."""
    from ..ensemble import combiners_for, fit_combiners

    if len(ctx.members) < 2:
        raise Skip("one member: nothing to fuse")
    combiners, _, choice = fit_combiners(ctx.val, combiners_for("classification"), seed=ctx.seed)
    if choice is None:
        raise Skip("too few validation samples per class to cross-validate the combiners")
    costs = {c.name: c.cost for c in ctx.member_candidates}
    candidates = []
    for name, combiner in combiners.items():
        used = [costs[m] for m in combiner.members_used()]
        note = "fitted on validation; its validation scores are 5-fold cross-validated"
        candidates.append(
            Candidate(
                name=name,
                family="output",
                val=dict(choice.scores[name]),
                cost=Cost(
                    parameters=None,
                    bytes=sum(c.bytes or 0 for c in used),
                    latency_batch_1_us=sum(c.latency_batch_1_us for c in used),  # members run one after another
                    forward_passes=len(used),
                ),
                description=f"{note} ({choice.reason()})" if name == choice.name else note,
                val_proba=combiner.fuse(ctx.val).double().numpy(),
                test_proba=combiner.fuse(ctx.test).double().numpy(),
                export=lambda path, combiner=combiner: _export_fusion(ctx, combiner, path),
            )
        )
    return FamilyResult(candidates, fusion=combiners[choice.name])


def _export_fusion(ctx: Inputs, combiner, path: Path) -> Path:
    """An `EnsembleModule` folder when every member is a torch model with a factory; otherwise the members'
    files and the combiner (`modelfusion.auto.save_fusion`, read back by `load_fusion`)."""
    from ..ensemble import EnsembleModule
    from ..ensemble.fusion import save_fusion

    if all(isinstance(m, TorchMember) and m.factory for m in ctx.members):
        return EnsembleModule(ctx.members, combiner, vectorize=False).save(path)
    return save_fusion(ctx.members, combiner, path)


@family("merge")
def merge_family(ctx: Inputs) -> FamilyResult:
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
    candidates, curves, search_curves, notes = [], {}, {}, []

    def add(name: str, merged: nn.Module, note: str) -> None:
        member = TorchMember(merged, name=name, factory=group[0].factory, factory_kwargs=group[0].factory_kwargs)
        candidates.append(_torch_candidate(ctx, "merge", member, note=note))

    add(f"average of {len(models)}", uniform_soup(models), f"the mean of {', '.join(m.name for m in group)}'s weights")
    try:
        aligned = align(models, X=ctx.data.train.X[:1024], seed=ctx.seed).models
    except ModelFusionError as err:  # an architecture the spec derivation does not cover: say so, go on
        notes.append(f"merge: alignment skipped ({first_line(err, 120)})")
    else:
        add(f"aligned average of {len(models)}", uniform_soup(aligned), "weights averaged after weight matching")
        search = _searched_soup(ctx, group, aligned, add)
        if isinstance(search, str):
            notes.append(search)
        else:
            search_curves.update(search)
        curves[f"{group[0].name} -> {group[1].name} (aligned)"] = interpolation_curve(
            aligned[0], aligned[1], ctx.data.val
        )
    curves[f"{group[0].name} -> {group[1].name}"] = interpolation_curve(models[0], models[1], ctx.data.val)
    return FamilyResult(candidates, curves={"interpolation": curves, "search": search_curves}, notes=tuple(notes))


def _searched_soup(ctx: Inputs, group: list[TorchMember], aligned: list[nn.Module], add) -> dict | str:
    """The aligned members' weights in their average searched on validation (`merge.search`, CMA-ES), added
    as a candidate; returns its search curve for the report, or the note saying why it was skipped."""
    from ..merge.search import search_soup

    members = [
        TorchMember(model, name=m.name, factory=m.factory, factory_kwargs=m.factory_kwargs)
        for m, model in zip(group, aligned, strict=True)
    ]
    try:
        merged, result = search_soup(members, ctx.data.val, evaluations=30, seed=ctx.seed)
    except ModelFusionError as err:  # e.g. the search extra is missing: say so, go on
        return f"merge: weight search skipped ({first_line(err, 120)})"
    weights = ", ".join(f"{v:.2f}" for v in result.settings.values())
    note = f"aligned weights searched on validation (CMA-ES, {len(result.curve)} merges): {weights}"
    add(f"searched weights of {len(aligned)} (aligned)", merged, note)
    return {  # as NLL: the search maximizes -NLL
        f"weights of {len(aligned)} aligned members": [
            {"evaluation": p["evaluation"], "value": -p["score"], "best": -p["best"]} for p in result.curve
        ]
    }


@family("distill", requires=("output",))
def distill_family(ctx: Inputs) -> FamilyResult:
    """The fusion chosen on validation distilled into one network (Hinton et al. 2015): the architecture of the
    best torch member (by validation), or the dataset's recipe when the members are not torch models; offline
    (the fusion's probabilities on the training split), so scikit-learn members teach too."""
    from ..distill import OfflineTeacher, distill
    from ..io.factory import build_named_model
    from ..training import recipe_of

    fusion = ctx.found["output"].fusion
    by_name = {c.name: c for c in ctx.member_candidates}
    torch_members = [m for m in ctx.torch_members if m.factory and m.name in by_name]
    if torch_members:
        best = max(torch_members, key=lambda m: by_name[m.name].val["accuracy"])
        factory, kwargs = best.factory, dict(best.factory_kwargs or {})
        recipe = recipe_of(factory, kwargs, ctx.data)
        source = f"the architecture of {best.name} ({recipe.name}'s settings)"
    else:
        recipe = _network_recipe(ctx.data)
        factory, kwargs, source = recipe.factory, recipe.factory_kwargs(ctx.data), f"the {recipe.name} recipe"
    train = collect_predictions(ctx.members, ctx.data.train.X, ctx.data.train.y, "train", progress=False)
    torch.manual_seed(ctx.seed)
    student = build_named_model(factory, kwargs, "the student")
    result = distill(
        student,
        OfflineTeacher(train, combiner=fusion),
        ctx.data.train,
        ctx.data.val,
        epochs=recipe.epochs,
        lr=recipe.lr,
        patience=recipe.patience,
        time_limit_s=ctx.seconds_left,  # the budget holds: the best epoch so far when it runs out
        seed=ctx.seed,
        progress=False,
    )
    student, trained = result.student.eval(), len(result.history)
    member = TorchMember(student, name=f"student of {fusion.name}", factory=factory, factory_kwargs=kwargs)
    ran = f"{trained} of {recipe.epochs}" if trained < recipe.epochs else f"{recipe.epochs}"
    note = f"{source}, {ran} epochs of Hinton distillation; the epoch chosen on validation"
    return FamilyResult([_torch_candidate(ctx, "distill", member, note=note)])


@family("cascade", requires=("output",))
def cascade_family(ctx: Inputs) -> FamilyResult:
    """The cheapest member first, the chosen fusion for the samples it is unsure of (a confidence cascade);
    thresholds chosen on validation to reach the fusion's validation accuracy at the least cost."""
    from ..features.cascade import Cascade

    members = ctx.member_candidates
    chosen = ctx.found["output"].fusion.name
    fusion = next(c for c in ctx.found["output"].candidates if c.name == chosen)
    # the fastest members (within 1.5x of the fastest: timings vary from run to run), the most accurate of them
    fastest = min(c.cost.latency_batch_1_us for c in members)
    quick = [c for c in members if c.cost.latency_batch_1_us <= 1.5 * fastest]
    cheap = max(quick, key=lambda c: (c.val["accuracy"], -c.val["nll"]))
    costs = [cheap.cost.latency_batch_1_us, fusion.cost.latency_batch_1_us]

    def stages(first: np.ndarray, last: np.ndarray, y: torch.Tensor, split: str) -> Predictions:
        logits = torch.log(torch.from_numpy(np.stack([first, last])).clamp_min(1e-12)).float()
        return Predictions(logits, y, (cheap.name, fusion.name), "classification", split)

    val = stages(cheap.val_proba, fusion.val_proba, ctx.data.val.y, "val")
    test = stages(cheap.test_proba, fusion.test_proba, ctx.data.test.y, "test")
    cascade = Cascade(costs=costs).fit(val)
    routed_val, routed_test = cascade.route(val), cascade.route(test)
    name = f"cascade {cheap.name} -> {fusion.name}"
    val_proba = routed_val.proba.numpy()
    candidate = Candidate(
        name=name,
        family="cascade",
        val=_own_scores(val_proba, ctx.data.val.y.numpy()),
        cost=Cost(
            parameters=None,
            bytes=(cheap.cost.bytes or 0) + (fusion.cost.bytes or 0),
            latency_batch_1_us=routed_test.mean_cost,  # mean over the test samples
            forward_passes=float(1 + (routed_test.stage > 0).double().mean() * fusion.cost.forward_passes),
        ),
        description=f"threshold {cascade.thresholds_[0]:.3f} chosen on validation (where it is scored in-sample); "
        "no export",
        val_proba=val_proba,
        test_proba=routed_test.proba.numpy(),
    )
    return FamilyResult([candidate], curves={"cascade": {name: cascade.curve(val)}})


@family("compress", uses=("merge", "distill"))
def compress_family(ctx: Inputs) -> FamilyResult:
    """The best single network on validation quantized (`int8`), and with half its units pruned and then
    recovered by distillation from it (a quarter of the recipe's epochs)."""
    from ..compress import compress, recover
    from ..training import recipe_of

    best = ctx.best_network()
    if best is None or best.network is None:
        transformers = [m.name for m in ctx.members if isinstance(m, TransformersMember)]
        if transformers:
            raise Skip(
                f"the transformers members ({', '.join(transformers)}) have no registered factory to rebuild a "
                "compressed copy from; compress one with `modelfusion compress FOLDER --method fp16` (or bf16)"
            )
        raise Skip("no single torch network with a registered factory among the candidates to compress")
    member, X = best.network, ctx.data.train.X

    def candidate(result, name: str, note: str) -> Candidate:
        compressed = TorchMember(result.model, name=name, factory=None)
        return _torch_candidate(
            ctx, "compress", compressed, export=result.save, stored_bytes=result.size_bytes, note=note
        )

    small = compress(member, method="int8", X=X)
    chosen = list(small.params["kernels"].values())
    kernels = ", ".join(f"{chosen.count(k)} on {k}" for k in sorted(set(chosen)))
    note = f"int8 weights, activation ranges calibrated on train; layers on the kernel measured cheapest: {kernels}"
    candidates = [candidate(small, f"{best.name}, int8", note)]
    try:
        pruned = compress(member, method="prune-structured", X=X, amount=0.5)
    except ModelFusionError as err:  # an architecture structured pruning does not cover: say so, go on
        return FamilyResult(candidates, notes=(f"compress: structured pruning skipped ({first_line(err, 120)})",))
    recipe = recipe_of(member.factory, member.factory_kwargs, ctx.data)
    epochs = max(1, recipe.epochs // 4)
    recovered = recover(pruned, member.module, ctx.data.train, ctx.data.val, epochs=epochs, lr=recipe.lr, seed=ctx.seed)
    note = f"half the units removed (structured pruning), {epochs} epochs of recovery by distillation"
    candidates.append(candidate(recovered, f"{best.name}, half the units", note))
    return FamilyResult(candidates)
