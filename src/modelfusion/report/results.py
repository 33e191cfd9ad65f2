"""Reading results.json for the HTML report, whichever command wrote it.

Two shapes are read. The report's own (what `modelfusion auto` writes) is `Results` below: every candidate
with its family, validation and test scores and cost, the chosen one, the verdict against the best member,
optional curves, diversity, skipped families, configuration and versions. The results of `modelfusion
ensemble` and `modelfusion demo` (`EnsembleRun.summary()`: a test `Report` and the fusion chosen on
validation) are adapted to it: their members become candidates of family "member", their fusions of family
"output". Anything else is a `ConfigError` naming the file and the first thing wrong.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._checks import first_problem
from ..errors import ConfigError

__all__ = ["Results", "Candidate", "load_results", "parse_results"]

SIGNIFICANCE_LEVEL = 0.05
Interval = tuple[float, float]
Scores = dict[str, float | Interval | None]  # "accuracy", "nll", "ece", ... and "<metric>_ci": [low, high]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Candidate(_Model):
    """One row of the leaderboard: a member or a fusion of any family."""

    name: str
    family: str
    val: Scores = {}
    test: Scores
    cost: dict[str, float | None] = {}  # parameters, bytes, latency_batch_1_us, forward_passes, ...
    p_vs_best_member: float | None = None  # the verdict's test of this candidate against the best member
    path: str | None = None


class Verdict(_Model):
    """The chosen fusion tested against the best single member on the test split."""

    best_member: str
    chosen: str
    p_value: float | None = Field(default=None, validation_alias=AliasChoices("mcnemar_p", "p_value"))
    test: str = "McNemar's exact test"
    significant: bool | None = None

    @model_validator(mode="after")
    def _decide(self) -> Verdict:
        if self.significant is None and self.p_value is not None and math.isfinite(self.p_value):
            return self.model_copy(update={"significant": self.p_value < SIGNIFICANCE_LEVEL})
        return self


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
    and j predict different classes."""

    members: list[str]
    disagreement: list[list[float | None]]
    oracle_accuracy: float | None = None
    mean_disagreement: float | None = None
    mean_error_correlation: float | None = None

    @model_validator(mode="after")
    def _square(self) -> Diversity:
        k = len(self.members)
        if len(self.disagreement) != k or any(len(row) != k for row in self.disagreement):
            raise ValueError(f"disagreement must be a {k} x {k} matrix, one row and column per member")
        return self


class Skipped(_Model):
    family: str
    reason: str


class Results(_Model):
    """What the report shows; only `leaderboard` (one candidate at least) and `chosen` are required."""

    chosen: Candidate | None  # None: nothing was chosen (too few validation samples to choose)
    leaderboard: list[Candidate] = Field(min_length=1)
    verdict: Verdict | None = None
    curves: Curves = Curves()
    diversity: Diversity | None = None
    skipped: list[Skipped] = []
    config: dict[str, Any] = {}
    versions: dict[str, Any] = {}
    notes: list[str] = []  # what the reader should know about how the numbers were made

    @property
    def primary_metric(self) -> str:
        """accuracy (higher is better) when candidates have it, else RMSE (lower is better)."""
        return "accuracy" if any(c.test.get("accuracy") is not None for c in self.leaderboard) else "rmse"


def _validation_summary(err: ValidationError) -> str:
    where, problem = first_problem(err)
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    return f"{where}: {problem}{more}"


def parse_results(data: Any, source: str = "the results") -> Results:
    """`data` (parsed JSON) as `Results`, adapting the results of `modelfusion ensemble`/`demo`; a
    `ConfigError` naming `source` and the first problem otherwise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object of results, got {type(data).__name__}")
    if _holds_invalid_text(data):
        raise ConfigError(f"{source}: holds text that is not valid Unicode (a lone surrogate such as \\ud800)")
    try:
        if "leaderboard" in data:
            return Results.model_validate(data)
        if isinstance(data.get("test"), Mapping) and "rows" in data["test"]:
            return Results.model_validate(_from_ensemble(data))
    except ValidationError as err:
        raise ConfigError(f"{source}: not results of modelfusion ({_validation_summary(err)})") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:  # an ensemble file, odd parts
        raise ConfigError(f"{source}: not results of modelfusion ({type(err).__name__}: {err})") from None
    raise ConfigError(
        f"{source}: not results of modelfusion: it has neither 'leaderboard' (modelfusion auto) nor 'test.rows' "
        "(modelfusion ensemble or demo)"
    )


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
    """Read a results.json written by `modelfusion auto`, `ensemble` or `demo`.

    Raises `ConfigError` (one line naming the file) when it is missing, not JSON or not results.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; give the results.json a modelfusion command wrote") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; give the results.json inside it") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a JSON file (it is not UTF-8 text)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # ValueError: not JSON, or an integer too long to convert
        reason = "nested too deeply" if isinstance(err, RecursionError) else getattr(err, "msg", str(err))
        raise ConfigError(f"{path}: not a JSON file ({reason})") from None
    return parse_results(data, str(path))


