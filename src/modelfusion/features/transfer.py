"""Transfer learning: train a pretrained model on a new task in stages, each unfreezing chosen parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from .._checks import checked
from ..datasets import Split
from ..errors import ConfigError
from ..registry import Registry
from ..training import score_classifier, train_model

__all__ = ["Stage", "SCHEDULES", "finetune", "FinetuneResult", "backbone_blocks"]

SCHEDULES: Registry = Registry("fine-tuning schedule")
# ULMFiT's discriminative rates: each block one step further from the head learns 2.6x more slowly.
LAYER_DECAY = 2.6


@dataclass(frozen=True)
class Stage:
    """Train for `epochs` with `rates` (module-name prefix -> learning rate; "" is the whole model); every
    parameter outside those prefixes is frozen for the stage."""

    epochs: int
    rates: Mapping[str, float]
    name: str = ""


@dataclass
class FinetuneResult:
    """The trained model and, per stage, what trained and the validation accuracy it ended with."""

    model: nn.Module
    stages: list[dict] = field(default_factory=list)


def backbone_blocks(model: nn.Module, head: str) -> list[str]:
    """The backbone's blocks in input-to-output order: the children of `model.backbone` that have
    parameters (a `Spliced` model), else `model`'s own such children other than the head."""
    parent, prefix = model, ""
    if isinstance(getattr(model, "backbone", None), nn.Module):
        parent, prefix = model.backbone, "backbone."
    blocks = [
        prefix + name
        for name, child in parent.named_children()
        if prefix + name != head and any(True for _ in child.parameters())
    ]
    if not blocks:
        raise ConfigError(f"found no backbone blocks with parameters outside the head {head!r}")
    return blocks


@SCHEDULES.register("linear_probe")
def linear_probe(model: nn.Module, head: str, epochs: int, lr: float) -> list[Stage]:
    """Only the head trains; the backbone is a fixed feature extractor."""
    return [Stage(epochs, {head: lr}, "linear probe")]


@SCHEDULES.register("full")
def full_finetune(model: nn.Module, head: str, epochs: int, lr: float) -> list[Stage]:
    """Everything trains, the backbone at a tenth of the head's rate."""
    return [Stage(epochs, {"": lr / 10, head: lr}, "full fine-tune")]


@SCHEDULES.register("probe_then_finetune")
def probe_then_finetune(model: nn.Module, head: str, epochs: int, lr: float) -> list[Stage]:
    """LP-FT (Kumar et al., 2022): a linear probe first, so that fine-tuning starts from a good head and
    distorts the pretrained features less; then everything at a tenth of the rate."""
    probe = epochs // 2
    return [Stage(probe, {head: lr}, "linear probe"), Stage(epochs - probe, {"": lr / 10}, "fine-tune")]


@SCHEDULES.register("gradual")
def gradual_unfreezing(model: nn.Module, head: str, epochs: int, lr: float) -> list[Stage]:
    """ULMFiT (Howard and Ruder, 2018): the head first, then one more backbone block per stage from the top
    down, each block at its own rate (divided by 2.6 per block away from the head); epochs split evenly."""
    blocks = backbone_blocks(model, head)[::-1]  # nearest the head first
    count = len(blocks) + 1
    stages = []
    for stage in range(count):
        rates = {head: lr, **{block: lr / LAYER_DECAY ** (depth + 1) for depth, block in enumerate(blocks[:stage])}}
        share = epochs // count + (1 if stage < epochs % count else 0)
        if share:
            stages.append(Stage(share, rates, "head" if stage == 0 else f"+ {blocks[stage - 1]}"))
    return stages


def _owner(name: str, prefixes: Sequence[str]) -> str | None:
    """The longest prefix that `name` lies under ("" covers everything)."""
    matching = [p for p in prefixes if p == "" or name == p or name.startswith(p + ".")]
    return max(matching, key=len) if matching else None


@checked
def finetune(
    model: nn.Module,
    train: Split,
    val: Split,
    *,
    schedule: str | Sequence[Stage] = "probe_then_finetune",
    head: str = "head",
    epochs: int = 40,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> FinetuneResult:
    """Train `model` (in place) on a new task stage by stage; each stage keeps its best validation epoch.

    Frozen parameters really do not change: they get no gradient, no weight decay, and the modules they
    belong to stay in eval mode, so BatchNorm running statistics do not move either.

    Args:
        model: e.g. a `splice(...)` result (its head is the module "head").
        schedule: a `SCHEDULES` name (linear_probe, full, probe_then_finetune, gradual) or explicit stages.
        head: the name of the new head module.
        epochs, lr: the total epochs and the head's learning rate, for a named schedule.

    Returns:
        A `FinetuneResult` with the model and a summary per stage.
    """
    modules = dict(model.named_modules())
    if head not in modules:
        raise ConfigError(f"the model has no head module {head!r}; pass head= one of {[n for n in modules if n]}")
    stages = SCHEDULES[schedule](model, head, epochs, lr) if isinstance(schedule, str) else list(schedule)
    result = FinetuneResult(model)
    requires_grad = {name: param.requires_grad for name, param in model.named_parameters()}
    for index, stage in enumerate(stages):
        param_groups, frozen = _stage_groups(model, modules, stage, index)
        train_model(
            model,
            train,
            val,
            epochs=stage.epochs,
            weight_decay=weight_decay,
            batch_size=batch_size,
            seed=seed + index,
            cosine=True,
            param_groups=param_groups,
            frozen=frozen,
        )
        accuracy = score_classifier(model, val)["accuracy"]
        result.stages.append(
            {"name": stage.name, "epochs": stage.epochs, "rates": dict(stage.rates), "val_accuracy": accuracy}
        )
    for name, param in model.named_parameters():
        param.requires_grad_(requires_grad[name])
    return result


def _stage_groups(model: nn.Module, modules: dict, stage: Stage, index: int) -> tuple[list[dict], list[nn.Module]]:
    """What a stage trains: AdamW's parameter groups (each trained module's parameters at its rate; the rest
    get no gradient) and the modules it leaves frozen (kept in eval mode)."""
    unknown = [p for p in stage.rates if p and p not in modules]
    if unknown:
        raise ConfigError(f"stage {index} trains unknown modules {unknown}; names come from named_modules()")
    prefixes = list(stage.rates)
    groups: dict[str, list[nn.Parameter]] = {p: [] for p in prefixes}
    for name, param in model.named_parameters():
        owner = _owner(name, prefixes)
        param.requires_grad_(owner is not None)
        if owner is not None:
            groups[owner].append(param)
    frozen = [
        module
        for name, module in modules.items()
        if name and _owner(name, prefixes) is None and not any(p.startswith(name + ".") for p in prefixes)
    ]
    return [{"params": ps, "lr": stage.rates[p]} for p, ps in groups.items() if ps], frozen
