"""`InputGuard`: screen what reaches a model, sample by sample, before it answers.

Fitted on the training split (schema, per-feature ranges, the state of feature scores) and the validation split
(which score to use, and its threshold for a target false-positive rate); the test split is never seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from .._atomic import write_json
from .._checks import PathArg, check_number, check_seed, checked
from .._modules import last_linear_inputs
from .._safetensors import parse_description, read_tensors, write_tensors
from ..datasets import Split
from ..errors import (
    CheckpointError,
    ConfigError,
    IncompatibleModelsError,
    InvalidInputError,
    NotFittedError,
    first_line,
)
from ..members import MAX_NAME_CHARS, Member, TorchMember, as_member, check_members
from ..texts import is_texts
from .scores import SCORES

__all__ = ["InputGuard", "Verdicts", "feature_shuffled", "proxy_outliers"]

_METADATA_KEY = "modelfusion.guard"
MAX_SHOWN = 3


@dataclass(frozen=True)
class Verdicts:
    """What `InputGuard.check` says about each sample.

    Attributes:
        ok: `[N]` bool, True where the sample may reach the model.
        reasons: one string per sample: why it was rejected ("" where ok), reasons joined by "; ".
        scores: `[N]` float64 out-of-distribution scores (inf for a row with NaN/inf values).
        score: the name of the score used; threshold: the score above which a sample is rejected.
    """

    ok: np.ndarray
    reasons: tuple[str, ...]
    scores: np.ndarray
    score: str
    threshold: float

    def __len__(self) -> int:
        return len(self.ok)

    @property
    def rejected(self) -> np.ndarray:
        """Indices of the rejected samples."""
        return np.flatnonzero(~self.ok)

    def summary(self) -> str:
        """One line: how many were rejected and for which kinds of reason."""
        kinds: dict[str, int] = {}
        for reason in self.reasons:
            for part in filter(None, reason.split("; ")):
                kind = part.split(" (")[0].split(":")[0]
                kinds[kind] = kinds.get(kind, 0) + 1
        detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        return f"{len(self.rejected)} of {len(self)} rejected" + (f" ({detail})" if detail else "")

    def to_json(self) -> dict:
        """Every verdict as JSON: the score and threshold, and per sample whether it passed, why not, and its
        score (None where it is not finite: JSON has no inf)."""
        return {
            "score": self.score,
            "threshold": self.threshold,
            "ok": self.ok.tolist(),
            "reasons": list(self.reasons),
            "scores": [float(s) if math.isfinite(s) else None for s in self.scores],
        }

    def save(self, path: PathArg) -> Path:
        """Write `to_json()` to `path` (atomically)."""
        write_json(path, self.to_json())
        return Path(path)


def feature_shuffled(X: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """`X` with each feature permuted across samples on its own: every value stays in its feature's range and
    distribution, the joint structure is gone. One of the `proxy_outliers`."""
    flat = X.reshape(len(X), -1)
    generator = torch.Generator().manual_seed(seed)
    columns = [flat[torch.randperm(len(X), generator=generator), j] for j in range(flat.shape[1])]
    return torch.stack(columns, dim=1).reshape(X.shape)


def proxy_outliers(X: torch.Tensor, train_X: torch.Tensor, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Outliers made from `X` (validation samples) and the training split's statistics, on which `InputGuard`
    reports each score's AUROC (`proxy_auroc_`): "feature-shuffled" (`feature_shuffled`: values in place, joint
    structure gone), "uniform" (each feature drawn uniformly over its training range) and "noise" (Gaussian
    noise of each feature's training standard deviation added). A diagnostic, not a choice: a score may do well
    on all three and invert on a shift of another kind (docs/benchmarks.md)."""
    generator = torch.Generator().manual_seed(seed)
    flat, reference = X.reshape(len(X), -1), train_X.reshape(len(train_X), -1).float()
    low, high = reference.min(0).values, reference.max(0).values
    uniform = low + (high - low) * torch.rand(flat.shape, generator=generator)
    noisy = flat + reference.std(0) * torch.randn(flat.shape, generator=generator)
    return {
        "feature-shuffled": feature_shuffled(X, seed=seed),
        "uniform": uniform.reshape(X.shape),
        "noise": noisy.reshape(X.shape),
    }


