"""How `auto` runs its families: each is registered with the families whose results it needs, gets only those,
and returns its own result; adding one is one function with `@family(...)`, in any file.

Example:
    >>> @family("snapshot", requires=("output",))
    ... def snapshot_family(inputs: Inputs) -> FamilyResult:
    ...     fusion = inputs.found["output"].fusion  # the output fusion chosen on validation
    ...     return FamilyResult([...])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..datasets import Dataset
from ..errors import ConfigError
from ..members import Member, TorchMember
from ..predictions import Predictions
from ..registry import Registry
from ..results import Candidate

__all__ = ["FAMILIES", "Family", "FamilyResult", "Inputs", "Skip", "family", "run_order"]


class Skip(Exception):
    """A family that does not apply, with the reason the log and the results show."""


@dataclass(frozen=True)
class FamilyResult:
    """What a family adds: its candidates, the curves it measured (`"interpolation"` or `"cascade"` -> name ->
    points, as `modelfusion.results.Curves` holds them), notes on what it left out, and, for the output family,
    the fusion it chose on validation (a fitted combiner, which distillation and the cascade build on)."""

    candidates: list[Candidate]
    curves: Mapping[str, Mapping[str, list]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    fusion: object | None = None


@dataclass(frozen=True)
class Inputs:
    """What a family reads: the data, the members and their predictions, and the results of the families it
    requires or uses that ran (`found`, by family name; `"member"`, every member as it is, is always there)."""

    data: Dataset
    members: list[Member]
    val: Predictions
    test: Predictions
    seed: int
    found: Mapping[str, FamilyResult]
    seconds_left: float | None = None  # of the time budget when the family starts (None: no budget)

    @property
    def torch_members(self) -> list[TorchMember]:
        return [m for m in self.members if isinstance(m, TorchMember)]

    @property
    def member_candidates(self) -> list[Candidate]:
        return self.found["member"].candidates

    def best_network(self) -> Candidate | None:
        """The most accurate candidate found on validation that is one torch network with a registered factory
        (a member, a merge, a student): what compression starts from."""
        networks = [c for result in self.found.values() for c in result.candidates if c.network is not None]
        return max(networks, key=lambda c: (c.val["accuracy"], -c.val["nll"]), default=None)


@dataclass(frozen=True)
class Family:
    """A family of fusion `auto` tries: `run(inputs)` returns its result or raises `Skip`. It runs after the
    families it `requires` (and is skipped when one of them did not run or was skipped) and after those it
    `uses` when they run (their candidates are then in its inputs)."""

    name: str
    run: Callable[[Inputs], FamilyResult]
    requires: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()


FAMILIES: Registry[Family] = Registry("auto family")


def family(name: str, *, requires: Sequence[str] = (), uses: Sequence[str] = ()):
    """Register the decorated function as the family `name` of `auto` (see `Family`)."""

    def register(run: Callable[[Inputs], FamilyResult]) -> Callable[[Inputs], FamilyResult]:
        FAMILIES.register(name)(Family(name, run, tuple(requires), tuple(uses)))
        return run

    return register


def run_order(names: Sequence[str]) -> list[str]:
    """`names` in the order given (by default, the order the families were registered in), except that each
    runs after the families among `names` it requires or uses."""
    pending, order = list(names), []
    while pending:
        ready = next(
            (n for n in pending if not set(FAMILIES[n].requires + FAMILIES[n].uses) & set(pending) - {n}), None
        )
        if ready is None:
            raise ConfigError(f"the families {pending} require one another in a circle; none can run first")
        order.append(ready)
        pending.remove(ready)
    return order
