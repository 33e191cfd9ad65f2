"""A distillation run as one Python call, `run_job(DistillJob(...))`: teachers named by files, a student named by
its factory, an embedded dataset, and the student saved as a member. `modelfusion distill` and the torchrun
entry point (`python -m modelfusion.distill`) both build their options from `DistillJob`'s fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .._checks import parse_json_object
from ..data_options import DATA_HELP, DataChoice
from ..errors import ConfigError, InvalidInputError
from .options import DistillOptions, option

if TYPE_CHECKING:  # the options are read by the command line, which starts without torch
    from rich.console import Console

    from ..datasets import Dataset
    from .training import DistillResult

__all__ = ["DistillJob", "run_job"]


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _hints(pairs: list[str], option: str) -> dict[str, str]:
    hints = {}
    for pair in pairs:
        student_module, sep, teacher_module = pair.partition("=")
        if not sep or not student_module or not teacher_module:
            raise ConfigError(f"{option} takes STUDENT_MODULE=TEACHER_MODULE (e.g. '1=1'), got {pair!r}")
        hints[student_module] = teacher_module
    return hints


@dataclass(frozen=True, kw_only=True)
class DistillJob(DistillOptions):
    """Distill one teacher or an ensemble of teachers into a student on an embedded dataset or your data.

    Python: `modelfusion.distill.run_job(DistillJob(student=..., teacher=[...], ...))`, or for models in memory
    `modelfusion.distill.distill(student, build_teacher(models), data.train, data.val, DistillOptions(...))`.
    The training options are `DistillOptions`' (which this extends); the rest say what to distill.
    """

    student: str = field(metadata={"help": "student factory: a registered name or package.module:function"})
    teacher: list[Path] | None = option("teacher checkpoint (repeat it for an ensemble of teachers)", readable=False)
    offline: Path | None = option(
        "saved Predictions of the teachers on the training split, instead of --teacher", readable=False
    )
    weights: list[float] | None = option(
        "comma-separated teacher weights for the probability mean", cli=str | None, parse=_numbers
    )
    combiner: Path | None = option(
        "a fitted combiner file (from `modelfusion ensemble`) fusing the teachers", readable=False
    )
    student_kwargs: dict | None = option(
        "JSON object of the student factory's arguments", cli=str | None, parse=parse_json_object
    )
    dataset: str | None = option(DATA_HELP["dataset"])
    data: Path | None = option(DATA_HELP["data"], readable=False)
    target: str | None = option(DATA_HELP["target"])
    task: str | None = option(DATA_HELP["task"])
    temperature: float | None = option("the loss's softening temperature (hinton; also in --loss-params)")
    alpha: float | None = option("weight of the distillation term against the label loss (also in --loss-params)")
    hint: dict[str, str] | None = option(
        "FitNets hint STUDENT_MODULE=TEACHER_MODULE (repeatable; the first teacher's module)",
        cli=list[str] | None,
        parse=_hints,
    )
    out: Path = option("where to save the student (.safetensors)", Path("student.safetensors"))

    def loss_parameters(self) -> dict:
        """`loss_params` with `temperature` and `alpha` when given on their own."""
        given = {"temperature": self.temperature, "alpha": self.alpha}
        return {**(self.loss_params or {}), **{k: v for k, v in given.items() if v is not None}}

    def options(self) -> DistillOptions:
        """The training options `distill` takes, `temperature` and `alpha` folded into the loss's parameters."""
        return self.training_options().updated(loss_params=self.loss_parameters())


def run_job(
    job: DistillJob,
    *,
    data: Dataset | None = None,
    console: Console | None = None,
    note: Callable[[str], None] | None = None,
) -> DistillResult:
    """Check the output, build the teacher and the student, distill, and save the student (the first process
    under torchrun); `data` (from `load_data` or `Dataset.from_arrays`) replaces the job's `dataset`/`data`;
    `console` gets the one-line result, `note` what was renamed among the teachers."""
    import torch

    from .._atomic import check_output
    from ..io import save_member
    from ..io.factory import build_model
    from ..members import TorchMember
    from .losses import FeatureHints
    from .teachers import build_teacher
    from .training import distill, process_rank

    if job.out.suffix != ".safetensors":
        raise InvalidInputError(f"--out {job.out}: outputs are safetensors files; name it with .safetensors")
    choice = DataChoice(dataset=job.dataset, data=job.data, target=job.target, task=job.task)
    check_output(
        job.out,
        kind="file",
        overwrite=job.overwrite,
        inputs=[*(job.teacher or []), job.offline, job.combiner, *choice.inputs],
    )
    if job.hint and job.offline is not None:
        raise ConfigError("--hint needs live teachers (--teacher): offline predictions carry no features")
    teacher = build_teacher(job.teacher, offline=job.offline, weights=job.weights, combiner=job.combiner, note=note)
    data = data if data is not None else choice.load(seed=job.seed)
    kwargs = job.student_kwargs or {}
    with torch.random.fork_rng():  # the student's and the hint adapters' initial weights come from the seed
        torch.manual_seed(job.seed)
        student = build_model(job.student, kwargs)
        hints = FeatureHints(student, teacher.models[0], job.hint, data.train.X[:8]) if job.hint else None
    result = distill(student, teacher, data.train, data.val, job.options(), feature_hints=hints)
    if process_rank()[0] != 0:  # under torchrun only the first process writes
        return result
    member = TorchMember(result.student, name=job.out.stem, factory=job.student, factory_kwargs=kwargs)
    save_member(member, job.out, overwrite=job.overwrite)
    if console is not None:
        best = result.history[result.best_epoch - 1]
        console.print(
            f"student: best epoch {result.best_epoch}, validation accuracy {best['val_accuracy']:.3f}, "
            f"NLL {best['val_nll']:.3f} -> {job.out}",
            highlight=False,
        )
    return result
