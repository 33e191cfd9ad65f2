"""The seeded training loop every family uses, the recipes chosen by the data's shape (`recipe_for`: images get
the 2-D CNN, sequences the 1-D CNN, tables the strong tabular MLP), and the members `demo` and `auto` train.

A recipe is an architecture (a factory in `models.MODELS` with its data-independent arguments) and the
training settings chosen for it on the validation split (never on test). The demo and the ensemble and
distillation benchmarks train their torch members with a recipe, so a fusion's gain is measured over members
worth fusing.

| recipe | model | test accuracy, seeds 0-4 (bench/recipes.py) | target (issue 12) |
|---|---|---|---|
| `mnist1d-cnn` | the mnist1d paper's 1-D CNN, 64 channels + BatchNorm, 60 epochs | 95.2% | >= 93% (paper: 94%) |
| `mnist1d-mlp` | MLP 3 x 512, dropout 0.5, 100 epochs | 73.9% | >= 66% (paper: 68%) |
| `digits-cnn` | 2-D CNN 32-64 + dropout 0.5, 100 epochs | 99.2% | >= 98.5% |
| `digits-mlp` | MLP 128, 40 epochs (the earlier demo's setting) | about 97% | |
| `tabular-mlp` | MLP 512-256, BatchNorm, dropout 0.3, cosine, 60 epochs, early stopping (patience 15) | | |
| `regression-mlp` | MLP 64, 40 epochs | | |
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ._checks import check_count, check_number, check_seed
from ._modules import evaluating, has_batchnorm
from .datasets import Dataset, Split
from .errors import ConfigError, TrainingDivergedError
from .members import Member, SklearnMember, TorchMember, sklearn_inputs
from .models import MODELS
from .registry import Registry
from .tasks import Task

__all__ = [
    "train_model",
    "train_plans",
    "run_epochs",
    "mixup_weight",
    "score_classifier",
    "TrainingRecipe",
    "RECIPES",
    "recipe_for",
    "MemberPlan",
    "member_plans",
]


def train_model(
    model: nn.Module,
    train: Split,
    val: Split,
    *,
    task: Task = "classification",
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    cosine: bool = False,
    param_groups: list[dict] | None = None,
    frozen: Sequence[nn.Module] = (),
    mixup: float = 0.0,
    patience: int | None = None,
) -> nn.Module:
    """Train `model` in place with AdamW (constant rate, or a cosine schedule over all steps with `cosine`)
    and return it with the weights of its best validation epoch.

    `param_groups` (AdamW's groups, each with its own `lr`) restricts training to those parameters; the
    `frozen` modules stay in eval mode while the rest trains, so their BatchNorm statistics do not move.
    `mixup > 0` (classification) trains on mixup batches (Zhang et al., 2018): inputs and their labels' losses
    mixed with a weight drawn from Beta(mixup, mixup).

    The validation split only chooses the epoch (early stopping: with `patience`, training also stops after that
    many epochs without a better validation loss); the test split is never seen. A loss that
    becomes NaN or infinite stops training with a `TrainingDivergedError` naming the epoch.
    The same seed gives the same weights: batch order comes from a seeded generator, and dropout draws from
    the global generator reseeded inside `fork_rng`, so the caller's random state is left as it was.
    """
    check_seed(seed)
    check_count(epochs, "epochs")
    check_count(batch_size, "batch_size")
    check_number(lr, "lr", low=0.0, open_low=True)
    check_number(mixup, "mixup", low=0.0)
    if patience is not None:
        check_count(patience, "patience")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        groups = param_groups if param_groups is not None else [{"params": list(model.parameters())}]
        return _train(
            model, train, val, task, epochs, lr, weight_decay, batch_size, seed, cosine, groups, frozen, mixup, patience
        )


def _train(
    model, train, val, task, epochs, lr, weight_decay, batch_size, seed, cosine, groups, frozen, mixup, patience
) -> nn.Module:
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(train) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if cosine else None
    loss_fn = _loss(task)
    best_loss, best_state, best_epoch = float("inf"), copy.deepcopy(model.state_dict()), 0
    for epoch in run_epochs(
        model,
        train,
        optimizer,
        task=task,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        scheduler=scheduler,
        frozen=frozen,
        mixup=mixup,
    ):
        model.eval()
        with torch.no_grad():
            out = model(val.X)
            val_loss = loss_fn(out.squeeze(-1) if task == "regression" else out, val.y).item()
        if val_loss < best_loss:
            best_loss, best_state, best_epoch = val_loss, copy.deepcopy(model.state_dict()), epoch
        elif patience is not None and epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model


def _loss(task: Task) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def run_epochs(
    model: nn.Module,
    train: Split,
    optimizer: torch.optim.Optimizer,
    *,
    task: Task,
    epochs: int,
    batch_size: int,
    seed: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    frozen: Sequence[nn.Module] = (),
    mixup: float = 0.0,
) -> Iterator[int]:
    """Train `model` on `train` for `epochs` epochs of seeded mini-batches, yielding each finished epoch's
    number (1, 2, ...) so the caller can evaluate, keep snapshots or average weights between epochs.

    `scheduler`, if given, steps after every batch. The model is in train mode during the steps (the `frozen`
    modules in eval mode); what the caller does between epochs is up to it. A loss that becomes NaN or
    infinite raises `TrainingDivergedError` naming the epoch. Dropout draws from torch's global generator:
    seed it (inside `torch.random.fork_rng`) for repeatable runs, as `train_model` does. `mixup > 0`
    (classification): each batch is mixed with a shuffled copy of itself and the two labels' losses weighted
    alike; the weights and shuffles come from the seeded generator.
    """
    if mixup and task != "classification":
        raise ConfigError("mixup mixes labels of a classification task; use mixup=0 for regression")
    generator = torch.Generator().manual_seed(seed)
    loss_fn = _loss(task)
    n = len(train)
    for epoch in range(1, epochs + 1):
        model.train()
        for module in frozen:
            module.eval()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2 and has_batchnorm(model):
                continue  # BatchNorm cannot train on a batch of one
            optimizer.zero_grad()
            x, y = train.X[idx], train.y[idx]
            if mixup:
                weight = mixup_weight(mixup, generator)
                partner = torch.randperm(len(idx), generator=generator)
                out = model(weight * x + (1 - weight) * x[partner])
                loss = weight * loss_fn(out, y) + (1 - weight) * loss_fn(out, y[partner])
            else:
                out = model(x)
                loss = loss_fn(out.squeeze(-1) if task == "regression" else out, y)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch}: the loss became {loss.item()}; lower the learning "
                    f"rate (now {_set_lr(optimizer):g}) or check the data for extreme values"
                )
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        yield epoch


def _set_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate the caller set (a scheduler keeps it as `initial_lr`), not where the schedule is now."""
    group = optimizer.param_groups[0]
    return group.get("initial_lr", group["lr"])


def mixup_weight(concentration: float, generator: torch.Generator) -> float:
    """A Beta(c, c) draw by inverse-CDF sampling of a uniform from the seeded generator (scipy's
    `betaincinv`), so mixup weights follow the training seed and survive a resume."""
    from scipy.special import betaincinv

    uniform = torch.rand(1, generator=generator, dtype=torch.float64).item()
    return float(betaincinv(concentration, concentration, uniform))


def score_classifier(model: nn.Module, split: Split) -> dict[str, float]:
    """Cross-entropy ("loss") and accuracy of a classifier on a whole split, in eval mode without gradients;
    the model's train/eval modes are left as they were."""
    with evaluating(model):
        logits = model(split.X)
    return {
        "loss": nn.functional.cross_entropy(logits, split.y).item(),
        "accuracy": (logits.argmax(1) == split.y).float().mean().item(),
    }


@dataclass(frozen=True)
class TrainingRecipe:
    """An architecture and the training settings that reach a stated accuracy on one kind of data.

    `architecture` holds the factory's data-independent arguments; `factory_kwargs(data)` adds the ones the
    data decides (input width or image shape, number of outputs, the target's scale for regression).
    `patience` stops training after that many epochs without a better validation loss (None: every epoch
    runs; the best epoch is kept either way).
    """

    name: str
    factory: str
    architecture: Mapping = field(default_factory=dict)
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    cosine: bool = False
    mixup: float = 0.0
    patience: int | None = None
    reaches: str = ""

    def factory_kwargs(self, data: Dataset) -> dict:
        """The factory's arguments for `data` (what `save_member` records, so a file rebuilds itself)."""
        outputs = data.num_classes if data.task == "classification" else 1
        dims = {"cnn1d": 2, "cnn2d": 3}.get(self.factory)
        if data.kind == "text":
            raise ConfigError(f"recipe {self.name!r} trains on numbers; {data.name!r} holds texts")
        if dims is None:
            shape = {"in_features": data.num_features}
        elif data.image_shape is not None and len(data.image_shape) == dims:
            channels, length = data.image_shape[0], data.image_shape[-1]
            shape = (
                {"length": length, **({"in_channels": channels} if channels != 1 else {})}
                if dims == 2
                else {"image_shape": list(data.image_shape)}
            )
        else:
            what = "sequences [C, L]" if dims == 2 else "images [C, H, W]"
            raise ConfigError(f"recipe {self.name!r} needs {what}; {data.name!r} is {data.kind} data")
        kwargs = {**shape, "num_outputs": outputs, **self.architecture}
        if data.task == "regression":
            kwargs.update(target_mean=float(data.train.y.mean()), target_std=float(data.train.y.std()))
        return kwargs

    def build(self, data: Dataset, *, seed: int = 0) -> nn.Module:
        """The untrained model, its initial weights drawn from `seed` (the caller's random state is kept)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return MODELS[self.factory](**self.factory_kwargs(data))

    def train(
        self, data: Dataset, *, seed: int = 0, train: Split | None = None, epochs: int | None = None
    ) -> nn.Module:
        """Build and train a model with this recipe; `train` replaces the training split (a bootstrap sample or
        the other folds), and validation still chooses the epoch."""
        model = self.build(data, seed=seed)
        return self.fit(
            model, data.train if train is None else train, data.val, task=data.task, seed=seed, epochs=epochs
        )

    def fit(
        self,
        model: nn.Module,
        train: Split,
        val: Split,
        *,
        task: Task = "classification",
        seed: int = 0,
        epochs: int | None = None,
    ) -> nn.Module:
        """Train `model` in place with this recipe's settings on any splits (a subset of the classes, a model
        built around this recipe's architecture); validation chooses the epoch."""
        return train_model(
            model,
            train,
            val,
            task=task,
            epochs=epochs or self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            seed=seed,
            cosine=self.cosine,
            mixup=self.mixup,
            patience=self.patience,
        )

    def member(self, model: nn.Module, data: Dataset, *, name: str) -> TorchMember:
        """`model` (trained with this recipe) as a member that `save_member` writes with its factory."""
        return TorchMember(
            model, name=name, task=data.task, factory=self.factory, factory_kwargs=self.factory_kwargs(data)
        )

    def fits(self, factory: str | None, factory_kwargs: Mapping | None) -> bool:
        """Whether a model built by `factory` with `factory_kwargs` is this recipe's architecture."""
        kwargs = dict(factory_kwargs or {})
        return factory == self.factory and all(kwargs.get(k) == _jsonable(v) for k, v in self.architecture.items())


def _jsonable(value):
    """An architecture argument as a saved file records it (JSON: tuples become lists)."""
    return list(value) if isinstance(value, tuple) else value


# A strong MLP for tables (Kadra et al., "Well-tuned Simple Nets Excel on Tabular Datasets", 2021): BatchNorm,
# dropout, weight decay, a cosine schedule and early stopping on validation; settings chosen on the validation
# split of bench/auto_vs_autogluon.py's make_classification task (seed 0: validation accuracy 93.9% against 92.1% for
# 3 x 512 with dropout 0.2 and 91.3% for 3 x 256 with LayerNorm), never on its test split.
TABULAR_MLP = TrainingRecipe(
    "tabular-mlp",
    "mlp",
    {"hidden": [512, 256], "dropout": 0.3, "norm": "batch"},
    epochs=60,
    lr=2e-3,
    weight_decay=1e-2,
    batch_size=128,
    cosine=True,
    patience=15,
)

RECIPES: Registry[TrainingRecipe] = Registry("training recipe")
for _recipe in (
    # The mnist1d paper's CNN (Greydanus, 2020) with 64 channels and BatchNorm: chosen on validation among
    # 25/32/64/128 channels, with and without BatchNorm (without it: about 85%).
    TrainingRecipe(
        "mnist1d-cnn",
        "cnn1d",
        {"channels": 64, "batchnorm": True},
        epochs=60,
        lr=3e-3,
        batch_size=100,
        cosine=True,
        reaches="mnist1d test accuracy >= 93% (paper: 94%)",
    ),
    TrainingRecipe(
        "mnist1d-mlp",
        "mlp",
        {"hidden": [512, 512, 512], "dropout": 0.5},
        epochs=100,
        lr=2e-3,
        weight_decay=1e-2,
        batch_size=100,
        cosine=True,
        reaches="mnist1d test accuracy >= 66% (paper: 68%)",
    ),
    TrainingRecipe(
        "digits-cnn",
        "cnn2d",
        {"dropout": 0.5},
        epochs=100,
        lr=3e-3,
        weight_decay=1e-2,
        cosine=True,
        reaches="digits test accuracy >= 98.5%",
    ),
    TrainingRecipe("digits-mlp", "mlp", {"hidden": [128]}, epochs=40, reaches="digits test accuracy about 97%"),
    TABULAR_MLP,
    TrainingRecipe("regression-mlp", "mlp", {"hidden": [64]}, epochs=40),
):
    RECIPES.register(_recipe.name)(_recipe)

# The recipes chosen by the data's shape (`Dataset.kind`), never by its name: per kind, the network of each
# architecture; the first is the strongest (what `recipe_for(data)` gives). The names say where each recipe's
# settings were chosen on validation (mnist1d's CNN is the 1-D CNN for any sequence, digits' for any image).
BY_KIND: dict[str, dict[str, str]] = {
    "image": {"cnn": "digits-cnn", "mlp": "digits-mlp"},
    "sequence": {"cnn": "mnist1d-cnn", "mlp": "mnist1d-mlp"},
    "tabular": {"mlp": "tabular-mlp"},
}


def recipe_for(data: Dataset, architecture: str | None = None) -> TrainingRecipe:
    """The recipe for `data`, chosen by its shape (`data.kind`): the 1-D CNN for sequences, the 2-D CNN for
    images, the tabular MLP for tables; `architecture` "cnn" or "mlp" asks for one (every kind has an MLP).
    Regression gets the regression MLP. Text has no network recipe here: its networks are the user's
    transformers models."""
    if architecture not in (None, "cnn", "mlp"):
        raise ConfigError(f"architecture must be 'cnn' or 'mlp', got {architecture!r}")
    if data.task == "regression":
        return RECIPES["regression-mlp"]
    if data.kind not in BY_KIND:
        raise ConfigError(
            f"no network recipe for {data.kind} data ({data.name!r}): the networks for texts are your own transformers "
            "models (load_member(folder))"
        )
    choices = BY_KIND[data.kind]
    name = choices.get(architecture or next(iter(choices)))
    if name is None:
        raise ConfigError(f"no CNN recipe for {data.kind} data ({data.name!r}); use architecture='mlp'")
    return RECIPES[name]


def recipe_of(factory: str | None, factory_kwargs: Mapping | None, data: Dataset) -> TrainingRecipe:
    """The settings to train a model of `factory(**factory_kwargs)` on `data` with (a student, the recovery of a
    compressed model): the recipe of that very architecture (the one for `data`'s kind first), else the recipe
    of the same factory for `data`'s kind, else `recipe_for(data)`."""
    preferred = [RECIPES[n] for n in BY_KIND.get(data.kind, {}).values()] if data.task == "classification" else []
    candidates = [*preferred, *(r for r in RECIPES.registered().values() if r not in preferred)]
    exact = next((r for r in candidates if r.fits(factory, factory_kwargs)), None)
    if exact is not None:
        return exact
    same_factory = next((r for r in preferred if r.factory == factory), None)
    return same_factory or recipe_for(data)


# -- the members `demo` and `auto` train ----------------------------------------------------------------------
@dataclass(frozen=True)
class MemberPlan:
    """One member to train: a recipe with its seed, or a scikit-learn estimator (`estimator()` makes it
    unfitted)."""

    name: str
    recipe: TrainingRecipe | None = None
    seed: int = 0
    estimator: Callable[[], object] | None = None

    def train(self, data: Dataset, *, epochs: int | None = None) -> Member:
        """Train this member on `data`'s training split (validation chooses a network's epoch); `epochs`
        replaces the recipe's."""
        if self.estimator is not None:
            estimator = self.estimator().fit(sklearn_inputs(data.train.X), data.train.y.numpy())
            if "n_jobs" in estimator.get_params():
                # fitted in parallel, served on one job: starting joblib's workers costs a one-sample prediction
                # of the digits forest more than its trees do (22 ms against 8 ms)
                estimator.set_params(n_jobs=1)
            return SklearnMember(estimator, name=self.name)
        model = self.recipe.train(data, seed=self.seed, epochs=epochs)
        return self.recipe.member(model, data, name=self.name)


def member_plans(
    data: Dataset,
    *,
    seed: int = 0,
    mlps: int = 3,
    cnns: int = 1,
    recipe: str | TrainingRecipe | None = None,
    estimators: Sequence[str] | None = None,
) -> list[MemberPlan]:
    """Diverse members for `data`, chosen by its shape (`data.kind`), never its name: the classic "linear model +
    trees + neural networks" mix, whose errors differ.

    - images and sequences: `mlps` MLPs of different seeds, `cnns` CNNs (the 2-D or 1-D CNN recipe), a linear
      model and a random forest;
    - tables: `mlps` strong tabular MLPs, a linear model, a random forest, scikit-learn's histogram gradient
      boosting and every optional booster installed (LightGBM, XGBoost, CatBoost: `modelfusion.estimators`);
    - regression: the regression MLPs, ridge, a random forest and histogram gradient boosting;
    - texts: no networks (a transformer's fine-tuning is yours to bring, as a transformers folder), the
      bag-of-words estimators: TF-IDF of words and of characters, each with a linear model, and naive Bayes
      (classification): `modelfusion.estimators.estimators_for(task, texts=True)`.

    `recipe` (a name in `RECIPES`, or a recipe) replaces the networks' recipes (texts have none); `estimators`
    (names in `modelfusion.estimators.ESTIMATORS`) replaces the estimators, an optional one that is not
    installed being one error naming its extra, one for numbers given texts (or the reverse) another. `demo`
    trains the default plans; `auto`, given no members, adds CNNs (`cnns=5`: a deep ensemble of the strongest
    architecture). Names and seeds depend only on the position in the plan, so
    adding CNNs leaves the others' weights as they were.
    """
    from .estimators import estimators_for, installed_boosters

    if data.kind == "text":
        if recipe is not None:
            raise ConfigError(
                f"{data.name!r} holds texts: no network recipe trains on them here; drop the recipe (texts get "
                "TF-IDF estimators), or give your own transformers folders as members"
            )
        names = estimators_for(data.task, texts=True) if estimators is None else estimators
        return [estimator_plan(name, data.task, seed=seed, texts=True) for name in names]
    chosen = RECIPES[recipe] if isinstance(recipe, str) else recipe
    if chosen is not None:
        chosen.factory_kwargs(data)  # a recipe for other data fails here, in one line
    mlp = chosen or recipe_for(data, "mlp")
    prefix = "net" if chosen is not None and chosen.factory != "mlp" else "mlp"
    plans = [MemberPlan(f"{prefix}_{i}", mlp, seed=seed * 1000 + i) for i in range(mlps)]
    extra = []
    if chosen is None and data.task == "classification" and "cnn" in BY_KIND.get(data.kind, {}) and cnns > 0:
        cnn = recipe_for(data, "cnn")
        plans.append(MemberPlan("cnn", cnn, seed=seed * 1000 + 100))
        extra = [MemberPlan(f"cnn_{i}", cnn, seed=seed * 1000 + 100 + i) for i in range(1, cnns)]
    if estimators is None:
        linear = "logreg" if data.task == "classification" else "ridge"
        boosted = ["hist_gradient_boosting"] if data.task == "regression" or data.kind == "tabular" else []
        estimators = [linear, "random_forest", *boosted, *(installed_boosters() if data.kind == "tabular" else [])]
    plans += [estimator_plan(name, data.task, seed=seed) for name in estimators]
    return plans + extra  # the extra CNNs last, as `auto` has always ordered its members


def estimator_plan(name: str, task: Task, *, seed: int = 0, texts: bool = False) -> MemberPlan:
    """The plan of the estimator `name` (`modelfusion.estimators.ESTIMATORS`) for `task` on texts (`texts`) or
    numbers, checked now: an optional one that is not installed fails here, in one line naming its extra, and
    so does one that takes the other kind of input."""
    from .estimators import ESTIMATORS, estimators_for, make_estimator

    make_estimator(name, task, seed=seed)
    if ESTIMATORS[name].takes_text != texts:
        takes, holds = ("numbers", "texts") if texts else ("texts", "numbers")
        raise ConfigError(
            f"estimator {name!r} takes {takes} and this data holds {holds}; choose among "
            f"{', '.join(estimators_for(task, texts=texts))}"
        )
    return MemberPlan(name, estimator=functools.partial(make_estimator, name, task, seed=seed))


# -- training the plans: in parallel processes, within a time budget ---------------------------------------------
MAX_WORKERS = 4


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says, else all)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train_plans(
    plans: Sequence[MemberPlan],
    data: Dataset,
    *,
    workers: int | None = None,
    deadline_s: float | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
) -> list[Member]:
    """Train `plans` on `data`, `workers` at a time, each in its own process (default: one per core, at most
    4; with one worker and no deadline, here), and return the members in plan order.

    With `deadline_s` (seconds from now), a plan still training then is stopped and skipped, as are the ones not
    started, and each is logged: the budget is kept whatever a plan costs. In processes, the estimators' plans
    start before the networks'. Each process uses its share of the
    cores (torch threads), so parallel training never oversubscribes them. The members are the ones training
    here would give (same seeds). An error in a plan is raised here as it was there.
    """
    import time

    workers = min(workers or min(available_cores(), MAX_WORKERS), max(len(plans), 1))
    check_count(workers, "workers")
    if deadline_s is not None and deadline_s <= 0:
        raise ConfigError(f"the time budget left no time to train members ({deadline_s:.0f}s); give a larger budget")
    if workers == 1 and deadline_s is None:
        members = []
        for plan in plans:
            started = time.perf_counter()
            members.append(plan.train(data, epochs=epochs))
            log(f"  trained {plan.name} in {time.perf_counter() - started:.1f}s")
        return members
    trained = _train_in_processes(plans, data, workers, deadline_s, epochs, log)
    if not trained:
        raise ConfigError(f"no member finished training within {deadline_s:.0f}s; give a larger time budget")
    return [trained[i] for i in sorted(trained)]


