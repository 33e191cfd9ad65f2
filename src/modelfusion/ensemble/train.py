"""Training-time ensembles: members trained to be fused, for when no members exist yet.

| method | members | they differ in |
|---|---|---|
| `seeds` | `n` independent runs (deep ensembles, Lakshminarayanan et al., 2017) | initialization, batch order |
| `bagging` | `n` runs on bootstrap samples of the training split (Breiman, 1996) | the data each one sees |
| `kfold` | `n` cross-fitted runs, each without one fold (`oof`: see below) | the fold left out |
| `snapshot` | `n` snapshots of one run with a cyclic cosine rate (Huang et al., 2017) | the cycle |
| `swa` | `n` runs, each ending with stochastic weight averaging (Izmailov et al., 2018) | initialization |

`kfold`'s out-of-fold outputs on the training split let a stacker learn there, on every training sample,
as scikit-learn's StackingClassifier and AutoGluon's bagging do, instead of on the smaller validation split.
Every member is trained with a `TrainingRecipe`; the validation split chooses epochs (not for `snapshot`
and `swa`, whose schedules decide), the test split is never seen.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from sklearn.model_selection import KFold, StratifiedKFold
from torch import nn

from .._checks import check_count, check_number, check_seed
from ..datasets import Dataset, Split
from ..errors import ConfigError
from ..members import TorchMember
from ..predictions import Predictions
from ..registry import Registry
from ..tasks import Task
from ..training import TrainingRecipe, run_epochs

__all__ = ["train_members", "TrainedMembers", "MeanOfModels", "TRAINING_METHODS"]


class MeanOfModels(nn.Module):
    """Several models as one: the log of their mean probability (classification) or their mean value."""

    def __init__(self, models: list[nn.Module], task: Task = "classification") -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([model(x) for model in self.models])
        if self.task == "regression":
            return outputs.mean(dim=0)
        return torch.logsumexp(torch.log_softmax(outputs, dim=-1), dim=0) - torch.log(torch.tensor(len(self.models)))


@dataclass
class TrainedMembers:
    """What `train_members` returns: the members, and for `kfold` the out-of-fold outputs of their bag.

    Attributes:
        method: the training-time method.
        members: one `TorchMember` per trained model, ready for `collect_predictions` and `save_member`.
        oof: `kfold` only: the bag's outputs on the training split, each sample predicted by the member that
            did not train on it (split "train", labels included): what a stacker may be fitted on.
    """

    method: str
    members: list[TorchMember]
    oof: Predictions | None = None

    def bag(self, name: str | None = None) -> TorchMember:
        """All members as one member (`MeanOfModels`): the bag whose out-of-fold outputs are `oof`."""
        first = self.members[0]
        name = name or (self.oof.member_names[0] if self.oof is not None else f"{first.name.rsplit('_', 1)[0]}_bag")
        return TorchMember(MeanOfModels([m.module for m in self.members], first.task), name=name, task=first.task)


TrainFn = Callable[..., TrainedMembers]
TRAINING_METHODS: Registry[TrainFn] = Registry("training-time ensemble method")


def train_members(
    recipe: TrainingRecipe, data: Dataset, *, method: str = "seeds", n: int = 5, seed: int = 0, **params
) -> TrainedMembers:
    """Train `n` members of `recipe` on `data` with a training-time ensemble `method` (see the module's table).

    Args:
        recipe: how each member is built and trained (`modelfusion.training.RECIPES`, `recipe_for(data)`).
        data: the dataset; members train on `data.train`, validation chooses epochs, test is never used.
        method: `seeds`, `bagging`, `kfold`, `snapshot` or `swa`.
        n: number of members (folds for `kfold`, snapshots for `snapshot`).
        seed: the same seed gives the same members.
        params: `snapshot`: `cycle_epochs` (default: the recipe's epochs); `swa`: `swa_epochs` (default: a
            quarter of the recipe's epochs) and `swa_lr` (default: a tenth of the recipe's rate).

    Example:
        >>> trained = train_members(recipe_for(data), data, method="kfold", n=5)
        >>> stacker = make_combiner("stacking").fit(trained.oof)   # learns on the training split
    """
    check_count(n, "n")
    check_seed(seed)
    train = TRAINING_METHODS[method]
    try:
        return train(recipe, data, n=n, seed=seed, **params)
    except TypeError as err:
        raise ConfigError(f"train_members: method {method!r} got bad parameters {sorted(params)} ({err})") from None


def _member_seed(seed: int, index: int) -> int:
    return seed * 1000 + index


def _members(recipe: TrainingRecipe, data: Dataset, models: list[nn.Module], method: str) -> list[TorchMember]:
    return [recipe.member(model, data, name=f"{recipe.name}_{method}_{i}") for i, model in enumerate(models)]


@TRAINING_METHODS.register("seeds")
def _seeds(recipe: TrainingRecipe, data: Dataset, *, n: int, seed: int) -> TrainedMembers:
    models = [recipe.train(data, seed=_member_seed(seed, i)) for i in range(n)]
    return TrainedMembers("seeds", _members(recipe, data, models, "seeds"))


@TRAINING_METHODS.register("bagging")
def _bagging(recipe: TrainingRecipe, data: Dataset, *, n: int, seed: int) -> TrainedMembers:
    generator = torch.Generator().manual_seed(seed)
    models = []
    for i in range(n):
        rows = torch.randint(len(data.train), (len(data.train),), generator=generator)
        sample = Split("train", data.train.X[rows], data.train.y[rows])
        models.append(recipe.train(data, seed=_member_seed(seed, i), train=sample))
    return TrainedMembers("bagging", _members(recipe, data, models, "bagging"))


@TRAINING_METHODS.register("kfold")
def _kfold(recipe: TrainingRecipe, data: Dataset, *, n: int, seed: int) -> TrainedMembers:
    if n < 2:
        raise ConfigError(f"kfold needs n >= 2 folds, got {n}")
    X, y = data.train.X, data.train.y
    splitter = (StratifiedKFold if data.task == "classification" else KFold)(n, shuffle=True, random_state=seed)
    models, oof = [], None
    for i, (fit_rows, held_out) in enumerate(splitter.split(X.numpy(), y.numpy())):
        fit_rows, held_out = torch.as_tensor(fit_rows), torch.as_tensor(held_out)
        model = recipe.train(data, seed=_member_seed(seed, i), train=Split("train", X[fit_rows], y[fit_rows]))
        with torch.no_grad():
            out = model(X[held_out]).float()
        if data.task == "regression":
            out = out.reshape(-1)
        if oof is None:
            oof = torch.empty((len(y), *out.shape[1:]))
        oof[held_out] = out
        models.append(model)
    members = _members(recipe, data, models, "kfold")
    classes = None if data.task == "regression" else tuple(range(data.num_classes))
    bag = Predictions(
        oof[None], y.clone(), (f"{recipe.name}_kfold_bag",), task=data.task, split="train", classes=classes
    )
    return TrainedMembers("kfold", members, oof=bag)


@TRAINING_METHODS.register("snapshot")
def _snapshot(
    recipe: TrainingRecipe, data: Dataset, *, n: int, seed: int, cycle_epochs: int | None = None
) -> TrainedMembers:
    cycle_epochs = recipe.epochs if cycle_epochs is None else cycle_epochs
    check_count(cycle_epochs, "cycle_epochs")
    model = recipe.build(data, seed=seed)
    steps_per_epoch = -(-len(data.train) // recipe.batch_size)
    snapshots = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cycle_epochs * steps_per_epoch)
        for epoch in run_epochs(
            model,
            data.train,
            optimizer,
            task=data.task,
            epochs=n * cycle_epochs,
            batch_size=recipe.batch_size,
            seed=seed,
            scheduler=scheduler,
            mixup=recipe.mixup,
        ):
            if epoch % cycle_epochs == 0:
                snapshots.append(copy.deepcopy(model).eval())
    return TrainedMembers("snapshot", _members(recipe, data, snapshots, "snapshot"))


@TRAINING_METHODS.register("swa")
def _swa(
    recipe: TrainingRecipe,
    data: Dataset,
    *,
    n: int,
    seed: int,
    swa_epochs: int | None = None,
    swa_lr: float | None = None,
) -> TrainedMembers:
    swa_epochs = max(1, recipe.epochs // 4) if swa_epochs is None else swa_epochs
    swa_lr = recipe.lr / 10 if swa_lr is None else swa_lr
    check_count(swa_epochs, "swa_epochs")
    check_number(swa_lr, "swa_lr", low=0.0, open_low=True)
    models = []
    for i in range(n):
        member_seed = _member_seed(seed, i)
        model = recipe.train(data, seed=member_seed)
        with torch.random.fork_rng():
            torch.manual_seed(member_seed)
            averaged = torch.optim.swa_utils.AveragedModel(model)
            optimizer = torch.optim.AdamW(model.parameters(), lr=swa_lr, weight_decay=recipe.weight_decay)
            scheduler = torch.optim.swa_utils.SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=1)
            for _ in run_epochs(
                model,
                data.train,
                optimizer,
                task=data.task,
                epochs=swa_epochs,
                batch_size=recipe.batch_size,
                seed=member_seed + 1,
                mixup=recipe.mixup,
            ):
                averaged.update_parameters(model)
                scheduler.step()
            batches = data.train.X.split(recipe.batch_size)
            torch.optim.swa_utils.update_bn(batches, averaged)
        models.append(averaged.module.eval())
    return TrainedMembers("swa", _members(recipe, data, models, "swa"))
