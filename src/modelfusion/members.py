"""Members: the models being fused, behind one small protocol.

A member maps inputs `X [N, ...]` to raw logits `[N, C]` (classification) or values `[N]` (regression).
Adapters wrap any `nn.Module` and any fitted scikit-learn estimator, so both kinds mix in one ensemble.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ._modules import evaluating
from .errors import IncompatibleModelsError, InvalidInputError, NotFittedError
from .tasks import TASKS, Task
from .texts import Texts, is_texts

__all__ = [
    "Member",
    "TorchMember",
    "SklearnMember",
    "as_member",
    "check_members",
    "name_after_files",
    "check_classes",
    "MAX_NAME_CHARS",
    "sklearn_inputs",
]

# The longest member name a file may record: room for names derived from names ("<name>_fp16_spliced").
MAX_NAME_CHARS = 1024


@runtime_checkable
class Member(Protocol):
    """What every member offers. `classes` is the label order of the output columns (None for regression)."""

    name: str
    task: Task
    num_outputs: int
    classes: tuple | None

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """Raw logits `[N, C]` float32 for classification, values `[N]` float32 for regression."""
        ...


def check_classes(classes: Sequence, where: str) -> None:
    """Refuse class labels that cannot name output columns: a NaN or infinite class, or one class twice (`[0, 0,
    1]`, or `1` and `"1"`, which every comparison of class orders takes for the same)."""
    bad = [c for c in classes if isinstance(c, float) and not math.isfinite(c)]
    if bad:
        raise InvalidInputError(f"{where}: class {bad[0]!r} is not a label; every class must be a finite value")
    shown = [str(c) for c in classes]
    repeated = sorted({c for c in shown if shown.count(c) > 1})
    try:
        repeated = repeated or ([] if len(set(classes)) == len(classes) else shown)  # 1 and 1.0, 1 and True
    except TypeError:  # unhashable classes given in Python: their strings were compared
        pass
    if repeated:
        raise InvalidInputError(
            f"{where}: the classes {repeated} appear more than once; each output column needs its own class"
        )


def _check_task(task: Task, name: str) -> None:
    if task not in TASKS:
        raise InvalidInputError(f"member {name!r}: task must be one of {TASKS}, got {task!r}")


class TorchMember:
    """Any `nn.Module` as a member: batched, in eval mode, without gradients, on `device`.

    The module's train/eval mode is restored after each call, so wrapping never changes the caller's model.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        task: Task = "classification",
        num_outputs: int | None = None,
        classes: Sequence | None = None,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
        factory: str | None = None,
        factory_kwargs: dict | None = None,
    ) -> None:
        _check_task(task, name)
        if not callable(module):
            raise InvalidInputError(f"member {name!r}: expected an nn.Module, got {type(module).__name__}")
        self.module = module
        # How to rebuild the module from weights (`package.module:function` + kwargs), when known.
        self.factory = factory
        self.factory_kwargs = dict(factory_kwargs or {})
        self.name = name
        self.task = task
        self.batch_size = batch_size
        self.device = torch.device(device)
        if task == "regression":
            num_outputs = 1
        elif num_outputs is None:
            num_outputs = len(classes) if classes is not None else _infer_num_outputs(module)
        if classes is not None and task == "classification" and len(classes) != num_outputs:
            raise IncompatibleModelsError(
                f"member {name!r}: {len(classes)} classes given for a model of {num_outputs} outputs; give one label "
                "per output column"
            )
        self.num_outputs = int(num_outputs)
        if task == "classification" and classes is None:
            classes = range(self.num_outputs)
        self.classes = tuple(classes) if classes is not None else None
        if self.classes is not None:
            check_classes(self.classes, f"member {name!r}")

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        X = torch.as_tensor(X)
        with evaluating(self.module):
            outputs = [
                self.module(X[i : i + self.batch_size].to(self.device)).detach().float().cpu()
                for i in range(0, len(X), self.batch_size)
            ]
        out = torch.cat(outputs) if outputs else torch.empty(0, self.num_outputs)
        if self.task == "regression" and out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        elif self.task == "classification" and (out.ndim != 2 or out.shape[1] != self.num_outputs):
            raise IncompatibleModelsError(
                f"member {self.name!r} gives outputs of shape {tuple(out.shape)} for its {self.num_outputs} classes "
                f"{self.classes!r:.80}; give one class per output column"
            )
        return out

    def __repr__(self) -> str:
        return f"TorchMember({self.name!r}, {type(self.module).__name__}, task={self.task})"


