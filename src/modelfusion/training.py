"""The seeded training loop every family uses, and the recipes that train the embedded datasets' members to
their published accuracy.

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
| `tabular-mlp`, `regression-mlp` | MLP 128 / 64, 40 epochs | | |
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
from .members import Member, SklearnMember, TorchMember
from .models import MODELS
from .registry import Registry
from .tasks import Task

__all__ = [
    "train_model",
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
) -> nn.Module:
    """Train `model` in place with AdamW (constant rate, or a cosine schedule over all steps with `cosine`)
    and return it with the weights of its best validation epoch.

    `param_groups` (AdamW's groups, each with its own `lr`) restricts training to those parameters; the
    `frozen` modules stay in eval mode while the rest trains, so their BatchNorm statistics do not move.
    `mixup > 0` (classification) trains on mixup batches (Zhang et al., 2018): inputs and their labels' losses
    mixed with a weight drawn from Beta(mixup, mixup).

    The validation split only chooses the epoch (early stopping); the test split is never seen. A loss that
    becomes NaN or infinite stops training with a `TrainingDivergedError` naming the epoch.
    The same seed gives the same weights: batch order comes from a seeded generator, and dropout draws from
    the global generator reseeded inside `fork_rng`, so the caller's random state is left as it was.
    """
    check_seed(seed)
    check_count(epochs, "epochs")
    check_count(batch_size, "batch_size")
    check_number(lr, "lr", low=0.0, open_low=True)
    check_number(mixup, "mixup", low=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        groups = param_groups if param_groups is not None else [{"params": list(model.parameters())}]
        return _train(
            model, train, val, task, epochs, lr, weight_decay, batch_size, seed, cosine, groups, frozen, mixup
        )


def _train(
    model, train, val, task, epochs, lr, weight_decay, batch_size, seed, cosine, groups, frozen, mixup
) -> nn.Module:
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(train) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if cosine else None
    loss_fn = _loss(task)
    best_loss, best_state = float("inf"), copy.deepcopy(model.state_dict())
    for _ in run_epochs(
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
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())
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
    reaches: str = ""

    def factory_kwargs(self, data: Dataset) -> dict:
        """The factory's arguments for `data` (what `save_member` records, so a file rebuilds itself)."""
        outputs = data.num_classes if data.task == "classification" else 1
        dims = {"cnn1d": 2, "cnn2d": 3}.get(self.factory)
        if dims is None:
            shape = {"in_features": data.num_features}
        elif data.image_shape is not None and len(data.image_shape) == dims:
            shape = {"length": data.image_shape[-1]} if dims == 2 else {"image_shape": list(data.image_shape)}
        else:
            raise ConfigError(
                f"recipe {self.name!r} needs {dims - 1}-D image data; {data.name!r} has none of that shape"
            )
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
        )

    def member(self, model: nn.Module, data: Dataset, *, name: str) -> TorchMember:
        """`model` (trained with this recipe) as a member that `save_member` writes with its factory."""
        return TorchMember(
            model, name=name, task=data.task, factory=self.factory, factory_kwargs=self.factory_kwargs(data)
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
    TrainingRecipe("tabular-mlp", "mlp", {"hidden": [128]}, epochs=40),
    TrainingRecipe("regression-mlp", "mlp", {"hidden": [64]}, epochs=40),
):
    RECIPES.register(_recipe.name)(_recipe)


def recipe_for(data: Dataset, architecture: str | None = None) -> TrainingRecipe:
    """The recipe for `data`: `architecture` "cnn" or "mlp", or by default the strongest one (the CNN of an
    image dataset, an MLP otherwise)."""
    if architecture not in (None, "cnn", "mlp"):
        raise ConfigError(f"architecture must be 'cnn' or 'mlp', got {architecture!r}")
    if data.task == "regression":
        return RECIPES["regression-mlp"]
    if architecture is None:
        architecture = "cnn" if f"{data.name}-cnn" in RECIPES else "mlp"
    name = f"{data.name}-{architecture}"
    if name in RECIPES:
        return RECIPES[name]
    if architecture == "mlp":
        return RECIPES["tabular-mlp"]
    raise ConfigError(f"no CNN recipe for {data.name!r}; use architecture='mlp'")


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
            estimator = self.estimator().fit(data.train.X.numpy(), data.train.y.numpy())
            if "n_jobs" in estimator.get_params():
                # fitted in parallel, served on one job: starting joblib's workers costs a one-sample prediction
                # of the digits forest more than its trees do (22 ms against 8 ms)
                estimator.set_params(n_jobs=1)
            return SklearnMember(estimator, name=self.name)
        model = self.recipe.train(data, seed=self.seed, epochs=epochs)
        return self.recipe.member(model, data, name=self.name)


def member_plans(data: Dataset, *, seed: int = 0, mlps: int = 3, cnns: int = 1) -> list[MemberPlan]:
    """Diverse members for `data` (the classic "linear model + trees + neural networks" mix, whose errors
    differ): `mlps` MLPs of different seeds, `cnns` CNNs of different seeds when the data has a CNN recipe, a
    linear model and a random forest. The networks come from the dataset's recipes.

    `demo` trains the default plans; `auto`, given no members, adds CNNs (`cnns=5`: a deep ensemble of the
    strongest architecture). Names and seeds depend only on the position in the plan, so adding CNNs leaves
    the others' weights as they were.
    """
    plans = [MemberPlan(f"mlp_{i}", recipe_for(data, "mlp"), seed=seed * 1000 + i) for i in range(mlps)]
    if data.task == "classification" and f"{data.name}-cnn" in RECIPES and cnns > 0:
        recipe = recipe_for(data, "cnn")
        plans.append(MemberPlan("cnn", recipe, seed=seed * 1000 + 100))
        extra = [MemberPlan(f"cnn_{i}", recipe, seed=seed * 1000 + 100 + i) for i in range(1, cnns)]
    else:
        extra = []
    linear, forest = ESTIMATORS[data.task]
    plans += [
        MemberPlan(linear[0], estimator=linear[1]),
        MemberPlan(forest[0], estimator=functools.partial(forest[1], seed)),
    ]
    return plans + extra  # the extra CNNs last, as `auto` has always ordered its members


def _logistic_regression():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000)


def _ridge():
    from sklearn.linear_model import Ridge

    return Ridge(alpha=1.0)


def _forest_classifier(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(300, random_state=seed, n_jobs=-1)


def _forest_regressor(seed: int):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(300, min_samples_leaf=5, random_state=seed, n_jobs=-1)


# task -> (the linear model, the random forest of a seed): the non-network members of `member_plans`
ESTIMATORS: dict[Task, tuple[tuple[str, Callable[[], object]], tuple[str, Callable[[int], object]]]] = {
    "classification": (("logreg", _logistic_regression), ("random_forest", _forest_classifier)),
    "regression": (("ridge", _ridge), ("random_forest", _forest_regressor)),
}