# -- the results of `modelfusion ensemble` / `demo` ------------------------------------------------------------
def _from_ensemble(data: Mapping) -> dict:
    """`EnsembleRun.summary()` (plus the demo's dataset, settings and environment) in the report's shape."""
    test = data["test"]
    rows = test["rows"]
    members = [row["name"] for row in rows if row.get("kind") == "member"]
    combiners = data.get("combiners") or {}
    chosen_info = data.get("chosen") or {}
    validation = chosen_info.get("cross_validated") or {}
    candidates = []
    for row in rows:
        is_member = row.get("kind") == "member"
        versus = row.get("vs_best_member") or {}
        scores = dict(row.get("metrics") or {})
        scores.update({f"{metric}_ci": interval for metric, interval in (row.get("ci") or {}).items()})
        candidates.append(
            {
                "name": row["name"],
                "family": "member" if is_member else "output",
                "val": validation.get(row["name"], {}),
                "test": scores,
                "cost": {"forward_passes": 1 if is_member else _members_run(combiners.get(row["name"]), members)},
                "p_vs_best_member": versus.get("p_value"),
            }
        )
    by_name = {c["name"]: c for c in candidates}
    chosen = by_name.get(chosen_info.get("name"))
    results: dict[str, Any] = {
        "chosen": chosen,
        "leaderboard": candidates,
        "curves": {"reliability": test.get("reliability") or {}},
        "config": {key: data[key] for key in ("dataset", "settings", "members") if key in data},
        "versions": {**({"modelfusion": data["modelfusion_version"]} if "modelfusion_version" in data else {})},
        "notes": [_interval_note(test)],
    }
    results["versions"].update(data.get("environment") or {})
    results["config"]["combiners"] = {name: c.get("params") for name, c in combiners.items()}
    if chosen_info.get("reason"):
        results["notes"].append(f"chosen on validation: {chosen_info['reason']}")
    if chosen is not None:
        row = next(r for r in rows if r["name"] == chosen["name"])
        versus = row.get("vs_best_member") or {}
        results["verdict"] = {
            "best_member": test["best_member"],
            "chosen": chosen["name"],
            "p_value": versus.get("p_value"),
            "test": "McNemar's exact test" if versus.get("test") == "mcnemar_exact" else "a paired bootstrap test",
        }
    diversity = test.get("diversity") or {}
    if "disagreement" in diversity:
        results["diversity"] = {"members": members, **diversity}
    return results


def _interval_note(test: Mapping) -> str:
    """How the test intervals were made, from a results file's own fields; a confidence that is not a share in
    (0, 1) is left out rather than formatted as a percentage."""
    confidence = test.get("confidence", 0.95)
    is_share = isinstance(confidence, int | float) and not isinstance(confidence, bool) and 0 < confidence < 1
    level = f"{confidence:.0%} " if is_share else ""
    return (
        f"test split: {test.get('num_samples')} samples; intervals: {level}percentile bootstrap over "
        f"{test.get('n_resamples')} resamples"
    )


def _members_run(combiner: Mapping | None, members: list[str]) -> int:
    """How many members a fusion runs: those with a non-zero weight when it learned weights (a selection, or
    the best member alone after a fallback), else all of them."""
    weights = (combiner or {}).get("weights")
    if isinstance(weights, list) and weights and all(isinstance(w, int | float) for w in weights):
        return sum(1 for w in weights if w != 0)
    return len(members)