def _infer_num_outputs(module: nn.Module) -> int:
    """The width of the last Linear layer, for modules that end in one (the common case): a layer with an
    integer `out_features` (Linear, its quantized forms, an ONNX graph with a fixed output width).

    TorchScript keeps the layer's original class name instead of the class itself.
    """
    linears = [m for m in module.modules() if getattr(m, "original_name", None) == "Linear"]
    if linears:
        return int(linears[-1].weight.shape[0])
    widths = [m.out_features for m in module.modules() if isinstance(getattr(m, "out_features", None), int)]
    if widths:
        return widths[-1]
    raise InvalidInputError(
        f"cannot infer the number of classes of {type(module).__name__}; pass num_outputs= or classes="
    )


def sklearn_inputs(X: torch.Tensor | np.ndarray | Texts | Sequence[str]) -> np.ndarray | list[str]:
    """What a scikit-learn estimator takes for `X`: texts as a list of strings (a text pipeline vectorizes
    them itself), anything else as a float array `[N, features]`."""
    if is_texts(X):
        return list(X)
    return torch.as_tensor(X).reshape(len(X), -1).numpy()


def _takes_text(estimator) -> bool:
    """Whether `estimator` is, or is a pipeline that starts with, a text vectorizer (scikit-learn's count,
    TF-IDF and hashing vectorizers all build an analyzer of strings)."""
    while hasattr(estimator, "steps") and estimator.steps:
        estimator = estimator.steps[0][1]
    return hasattr(estimator, "build_analyzer")