def _train_in_processes(plans, data, workers: int, deadline_s: float | None, epochs, log) -> dict[int, Member]:
    """Plan index -> member, for the plans that finished: `workers` spawned processes (torch's threads do not
    survive a fork), started once and each given the next plan when it is free."""
    import multiprocessing
    import time
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    threads = max(1, available_cores() // workers)
    started = time.perf_counter()
    # the estimators first: they take seconds where a network takes minutes, so a budget spent on networks
    # cannot leave out the gradient-boosted trees (the members come back in plan order all the same)
    pending = sorted(enumerate(plans), key=lambda item: item[1].estimator is None)
    busy, trained, processes = {}, {}, {}
    for _ in range(workers):
        here, there = context.Pipe()
        process = context.Process(target=_worker, args=(data, epochs, threads, there), name="modelfusion training")
        process.start()
        there.close()
        processes[here] = process
    idle = list(processes)

    def left() -> float | None:
        return None if deadline_s is None else deadline_s - (time.perf_counter() - started)

    finished = False
    try:
        while pending or busy:
            while pending and idle and (left() is None or left() > 0):
                connection, (index, plan) = idle.pop(), pending.pop(0)
                connection.send((index, plan))
                busy[connection] = (index, plan, time.perf_counter())
            remaining = left()
            if remaining is not None and remaining <= 0:
                break
            for connection in wait(list(busy), timeout=remaining):
                index, plan, began = busy.pop(connection)
                trained[index] = _received(connection, processes[connection], plan)
                idle.append(connection)
                log(f"  trained {plan.name} in {time.perf_counter() - began:.1f}s (process)")
        finished = True
    finally:  # done, stopped by the deadline, an error or a signal: no training process outlives the call
        for connection, process in processes.items():
            if connection in busy or not finished:
                process.terminate()
            else:
                connection.send(None)  # no more plans: the worker returns
            process.join()
            connection.close()
        for _, plan, _ in busy.values() if finished else ():
            log(f"  {plan.name}: skipped, still training when the budget's {deadline_s:.0f}s for members ran out")
    for _, plan in pending:
        log(f"  {plan.name}: skipped, not started within the budget's {deadline_s:.0f}s for members")
    return trained


def _received(connection, process, plan: MemberPlan) -> Member:
    """The member a training process sent, or its error raised here."""
    import pickle

    try:
        status, payload = pickle.loads(connection.recv_bytes())
    except EOFError:
        process.join()
        raise ConfigError(
            f"training {plan.name} stopped: its process ended with exit code {process.exitcode}"
        ) from None
    if status == "error":
        raise payload
    return payload


def _worker(data: Dataset, epochs: int | None, threads: int, connection) -> None:
    """A training process: train each plan it is sent on `threads` threads and send back the member (or the
    error), until it is sent None."""
    import pickle

    torch.set_num_threads(threads)
    while (message := connection.recv()) is not None:
        _, plan = message
        # Pickled whole here: a Connection's own pickler would share the tensors' memory with the parent, which
        # it cannot reach once this process has ended.
        try:
            connection.send_bytes(pickle.dumps(("ok", plan.train(data, epochs=epochs))))
        except Exception as err:  # sent back whole: the parent raises it as training here would have
            try:
                connection.send_bytes(pickle.dumps(("error", err)))
            except Exception:  # an error that does not pickle: its text
                error = ConfigError(f"training {plan.name} failed: {type(err).__name__}: {err}")
                connection.send_bytes(pickle.dumps(("error", error)))
    connection.close()
