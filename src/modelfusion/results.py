"""One results schema for every workflow: what `auto`, `ensemble`, `demo`, `compress`, `cascade` and
`evaluate --json` write to results.json, and what `modelfusion.report` reads (`Results.save` / `load_results`).

`Results` holds every candidate (a member or a fusion of any family) with its validation and test scores and
its `Cost`, the chosen one, the verdict against the best member, optional curves, diversity, skipped families,
configuration, versions and notes. A `Candidate` built by a workflow also carries what is never written: its
probabilities and how to export it. A field is written when the workflow set it, so a file holds what its
command measured and nothing invented; reading fills in the defaults. Anything else is a `ConfigError`
naming the file and the first thing wrong.

Importing this module imports neither torch nor numpy: the report reads results without them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._atomic import write_json
from ._checks import first_problem
from ._files import read_file
from .errors import ConfigError

__all__ = [
    "Results",
    "Candidate",
    "Cost",
    "Verdict",
    "Curves",
    "Diversity",
    "Skipped",
    "load_results",
    "parse_results",
    "versions",
    "SIGNIFICANCE_LEVEL",
]

SIGNIFICANCE_LEVEL = 0.05
MAX_RESULTS_BYTES = 256 * 2**20  # a results.json with every figure of an `auto` run is a few MB
Interval = tuple[float, float]
Scores = dict[str, float | Interval | None]  # "accuracy", "nll", "ece", ... and "<metric>_ci": [low, high]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def updated(self, **fields: Any):
        """A copy with `fields` validated and set (so written, as the fields set before are)."""
        kept = {name: getattr(self, name) for name in self.model_fields_set}
        return type(self)(**{**kept, **fields})


class Cost(_Model):
    """What a candidate costs: values stored (`parameters`), `bytes` stored, the median CPU latency of one
    sample at batch 1 (a fusion's: its members' summed, since they run one after another), forward passes per
    sample, and `per_sample`: a cost in the caller's own units (a cascade's). None: not measured, or not
    comparable (a scikit-learn member's parameters)."""

    parameters: int | float | None = None
    bytes: int | float | None = None
    latency_batch_1_us: float | None = None
    forward_passes: int | float | None = None
    per_sample: float | None = None


class Candidate(_Model):
    """One row of the leaderboard: a member or a fusion of any family.

    `val` holds validation scores: the candidate's own for what was not fitted on validation, cross-validated
    ones for what was (output combiners). `details` holds what its family learned or measured beyond the
    scores (a combiner's weights, a test's counts). A workflow's candidate also carries, never written:
    `val_proba` / `test_proba` (`[N, C]` probabilities), `export(path)` (writes it in its natural form, returns
    where) and `network` (the candidate as one torch member, when it is one network).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    family: str
    val: Scores = {}
    test: Scores = {}
    cost: Cost = Cost()
    p_vs_best_member: float | None = None  # the verdict's test of this candidate against the best member
    description: str = ""
    path: str | None = None  # where the chosen candidate was exported
    details: dict[str, Any] = {}
    val_proba: Any = Field(default=None, exclude=True, repr=False)
    test_proba: Any = Field(default=None, exclude=True, repr=False)
    export: Callable[[Path], Path] | None = Field(default=None, exclude=True, repr=False)
    network: Any = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:  # by what is written: the arrays compare elementwise
        return isinstance(other, Candidate) and self.model_dump() == other.model_dump()

    __hash__ = object.__hash__

    def scored(self, **fields: Any) -> Candidate:
        """A copy with `fields` set (and written): the test scores, the p-value against the best member."""
        return self.updated(**fields)


class Verdict(_Model):
    """The chosen candidate (a fusion) tested against a baseline (the best single member, chosen on validation)
    on the test split; `best_member` names the baseline."""

    best_member: str
    chosen: str
    p_value: float | None = None
    test: str = "McNemar's exact test"
    subject: str = "fusion"  # what was chosen, in words: "fusion", "compressed model", "cascade"
    baseline: str = "best member"  # what it is tested against, in words: "best member", "uncompressed model"

    @property
    def significant(self) -> bool | None:
        """Whether `p_value` is below `SIGNIFICANCE_LEVEL` (None without a finite p-value)."""
        if self.p_value is None or not math.isfinite(self.p_value):
            return None
        return self.p_value < SIGNIFICANCE_LEVEL


class ReliabilityCurve(_Model):
    """Per confidence bin: mean top-label confidence, accuracy, samples (`evaluate.reliability_curve`)."""

    confidence: list[float]
    accuracy: list[float]
    count: list[float]

    @model_validator(mode="after")
    def _same_lengths(self) -> ReliabilityCurve:
        if not len(self.confidence) == len(self.accuracy) == len(self.count):
            raise ValueError("confidence, accuracy and count must have one entry per bin")
        return self


class InterpolationPoint(_Model):
    """One point of `align.interpolation_curve`: the model at `alpha` between two endpoints."""

    alpha: float
    accuracy: float
    loss: float | None = None


class CascadePoint(_Model):
    """One point of `Cascade.curve`: accuracy against mean cost per sample at one threshold."""

    mean_cost: float
    accuracy: float
    threshold: float | None = None


class SearchPoint(_Model):
    """One merge of a merge search (`merge.search`): its validation value and the best so far."""

    evaluation: int
    value: float
    best: float


def _named(value: Any, default_name: str) -> Any:
    """A bare curve (a list of points, or one reliability curve) as the only curve of a name -> curve map."""
    if isinstance(value, list) or (isinstance(value, Mapping) and "confidence" in value):
        return {default_name: value}
    return value


class Curves(_Model):
    """Each a map from a name (a candidate, a pair of merged models) to its curve; a bare curve is accepted."""

    reliability: dict[str, ReliabilityCurve] = {}
    interpolation: dict[str, list[InterpolationPoint]] = {}
    cascade: dict[str, list[CascadePoint]] = {}
    search: dict[str, list[SearchPoint]] = {}

    @field_validator("reliability", "interpolation", "cascade", "search", mode="before")
    @classmethod
    def _bare_curve(cls, value: Any, info) -> Any:
        return _named(value, info.field_name)


class Diversity(_Model):
    """How differently the members predict: `disagreement[i][j]` is the share of samples on which members i
    and j predict different classes (classification), `error_correlation[i][j]` the correlation of their
    errors."""

    members: list[str]
    disagreement: list[list[float | None]] | None = None
    oracle_accuracy: float | None = None
    mean_disagreement: float | None = None
    mean_error_correlation: float | None = None
    error_correlation: list[list[float | None]] | None = None

    @model_validator(mode="after")
    def _square(self) -> Diversity:
        k = len(self.members)
        for name in ("disagreement", "error_correlation"):
            matrix = getattr(self, name)
            if matrix is not None and (len(matrix) != k or any(len(row) != k for row in matrix)):
                raise ValueError(f"{name} must be a {k} x {k} matrix, one row and column per member")
        return self


class Skipped(_Model):
    family: str
    reason: str


class Results(_Model):
    """One run's results; only `leaderboard` (one candidate at least) and `chosen` are required."""

    chosen: Candidate | None  # None: nothing was chosen (too few validation samples to choose)
    leaderboard: list[Candidate] = Field(min_length=1)
    verdict: Verdict | None = None
    curves: Curves = Curves()
    diversity: Diversity | None = None
    skipped: list[Skipped] = []
    config: dict[str, Any] = {}
    versions: dict[str, Any] = {}
    notes: list[str] = []  # what the reader should know about how the numbers were made
    wall_seconds: float | None = None

    @property
    def primary_metric(self) -> str:
        """accuracy (higher is better) when candidates have it, else RMSE (lower is better)."""
        return "accuracy" if any(c.test.get("accuracy") is not None for c in self.leaderboard) else "rmse"

    def candidate(self, name: str) -> Candidate:
        """The leaderboard's candidate named `name`."""
        for candidate in self.leaderboard:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no candidate named {name!r}; the leaderboard has {[c.name for c in self.leaderboard]}")

    def to_json(self) -> dict[str, Any]:
        """The JSON object results.json holds: the fields the workflow set, nothing else."""
        return self.model_dump(mode="json", exclude_unset=True)

    def save(self, path: str | os.PathLike) -> Path:
        """Write results.json (indented, atomically) at `path`; `load_results` reads it back."""
        write_json(path, self.to_json())
        return Path(path)


def versions() -> dict[str, Any]:
    """The versions a run's numbers depend on: modelfusion, Python, torch and its thread count."""
    import platform

    import torch

    from . import __version__

    return {
        "modelfusion": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _validation_summary(err: ValidationError) -> str:
    where, problem = first_problem(err)
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    return f"{where}: {problem}{more}"


def parse_results(data: Any, source: str = "the results") -> Results:
    """`data` (parsed JSON) as `Results`; a `ConfigError` naming `source` and the first problem otherwise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object of results, got {type(data).__name__}")
    if _holds_invalid_text(data):
        raise ConfigError(f"{source}: holds text that is not valid Unicode (a lone surrogate such as \\ud800)")
    if "leaderboard" not in data:
        earlier = isinstance(data.get("test"), Mapping) and "rows" in data["test"]
        raise ConfigError(
            f"{source}: written by an earlier modelfusion ensemble or demo (results under 'test.rows'); run the "
            "command again to write results this version reads"
            if earlier
            else f"{source}: not results of modelfusion: it has no 'leaderboard'"
        )
    try:
        return Results.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: not results of modelfusion ({_validation_summary(err)})") from None


def _holds_invalid_text(data: Any) -> bool:
    """Whether a string anywhere in `data` cannot be written as UTF-8 (JSON's "\\ud800" escapes give such
    strings); walked without recursion, so deep nesting cannot exhaust the stack."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, Mapping):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
    return False


def load_results(path: str | os.PathLike) -> Results:
    """Read a results.json that a modelfusion command wrote (`Results.save`).

    Raises `ConfigError` (one line naming the file) when it is missing, not JSON or not results.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"{path}: no such file; give the results.json a modelfusion command wrote")
    try:
        text = read_file(path, "results.json", MAX_RESULTS_BYTES, error=ConfigError).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a JSON file (it is not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # ValueError: not JSON, or an integer too long to convert
        reason = "nested too deeply" if isinstance(err, RecursionError) else getattr(err, "msg", str(err))
        raise ConfigError(f"{path}: not a JSON file ({reason})") from None
    return parse_results(data, str(path))
