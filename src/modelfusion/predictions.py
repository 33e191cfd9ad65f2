"""`Predictions`: every member's outputs on one split, computed once and reused by all combiners and metrics."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ._checks import PathArg, PositiveInt, check_count, checked
from ._distributed import concat_over_processes, failing_together, my_share, process_rank
from ._progress import progress_bar
from ._safetensors import parse_description, read_tensors, write_tensors
from .errors import (
    ArgumentError,
    CheckpointError,
    IncompatibleModelsError,
    InvalidInputError,
    LeakageError,
    ModelFusionError,
)
from .members import MAX_NAME_CHARS, Member, check_classes, check_members
from .tasks import TASKS, Task
from .texts import Texts, as_texts, is_texts

__all__ = ["Predictions", "collect_predictions"]

_METADATA_KEY = "modelfusion.predictions"


class _PredictionsHeader(BaseModel):
    model_config = ConfigDict(extra="ignore")

    member_names: list[Annotated[StrictStr, Field(max_length=MAX_NAME_CHARS)]]
    task: Task
    split: StrictStr = Field(max_length=64)
    classes: list[StrictStr | StrictInt | StrictFloat | StrictBool] | None = None


@dataclass(frozen=True)
class Predictions:
    """Outputs of K members on the N samples of one split.

    Attributes:
        outputs: logits `[K, N, C]` float32 (classification) or values `[K, N]` float32 (regression).
        labels: targets `[N]` (int64 labels or float32 values), or None when unknown.
        member_names: K unique names, in the order of `outputs`.
        task: "classification" or "regression".
        split: the split these predictions were made on ("val", "test", ...).
        classes: the label of each output column (classification; by default the column indices).
    """

    outputs: torch.Tensor
    labels: torch.Tensor | None
    member_names: tuple[str, ...]
    task: Task
    split: str
    classes: tuple | None = None

    def __post_init__(self) -> None:
        _check_fields(self)
        object.__setattr__(self, "member_names", tuple(self.member_names))
        self._check_outputs()
        if self.classes is None and self.task == "classification":
            # a combiner fitted on these records its classes: without them, its saved file could not be read back
            object.__setattr__(self, "classes", tuple(range(self.outputs.shape[2])))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
            check_classes(self.classes, "the predictions")
            if self.task == "classification" and len(self.classes) != self.outputs.shape[2]:
                raise InvalidInputError(f"got {len(self.classes)} classes for {self.outputs.shape[2]} output columns")
        if self.labels is not None:
            self._check_labels()

    def _check_outputs(self) -> None:
        """The task, the outputs' shape, dtype and values, and one unique name per member."""
        expected_ndim = 3 if self.task == "classification" else 2
        if self.task not in TASKS:
            raise InvalidInputError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.outputs.ndim != expected_ndim:
            raise InvalidInputError(
                f"{self.task} outputs must have {expected_ndim} dims ([K, N{', C' if expected_ndim == 3 else ''}]),"
                f" got shape {tuple(self.outputs.shape)}"
            )
        if self.outputs.shape[0] == 0:
            raise InvalidInputError("predictions of no members; pass at least one member's outputs")
        if not self.outputs.is_floating_point():
            raise InvalidInputError(f"outputs must be floating point, got {self.outputs.dtype}")
        if len(self.member_names) != self.outputs.shape[0]:
            raise InvalidInputError(
                f"got {len(self.member_names)} member names for {self.outputs.shape[0]} members' outputs"
            )
        repeated = sorted({n for n in self.member_names if self.member_names.count(n) > 1})
        if repeated:
            raise InvalidInputError(f"member names must be unique; {repeated} appear more than once")
        for name, out in zip(self.member_names, self.outputs, strict=True):
            _check_finite(out, name)

    def _check_labels(self) -> None:
        labels = self.labels
        if labels.ndim != 1 or len(labels) != self.outputs.shape[1]:
            raise InvalidInputError(
                f"labels must be one per sample: got shape {tuple(labels.shape)} for {self.outputs.shape[1]} samples"
            )
        if self.task == "regression":
            if not labels.is_floating_point() or not bool(torch.isfinite(labels).all()):
                raise InvalidInputError("regression targets must be finite floating-point values")
            return
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise InvalidInputError(f"class labels must be integer column indices, got {labels.dtype}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.outputs.shape[2]):
            raise InvalidInputError(
                f"class labels must lie in 0..{self.outputs.shape[2] - 1} (the output columns), got values from "
                f"{int(labels.min())} to {int(labels.max())}"
            )

    @property
    def num_members(self) -> int:
        return self.outputs.shape[0]

    @property
    def num_samples(self) -> int:
        return self.outputs.shape[1]

    @property
    def num_classes(self) -> int:
        return self.outputs.shape[2] if self.task == "classification" else 0

    def probabilities(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Softmax of the logits, `[K, N, C]` (classification only), computed in float64."""
        if self.task != "classification":
            raise InvalidInputError("probabilities exist only for classification predictions")
        return torch.softmax(self.outputs.double(), dim=-1).to(dtype)

    def select(self, names: Sequence[str]) -> Predictions:
        """The predictions of the named members only, in the given order."""
        missing = [n for n in names if n not in self.member_names]
        if missing:
            raise InvalidInputError(f"no member named {missing}; members are {list(self.member_names)}")
        index = [self.member_names.index(n) for n in names]
        return Predictions(self.outputs[index], self.labels, tuple(names), self.task, self.split, self.classes)

    @checked
    def save(self, path: PathArg, *, overwrite: bool = False) -> Path:
        """Save as one safetensors file whose header holds the JSON metadata; written atomically. An existing
        file is replaced only with `overwrite`."""
        tensors = {"outputs": self.outputs}
        if self.labels is not None:
            tensors["labels"] = self.labels
        meta = {
            "member_names": list(self.member_names),
            "task": self.task,
            "split": self.split,
            "classes": list(self.classes) if self.classes is not None else None,
        }
        return write_tensors(path, tensors, key=_METADATA_KEY, description=meta, overwrite=overwrite)

    @classmethod
    @checked
    def load(cls, path: PathArg) -> Predictions:
        """Read a file written by `save`; every problem with it is one `CheckpointError` naming the file."""
        tensors, description = read_tensors(path, key=_METADATA_KEY, what="predictions file")
        if description is None or "outputs" not in tensors:
            raise CheckpointError(f"{path} is a safetensors file but not a saved Predictions (no metadata)")
        meta = parse_description(_PredictionsHeader, description, path, "predictions header")
        try:
            return cls(
                outputs=tensors["outputs"],
                labels=tensors.get("labels"),
                member_names=tuple(meta.member_names),
                task=meta.task,
                split=meta.split,
                classes=meta.classes,
            )
        except InvalidInputError as err:
            raise CheckpointError(f"{path}: {err}") from None

    def join(self, other: Predictions) -> Predictions:
        """The members of both, on the same samples (same split, task, labels and classes)."""
        same_labels = (self.labels is None) == (other.labels is None) and (
            self.labels is None or torch.equal(self.labels, other.labels)
        )
        if (self.task, self.split, self.classes) != (other.task, other.split, other.classes) or not same_labels:
            raise IncompatibleModelsError(
                "can only join predictions of the same split, task, classes and labels; got "
                f"{self.split}/{self.task} and {other.split}/{other.task}"
            )
        outputs = torch.cat([self.outputs, other.outputs])
        names = self.member_names + other.member_names
        return Predictions(outputs, self.labels, names, self.task, self.split, self.classes)


def normalized_split(split: str) -> str:
    """A split's name as compared: compatibility forms folded (NFKC: a full-width "ｔｅｓｔ" is "test"), invisible
    and formatting characters (a zero-width space) and surrounding spaces dropped, case folded."""
    folded = unicodedata.normalize("NFKC", split)
    visible = "".join(c for c in folded if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    return visible.strip().casefold()


def is_test_split(split: str) -> bool:
    """Whether predictions of `split` are the test split's, which nothing may be fitted on ("test", "Test ",
    "test" with a zero-width space)."""
    return normalized_split(split) == "test"


def check_fit_labels(labels: torch.Tensor | None, task: Task, fitter: str) -> None:
    """Refuse to fit `fitter` on no samples, or on classification labels of a single class (nothing to tell
    apart: scikit-learn's meta-learners fail deep inside, the weights learn nothing); for what learns from
    the labels (the ensemble workflow, stacking, the choice among combiners, cascades)."""
    if labels is None:
        return
    if len(labels) == 0:
        raise InvalidInputError(f"{fitter}: the validation predictions hold no samples; fit on a validation split")
    if task == "classification":
        present = torch.unique(labels)
        if len(present) < 2:
            raise InvalidInputError(
                f"{fitter}: every one of the {len(labels)} validation labels is class {int(present[0])}; fitting "
                "needs validation samples of at least two classes (a stratified split has them)"
            )


def check_fit_split(preds: Predictions, fitter: str) -> None:
    """Refuse to fit `fitter` (e.g. "combiner 'weighted'") on test predictions: whatever is fitted on them has
    seen the labels it is then scored on, and its test score means nothing. Also refuses predictions of no
    samples."""
    if is_test_split(preds.split):
        raise LeakageError(
            f"{fitter}: refusing to fit on predictions of the {preds.split!r} split (it would then be scored on the "
            "labels it learned from); fit on validation predictions (split 'val') and only score on test"
        )
    if preds.num_samples == 0:
        raise InvalidInputError(f"{fitter}: the validation predictions hold no samples; fit on a validation split")


def same_samples(first: Predictions, second: Predictions) -> bool:
    """Whether two sets of predictions hold the same samples: the same multiset of per-sample fingerprints
    (each sample's label and every member's outputs, bit for bit), whatever their order or split names.
    Different splits of real data never match as a whole, even for members whose outputs repeat (trees)."""
    if first.outputs.shape != second.outputs.shape or (first.labels is None) != (second.labels is None):
        return False

    def fingerprints(preds: Predictions) -> np.ndarray:
        per_sample = preds.outputs.float().transpose(0, 1).reshape(preds.num_samples, -1).numpy().view(np.int32)
        if preds.labels is not None:
            labels = preds.labels.double().numpy().view(np.int64).view(np.int32).reshape(preds.num_samples, -1)
            per_sample = np.concatenate([labels, per_sample], axis=1)
        return per_sample[np.lexsort(per_sample.T[::-1])]

    return bool(np.array_equal(fingerprints(first), fingerprints(second)))


def _check_finite(out: torch.Tensor, name: str) -> None:
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InvalidInputError(
            f"member {name!r} produced {bad} NaN/inf values out of {out.numel()}; check its weights and inputs"
        )


def _check_output(member: Member, out: torch.Tensor, n: int) -> torch.Tensor:
    expected = (n, member.num_outputs) if member.task == "classification" else (n,)
    if tuple(out.shape) != expected:
        raise IncompatibleModelsError(
            f"member {member.name!r} returned shape {tuple(out.shape)} for {n} samples, expected {expected}"
        )
    _check_finite(out, member.name)
    return out.float()


def _run(member: Member, batch: torch.Tensor) -> torch.Tensor:
    """`member.predict(batch)`; a member that cannot take these inputs (the wrong width, most often) fails with
    one line naming it, instead of the library's traceback from deep inside."""
    try:
        return torch.as_tensor(member.predict(batch))
    except ModelFusionError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        reason = " ".join(str(err).split())[:240] or type(err).__name__
        raise IncompatibleModelsError(
            f"member {member.name!r} cannot run on inputs of shape {list(batch.shape)} ({reason}); were the "
            "members trained on this dataset?"
        ) from None


def _check_fields(preds: Predictions) -> None:
    """The types of a `Predictions`' fields, before anything reads them (a list is not a tensor; a text is not a
    list of names)."""

    def listed(value) -> bool:
        return isinstance(value, Sequence) and not isinstance(value, str)

    expected = {
        "outputs": ("a torch.Tensor", lambda v: isinstance(v, torch.Tensor)),
        "labels": ("a torch.Tensor or None", lambda v: v is None or isinstance(v, torch.Tensor)),
        "member_names": ("a list of names (text)", lambda v: listed(v) and all(isinstance(n, str) for n in v)),
        "split": ("a name (text)", lambda v: isinstance(v, str)),
        "classes": (
            "a list of labels or None",
            lambda v: v is None or isinstance(v, Sequence) and not isinstance(v, str),
        ),
    }
    for field_name, (what, right) in expected.items():
        value = getattr(preds, field_name)
        if not right(value):
            raise ArgumentError(f"Predictions: {field_name} must be {what}, got {type(value).__name__} {value!r:.60}")


@checked
def collect_predictions(
    members: Sequence[Member],
    X: torch.Tensor | np.ndarray | Texts | list[str],
    y: torch.Tensor | np.ndarray | None = None,
    split: str = "test",
    *,
    batch_size: PositiveInt = 1024,
    progress: bool = True,
) -> Predictions:
    """Run each member once over `X` in batches and gather the outputs.

    Under torch.distributed (`torchrun`; a process group of several processes) every process calls this with
    the same arguments: each runs the members on its contiguous share of the batches (the batches a single
    process would make, so the outputs are the same bit for bit) and every process returns all the outputs,
    gathered in order. An error on one process is raised on all of them. Only the first shows a progress bar.

    Args:
        members: members to run (checked for one task, equal class count and order, unique names).
        X: inputs `[N, ...]`, or N strings (`Texts`) for members that take text.
        y: targets `[N]`, kept with the predictions for scoring.
        split: the name recorded with the predictions.
        batch_size: samples per forward call.
        progress: show a progress bar over batches.

    Example:
        >>> preds = collect_predictions(members, data.test.X, data.test.y, "test")
        >>> preds.outputs.shape  # [K, N, C]
    """
    members = check_members(members)
    check_count(batch_size, "batch_size")
    X = as_texts(X) if is_texts(X) else torch.as_tensor(X)  # strings go to members that tokenize them
    n = len(X)
    if n == 0:
        raise InvalidInputError("no samples to predict on (X is empty)")
    if y is not None and len(y) != n:
        raise InvalidInputError(f"got {len(y)} targets for {n} samples")
    first = members[0]
    with failing_together():
        mine = _predict_share(members, X, split, batch_size=batch_size, progress=progress)
    # [K, n, ...] from the samples-first shards of every process (one process: its own, unchanged)
    outputs = concat_over_processes(mine.movedim(1, 0)).movedim(0, 1).contiguous()
    return Predictions(
        outputs=outputs,
        labels=None if y is None else torch.as_tensor(y),
        member_names=tuple(m.name for m in members),
        task=first.task,
        split=split,
        classes=first.classes,
    )


def _predict_share(
    members: list[Member], X: torch.Tensor | Texts, split: str, *, batch_size: int, progress: bool
) -> torch.Tensor:
    """Every member's checked outputs on this process's share of the batches of `X`, `[K, rows, ...]` float32
    (all of them in a single process)."""
    batches = my_share(-(-len(X) // batch_size))
    width = (members[0].num_outputs,) if members[0].task == "classification" else ()
    outputs = []
    with progress_bar(progress and process_rank()[0] == 0) as bar:
        task_id = bar.add_task(f"predicting {split}", total=len(members) * len(batches))
        for member in members:
            parts = [torch.empty((0, *width))]  # a process may have no batches (more processes than batches)
            for index in batches:
                batch = X[index * batch_size : (index + 1) * batch_size]
                parts.append(_check_output(member, _run(member, batch), len(batch)))
                bar.advance(task_id)
            outputs.append(torch.cat(parts))
    return torch.stack(outputs)