class SklearnMember:
    """A fitted scikit-learn estimator as a member (a pipeline that starts with a text vectorizer takes texts,
    `takes_text`).

    Classifiers give `log(predict_proba)` as logits (softmax of those returns the probabilities exactly);
    classifiers without `predict_proba` fall back to `decision_function` scores; regressors give `predict`.
    """

    # Clipping keeps log(0) finite for trees that give a class zero probability: log(1e-12) ~ -27.6.
    _MIN_PROBA = 1e-12

    def __init__(self, estimator, *, name: str | None = None, task: Task | None = None) -> None:
        from sklearn.base import is_classifier, is_regressor
        from sklearn.exceptions import NotFittedError as SklearnNotFitted
        from sklearn.utils.validation import check_is_fitted

        self.estimator = estimator
        self.name = name or type(estimator).__name__
        if task is None:
            if is_classifier(estimator):
                task = "classification"
            elif is_regressor(estimator):
                task = "regression"
            else:
                raise InvalidInputError(
                    f"member {self.name!r}: {type(estimator).__name__} is neither a classifier nor a "
                    "regressor; pass task="
                )
        _check_task(task, self.name)
        self.task = task
        self.takes_text = _takes_text(estimator)
        try:
            check_is_fitted(estimator)
        except SklearnNotFitted:
            raise NotFittedError(f"member {self.name!r}: the estimator is not fitted; call fit first") from None
        if task == "classification":
            if not hasattr(estimator, "classes_"):
                raise InvalidInputError(f"member {self.name!r}: classifier has no classes_")
            self.classes = tuple(np.asarray(estimator.classes_).tolist())
            check_classes(self.classes, f"member {self.name!r}")
            self.num_outputs = len(self.classes)
            if not (hasattr(estimator, "predict_proba") or hasattr(estimator, "decision_function")):
                raise InvalidInputError(
                    f"member {self.name!r}: classifier has neither predict_proba nor decision_function"
                )
        else:
            self.classes = None
            self.num_outputs = 1

    def predict(self, X: torch.Tensor | Texts) -> torch.Tensor:
        if is_texts(X) != self.takes_text:
            takes, got = ("texts", f"numbers of shape {list(np.shape(X))}") if self.takes_text else ("numbers", "texts")
            raise InvalidInputError(
                f"member {self.name!r} takes {takes}, got {got}; were the members trained on this data?"
            )
        X_np = sklearn_inputs(X)
        if self.task == "regression":
            return torch.as_tensor(np.asarray(self.estimator.predict(X_np), dtype=np.float32).reshape(-1))
        if hasattr(self.estimator, "predict_proba"):
            proba = np.asarray(self.estimator.predict_proba(X_np), dtype=np.float64)
            logits = np.log(np.clip(proba, self._MIN_PROBA, None))
        else:
            scores = np.asarray(self.estimator.decision_function(X_np), dtype=np.float64)
            # Binary decision_function gives one score for the positive class: softmax([0, s]) = sigmoid(s).
            logits = np.stack([np.zeros_like(scores), scores], axis=1) if scores.ndim == 1 else scores
        return torch.as_tensor(logits, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"SklearnMember({self.name!r}, {type(self.estimator).__name__}, task={self.task})"


def as_member(obj, *, name: str | None = None, task: Task | None = None, **kwargs) -> Member:
    """Wrap `obj` as a member: members pass through, `nn.Module`s and scikit-learn estimators get adapters."""
    if isinstance(obj, (TorchMember, SklearnMember)):
        return obj
    if isinstance(obj, nn.Module):  # TorchScript modules included
        return TorchMember(obj, name=name or type(obj).__name__, task=task or "classification", **kwargs)
    if hasattr(obj, "fit") and (hasattr(obj, "predict") or hasattr(obj, "predict_proba")):
        return SklearnMember(obj, name=name, task=task)
    if isinstance(obj, Member):
        return obj
    raise InvalidInputError(
        f"cannot use {type(obj).__name__} as a member: expected an nn.Module, a scikit-learn estimator, "
        "or an object with name, task, num_outputs, classes and predict(X)"
    )


def name_after_files(members: Sequence[Member], paths: Sequence[str | os.PathLike]) -> str | None:
    """Rename the members whose stored names collide after the files they came from (the stem, or the stem
    and the position when stems collide too), in place. Returns a note saying what happened, or None.

    Copies of one saved member keep its stored name; one leaderboard row each needs one name each.
    """
    names = [m.name for m in members]
    clashing = sorted({name for name in names if names.count(name) > 1})
    if not clashing:
        return None
    stems = [Path(p).stem for p in paths]
    for index, (member, stem) in enumerate(zip(members, stems, strict=True)):
        if member.name in clashing:
            member.name = stem if stems.count(stem) == 1 else f"{stem}_{index}"
    renamed = ", ".join(f"{p} -> {m.name}" for p, m, stem in zip(paths, members, stems, strict=True) if m.name != stem)
    return f"members share the names {clashing}; each is named after its file" + (f" ({renamed})" if renamed else "")


def check_members(members: Iterable[Member]) -> list[Member]:
    """Check that members can be fused: at least one, unique names, one task, same outputs, same class order.

    Returns the members as a list. Raises `IncompatibleModelsError` naming the first member that differs.
    """
    members = list(members)
    if not members:
        raise InvalidInputError("no members given; pass at least one model")
    seen: set[str] = set()
    for member in members:
        if member.name in seen:
            raise InvalidInputError(f"two members are named {member.name!r}; give each member a unique name")
        seen.add(member.name)
    first = members[0]
    for other in members[1:]:
        if other.task != first.task:
            raise IncompatibleModelsError(
                f"member {other.name!r} is a {other.task} model but {first.name!r} is a {first.task} model"
            )
        if first.task == "regression":
            continue
        if other.num_outputs != first.num_outputs:
            raise IncompatibleModelsError(
                f"member {other.name!r} has {other.num_outputs} classes but {first.name!r} has "
                f"{first.num_outputs}; all members must predict the same classes"
            )
        if [str(c) for c in other.classes] != [str(c) for c in first.classes]:
            raise IncompatibleModelsError(
                f"class order differs: member {other.name!r} has classes {list(other.classes)} but "
                f"{first.name!r} has {list(first.classes)}; train every member with the same label encoding "
                "or pass classes= to the torch adapter"
            )
    return members