class InputGuard:
    """Screens inputs: schema (per-sample shape, floating dtype), finiteness, per-feature ranges, and an
    out-of-distribution score with a threshold set on validation.

    Args:
        members: the models whose outputs and features the scores read (members, `nn.Module`s or fitted
            scikit-learn estimators); None: the guard screens the inputs alone (`mahalanobis` on the inputs).
        ood_score: a name in `SCORES` (default `combined`: every other score, each read as its percentile
            among the validation samples, and the largest taken). No single score holds up on every kind of
            shift, and none can be chosen on validation data without knowing the shift: the former
            `ood_score="auto"`, which chose on proxy outliers of validation, picked `energy` where it then
            inverted (AUROC 33 on scaled digits), and even chosen by its worst case over three proxies it
            picked the input Mahalanobis distance where that inverted on blended digits (AUROC 30), so it is
            gone (docs/benchmarks.md).
        fpr: the share of validation samples the threshold may reject (the target false-positive rate).
        range_tolerance: a value may leave its feature's training range by this fraction of the range.
        seed: seed of the held-out part of `train` when no `val` is given, and of the proxy outliers.

    Fitted attributes: `input_shape_`, `low_`, `high_` (allowed ranges, flattened), `score_`, `threshold_`,
    `val_auroc_` (each fitted score's worst AUROC over the `proxy_outliers` of validation), `proxy_auroc_` (its
    AUROC against each kind), `state_` (fitted scores' tensors), `member_names_`.

    Example:
        >>> guard = InputGuard(members).fit(data.train, data.val)
        >>> verdicts = guard.check(X)
        >>> X[verdicts.ok]                        # what may reach the model
    """

    def __init__(
        self,
        members: Sequence | None = None,
        *,
        ood_score: str = "combined",
        fpr: float = 0.05,
        range_tolerance: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.members = members
        self.ood_score = ood_score
        self.fpr = fpr
        self.range_tolerance = range_tolerance
        self.seed = seed

    # -- fitting ---------------------------------------------------------------------------------------------
    @checked
    def fit(self, train: Split, val: Split | None = None) -> InputGuard:
        """Learn the schema and ranges on `train`, fit the feature scores there, then fit `combined`, choose
        the score and set its threshold on `val` (default: a stratified fifth of `train` held out)."""
        if self.ood_score == "auto":
            raise ConfigError(
                "ood_score='auto' is no longer offered: a score chosen on proxy outliers inverted on shifts of "
                "other kinds; use 'combined' (the default) or name a score of SCORES"
            )
        SCORES[self.ood_score]  # an unknown name lists the valid ones
        check_number(self.fpr, "fpr", low=0.0, open_low=True)
        if self.fpr >= 1:
            raise ConfigError(f"fpr must be below 1 (a share of validation samples), got {self.fpr}")
        check_number(self.range_tolerance, "range_tolerance", low=0.0)
        check_seed(self.seed)
        self._members = self._as_members(self.members)
        X, y = self._training_arrays(train, "train")
        if val is None:
            X, y, val_X = self._hold_out(X, y)
        else:
            val_X, _ = self._training_arrays(val, "val")
            if val_X.shape[1:] != X.shape[1:]:
                raise InvalidInputError(
                    f"val samples have shape {tuple(val_X.shape[1:])} but train samples {tuple(X.shape[1:])}"
                )
        self.input_shape_ = tuple(X.shape[1:])
        flat = X.reshape(len(X), -1).double()
        margin = self.range_tolerance * (flat.max(0).values - flat.min(0).values)
        self.low_, self.high_ = flat.min(0).values - margin, flat.max(0).values + margin
        self.member_names_ = tuple(m.name for m in self._members)
        candidates = [n for n in SCORES if self._applies(SCORES[n].needs)]
        if self.ood_score not in candidates:
            raise ConfigError(
                f"score {self.ood_score!r} reads members' outputs or features; pass torch members= or use "
                "'mahalanobis' or 'knn'"
            )
        self.state_ = {}
        sources = {"features": self._features(X), "inputs": _flat(X)}
        for name in candidates:
            if SCORES[name].needs in sources:
                self._store_state(name, SCORES[name].fit(sources[SCORES[name].needs], y))
        components = [n for n in candidates if SCORES[n].needs != "scores"]
        validation = self._score_all(val_X, components)
        for name, values in validation.items():
            if not np.isfinite(values).all():
                raise InvalidInputError(
                    f"score {name!r} is not finite on {int((~np.isfinite(values)).sum())} validation samples: the "
                    "members' outputs or features overflow there; check member.predict(val.X) for inf or NaN"
                )
        for name in candidates:
            if SCORES[name].needs == "scores":
                self._store_state(name, SCORES[name].fit({n: torch.from_numpy(validation[n]) for n in components}))
        self.proxy_auroc_, val_scores = self._proxy_aurocs(val_X, X, candidates)
        self.val_auroc_ = {name: min(aurocs.values()) for name, aurocs in self.proxy_auroc_.items()}
        self.score_ = self.ood_score
        self.threshold_ = float(np.quantile(val_scores[self.score_], 1 - self.fpr))
        return self

    def _applies(self, needs: str) -> bool:
        """Whether scores reading `needs` apply to these members: outputs need members; the raw inputs are a
        source of their own only where the features are the members' (else they are the inputs already)."""
        if needs == "logits":
            return bool(self._members)
        if needs == "inputs":
            return any(isinstance(m, TorchMember) for m in self._members)
        return True

    def _store_state(self, name: str, fitted: dict[str, torch.Tensor]) -> None:
        self.state_.update({f"{name}.{k}": v for k, v in fitted.items()})

    def _state_of(self, name: str) -> dict[str, torch.Tensor]:
        prefix = f"{name}."
        return {k[len(prefix) :]: v for k, v in self.state_.items() if k.startswith(prefix)}

    @staticmethod
    def _as_members(members) -> list[Member]:
        if members is None:
            return []
        listed = [as_member(m, name=f"member_{i}") for i, m in enumerate(members)]
        if not listed:
            raise InvalidInputError("members= is empty; pass at least one model, or None to screen inputs alone")
        listed = check_members(listed)
        if listed[0].task != "classification":
            raise InvalidInputError("the guard's scores read class probabilities; its members must be classifiers")
        return listed

    @staticmethod
    def _training_arrays(split: Split, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not (hasattr(split, "X") and hasattr(split, "y")):
            raise InvalidInputError(
                f"{name} must be a split with X and y (e.g. data.{name}), got {type(split).__name__}"
            )
        if is_texts(split.X):
            raise InvalidInputError(
                f"{name}.X holds texts: the guard screens numeric inputs (value ranges, feature statistics, "
                "feature-shuffled proxies), which texts do not have; text inputs are not screened yet"
            )
        X, y = torch.as_tensor(split.X), torch.as_tensor(split.y)
        if not X.is_floating_point() or X.ndim < 2 or len(X) < 2:
            raise InvalidInputError(
                f"{name}.X must be floating point of shape [N >= 2, features...], got {X.dtype} {tuple(X.shape)}"
            )
        bad = int((~torch.isfinite(X.reshape(len(X), -1))).any(1).sum())
        if bad:
            raise InvalidInputError(f"{name}.X has {bad} rows with NaN or inf values; drop them before fitting")
        if y.shape != (len(X),) or y.is_floating_point():
            raise InvalidInputError(f"{name}.y must be one integer label per row of {name}.X, got {tuple(y.shape)}")
        return X.float(), y

    def _hold_out(self, X: torch.Tensor, y: torch.Tensor):
        from sklearn.model_selection import train_test_split

        counts = torch.bincount(y - y.min())
        stratify = y.numpy() if int(counts[counts > 0].min()) >= 2 else None
        keep, held = train_test_split(np.arange(len(X)), test_size=0.2, random_state=self.seed, stratify=stratify)
        return X[keep], y[keep], X[held]

    def _proxy_aurocs(
        self, val_X: torch.Tensor, train_X: torch.Tensor, candidates: list[str]
    ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
        """Each candidate's AUROC of the validation split against each kind of `proxy_outliers`, and its scores
        of the validation split (scored in the same pass, for the threshold)."""
        from sklearn.metrics import roc_auc_score

        proxies = proxy_outliers(val_X, train_X, seed=self.seed)
        n = len(val_X)
        scores = self._score_all(torch.cat([val_X, *proxies.values()]), candidates)
        truth = np.r_[np.zeros(n), np.ones(n)]
        aurocs = {
            name: {
                kind: float(roc_auc_score(truth, np.r_[scores[name][:n], scores[name][(i + 1) * n : (i + 2) * n]]))
                for i, kind in enumerate(proxies)
            }
            for name in candidates
        }
        return aurocs, {name: values[:n] for name, values in scores.items()}

    # -- scoring ---------------------------------------------------------------------------------------------
    def _features(self, X: torch.Tensor) -> list[torch.Tensor]:
        """One `[N, D]` float64 tensor per feature source: each torch member's penultimate features, or the
        inputs when there is no torch member."""
        torch_members = [m for m in self._members if isinstance(m, TorchMember)]
        if not torch_members:
            return _flat(X)
        return [last_linear_inputs(m.module, X) for m in torch_members]

    def _scores(self, X: torch.Tensor, name: str) -> np.ndarray:
        return self._score_all(X, [name])[name]

    def _score_all(self, X: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
        """Each named score of `X`, the members run once for all of them."""
        inputs: dict[str, object] = {}
        scores: dict[str, np.ndarray] = {}

        def score(name: str) -> np.ndarray:
            if name not in scores:
                spec = SCORES[name]
                if spec.needs == "scores":
                    given = {part: torch.from_numpy(score(part)) for part in self._state_of(name)}
                else:
                    if spec.needs not in inputs:
                        if spec.needs == "logits":
                            inputs[spec.needs] = torch.stack([m.predict(X) for m in self._members])  # [K, N, C]
                        else:
                            inputs[spec.needs] = self._features(X) if spec.needs == "features" else _flat(X)
                    given = inputs[spec.needs]
                scores[name] = spec.score(given, self._state_of(name)).numpy()
            return scores[name]

        return {name: score(name) for name in names}

    def _check_fitted(self) -> None:
        if not hasattr(self, "score_"):
            raise NotFittedError("this InputGuard is not fitted; call fit(train, val) or InputGuard.load(path)")

    def _inputs(self, X) -> tuple[torch.Tensor, np.ndarray]:
        """`X` as float32 after the schema check (one error for the whole batch), and which rows are finite."""
        self._check_fitted()
        try:
            X = torch.as_tensor(X)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InvalidInputError(f"inputs must be a numeric array or tensor ({err})") from None
        if not X.is_floating_point():
            raise InvalidInputError(f"inputs have dtype {X.dtype}; the guard takes floating-point inputs (X.float())")
        if tuple(X.shape[1:]) != self.input_shape_ or X.ndim < 2:
            raise InvalidInputError(
                f"inputs have shape {tuple(X.shape)} but the guard was fitted on samples of shape "
                f"{self.input_shape_}: pass X of shape [N, {', '.join(map(str, self.input_shape_))}]"
            )
        if len(X) == 0:
            raise InvalidInputError("inputs have no samples (shape [0, ...]); pass at least one row to screen")
        X = X.float()  # before the finiteness check: a float64 value beyond float32's range becomes inf here
        finite = torch.isfinite(X.reshape(len(X), -1)).all(1).numpy()
        return X, finite

    def score(self, X, *, name: str | None = None) -> np.ndarray:
        """The out-of-distribution score of each sample, `[N]` float64, higher = more unusual; inf for a row
        with NaN or inf values. `name`: another of the candidates scored at fit time (`val_auroc_`'s keys)
        instead of the chosen `score_`."""
        X, finite = self._inputs(X)
        if name is not None and name not in self.val_auroc_:
            raise ConfigError(f"score {name!r} was not fitted by this guard; fitted: {', '.join(self.val_auroc_)}")
        return self._finite_scores(X, finite, name or self.score_)

    def _finite_scores(self, X: torch.Tensor, finite: np.ndarray, name: str) -> np.ndarray:
        scores = np.full(len(X), math.inf)
        if finite.any():
            computed = self._scores(X[torch.from_numpy(finite)], name)
            scores[finite] = np.where(np.isnan(computed), math.inf, computed)  # unmeasurable is most unusual
        return scores

    @checked
    def check(self, X) -> Verdicts:
        """A verdict per sample: rejected for NaN/inf values, values outside the training ranges, or a score
        above the threshold. Inputs of the wrong shape or dtype are one `InvalidInputError` for the batch."""
        X, finite = self._inputs(X)
        scores = self._finite_scores(X, finite, self.score_)
        flat = X.reshape(len(X), -1).double()
        below, above = flat < self.low_, flat > self.high_
        reasons = []
        for i in range(len(X)):
            row = []
            if not finite[i]:
                bad = torch.nonzero(~torch.isfinite(flat[i]))[:, 0].tolist()
                row.append(f"non-finite values (features {_listed(bad)})")
            outside = torch.nonzero(below[i] | above[i])[:, 0].tolist()
            if outside:
                row.append(f"outside the training range (features {_listed(outside)})")
            if finite[i] and scores[i] > self.threshold_:
                row.append(f"out of distribution ({self.score_} {scores[i]:.4g} > {self.threshold_:.4g})")
            reasons.append("; ".join(row))
        ok = np.array([not r for r in reasons], dtype=bool)
        return Verdicts(ok, tuple(reasons), scores, self.score_, self.threshold_)

    # -- files -----------------------------------------------------------------------------------------------
    @checked
    def save(self, path: PathArg, *, overwrite: bool = False) -> Path:
        """Save the fitted guard (not its members) as one safetensors file with a JSON header, atomically;
        `InputGuard.load(path, members=...)` reads it back."""
        self._check_fitted()
        tensors = {"low": self.low_, "high": self.high_, **{f"state.{k}": v for k, v in self.state_.items()}}
        description = {
            "input_shape": list(self.input_shape_),
            "score": self.score_,
            "threshold": self.threshold_,
            "fpr": self.fpr,
            "range_tolerance": self.range_tolerance,
            "seed": self.seed,
            "member_names": list(self.member_names_),
            "val_auroc": self.val_auroc_,
            "proxy_auroc": self.proxy_auroc_,
        }
        return write_tensors(path, tensors, key=_METADATA_KEY, description=description, overwrite=overwrite)

    @classmethod
    @checked
    def load(cls, path: PathArg, *, members: Sequence | None = None) -> InputGuard:
        """Read a guard written by `save`; `members` must be the models it was fitted with, in that order.
        Every problem with the file is one `CheckpointError` naming it."""
        tensors, description = read_tensors(path, key=_METADATA_KEY, what="guard file")
        if description is None:
            raise CheckpointError(f"{path}: not a guard file (no {_METADATA_KEY!r} description in its header)")
        header = parse_description(_GuardHeader, description, path, "guard file")
        if not math.isfinite(header.threshold):
            raise CheckpointError(f"{path}: the threshold must be a finite number, got {header.threshold}")
        if header.score not in SCORES:
            raise CheckpointError(f"{path}: unknown score {header.score!r}; valid scores: {', '.join(SCORES)}")
        guard = cls(
            members, ood_score=header.score, fpr=header.fpr, range_tolerance=header.range_tolerance, seed=header.seed
        )
        guard._members = cls._as_members(members)
        names = tuple(m.name for m in guard._members)
        if names != tuple(header.member_names):
            raise IncompatibleModelsError(
                f"{path} was fitted with members {header.member_names}, got {list(names)}; pass the same members"
            )
        width = math.prod(header.input_shape)
        for key in ("low", "high"):
            t = tensors.get(key)
            if t is None or t.dtype != torch.float64 or tuple(t.shape) != (width,):
                raise CheckpointError(f"{path}: tensor {key!r} must be float64 of shape ({width},)")
        guard.input_shape_ = tuple(header.input_shape)
        guard.low_, guard.high_ = tensors["low"], tensors["high"]
        guard.state_ = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
        guard.score_, guard.threshold_ = header.score, header.threshold
        guard.member_names_, guard.val_auroc_ = names, dict(header.val_auroc)
        guard.proxy_auroc_ = {name: dict(aurocs) for name, aurocs in header.proxy_auroc.items()}
        guard._check_state(path)
        return guard

    def _check_state(self, path) -> None:
        """The members take inputs of the file's shape, and the stored state fits every score the file names
        (the chosen one and those `score(X, name=...)` offers); both are tried on two zero samples, so a
        mismatched file fails here and not at the first `check`."""
        probe = torch.zeros(2, *self.input_shape_)
        try:
            for member in self._members:
                member.predict(probe)
            widths = [f.shape[1] for f in self._features(probe)]  # of each feature source
        except (RuntimeError, ValueError, IndexError) as err:
            raise IncompatibleModelsError(
                f"{path}: the members fail on inputs of the guard's shape {self.input_shape_} ({first_line(err)})"
            ) from None
        for name in dict.fromkeys([self.score_, *self.val_auroc_]):
            if name not in SCORES:
                raise CheckpointError(f"{path}: unknown score {name!r}; valid scores: {', '.join(SCORES)}")
            self._check_score_state(path, name, widths)

    def _check_score_state(self, path, name: str, widths: list[int]) -> None:
        spec = SCORES[name]
        if spec.needs == "logits":
            if not self._members:
                raise CheckpointError(f"{path}: score {name!r} reads members' outputs but the file has none")
            return
        if spec.needs == "scores":
            references = self._state_of(name)
            if not references:
                raise CheckpointError(f"{path}: score {name!r} has no validation scores to read percentiles against")
            for part, reference in references.items():
                if part not in SCORES or SCORES[part].needs == "scores":
                    raise CheckpointError(f"{path}: score {name!r} combines {part!r}, which is not a score to combine")
                if (
                    reference.dtype != torch.float64
                    or reference.ndim != 1
                    or len(reference) == 0
                    or not bool(torch.isfinite(reference).all())
                    or not bool((reference[1:] >= reference[:-1]).all())
                ):
                    raise CheckpointError(
                        f"{path}: the validation scores of {part!r} in {name!r} must be a non-empty sorted float64 "
                        "vector of finite values"
                    )
                self._check_score_state(path, part, widths)
            return
        sources = widths if spec.needs == "features" else [math.prod(self.input_shape_)]
        if not spec.check(self._state_of(name), sources):
            raise CheckpointError(
                f"{path}: the {name} statistics are missing or do not fit the {', '.join(map(str, sources))} "
                "features of its sources"
            )


def _flat(X: torch.Tensor) -> list[torch.Tensor]:
    """The inputs as the one source of an "inputs" score: `[N, D]` float64."""
    return [X.reshape(len(X), -1).double()]


def _listed(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:MAX_SHOWN]))
    return shown + (f" and {len(indices) - MAX_SHOWN} more" if len(indices) > MAX_SHOWN else "")


class _GuardHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_shape: list[Annotated[StrictInt, Field(ge=1, le=2**20)]] = Field(min_length=1, max_length=8)
    score: StrictStr = Field(max_length=64)
    threshold: StrictFloat | Annotated[StrictInt, Field(ge=-(2**63), le=2**63)]  # a bigger int overflows a float
    fpr: StrictFloat | StrictInt = Field(gt=0, lt=1)
    range_tolerance: StrictFloat | StrictInt = Field(ge=0)
    seed: StrictInt = Field(ge=0, le=2**32 - 1)
    member_names: list[Annotated[StrictStr, Field(max_length=MAX_NAME_CHARS)]] = Field(max_length=1024)
    val_auroc: dict[Annotated[StrictStr, Field(max_length=64)], StrictFloat | StrictInt]
    proxy_auroc: dict[
        Annotated[StrictStr, Field(max_length=64)],
        dict[Annotated[StrictStr, Field(max_length=64)], StrictFloat | StrictInt],
    ] = Field(default_factory=dict)  # absent from guards saved before it was recorded
