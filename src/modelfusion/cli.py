"""The `modelfusion` command: a thin layer over the Python API (each command names its equivalent)."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from .errors import ConfigError, InvalidInputError, ModelFusionError

app = typer.Typer(
    help="Fuse several trained models into one better predictor or one better model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Rich wraps tables at 80 columns when output is not a terminal; the leaderboard needs about 100.
console = Console(width=None if sys.stdout.isatty() else 110)
err_console = Console(stderr=True)


Overwrite = Annotated[bool, typer.Option(help="replace an existing output (never an input of the run)")]
# Input paths are declared readable=False: the readers say themselves, in one line, why a file cannot be read.


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every temporary output is cleaned up on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as one `error:` line on stderr (no markup: paths may hold brackets)."""
    line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(Text.assemble(("error:", "red"), " ", line), soft_wrap=True)
    return typer.Exit(code)


def _command(fn):
    """Register `fn` as a command whose errors print as one line: exit code 2 for the ones a user can cause,
    128 + the signal's number when stopped (Ctrl-C, SIGTERM, SIGHUP), after cleaning up."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _stop_on_signals():
                return fn(*args, **kwargs)
        except ModelFusionError as err:
            raise _fail(str(err)) from None
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", signal.SIGINT)
            name = signal.Signals(signum).name
            raise _fail(f"stopped by {name}; no output was left half-written", 128 + signum) from None
        except OSError as err:  # the system's refusals we did not foresee (a full disk, an I/O error)
            where = f"{err.filename}: " if err.filename else ""
            raise _fail(f"{where}{err.strerror or err}") from None

    return app.command()(wrapper)


def _load_members(paths: Sequence[Path], **options) -> list:
    """Load each checkpoint; members whose stored names collide are named after their files, and told so."""
    from .io import load_member
    from .members import name_after_files

    members = [load_member(path, **options) for path in paths]
    note = name_after_files(members, paths)
    if note:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    return members


def _safetensors_out(path: Path, option: str) -> None:
    if path.suffix != ".safetensors":
        raise InvalidInputError(f"{option} {path}: outputs are safetensors files; name it with .safetensors")


@_command
def demo(
    dataset: Annotated[
        str, typer.Option(help="embedded dataset: digits, breast_cancer, wine, diabetes, mnist1d")
    ] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the split and of every member")] = 0,
    out: Annotated[Path, typer.Option(help="folder for members, predictions and results.json")] = Path("runs/demo"),
    epochs: Annotated[
        int | None, typer.Option(help="training epochs of the torch members (default: their recipe's)")
    ] = None,
    mlps: Annotated[int, typer.Option(help="number of MLP members (different seeds)")] = 3,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Train diverse members on embedded data, fuse them, print the test leaderboard.

    Python: `modelfusion.demo.run_demo(dataset, seed=..., out=..., overwrite=...)`.
    """
    from .demo import run_demo

    run_demo(
        dataset,
        seed=seed,
        out=out,
        epochs=epochs,
        n_mlps=mlps,
        progress=progress,
        overwrite=overwrite,
        console=console,
    )


def _parse_json_option(value: str | None, option: str) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{option} must be a JSON object, e.g. '{{\"hidden\": [128]}}' ({err})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{option} must be a JSON object, got {type(parsed).__name__}")
    return parsed


@_command
def predict(
    checkpoints: Annotated[
        list[Path], typer.Argument(readable=False, help="member checkpoints (see `modelfusion.io` for formats)")
    ],
    dataset: Annotated[str, typer.Option(help="embedded dataset to predict on")] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the dataset split")] = 0,
    split: Annotated[str, typer.Option(help="split to predict: train, val or test")] = "test",
    out: Annotated[Path, typer.Option(help="where to save the Predictions (.safetensors)")] = Path(
        "predictions.safetensors"
    ),
    factory: Annotated[
        str | None, typer.Option(help="model factory package.module:function for weights-only files")
    ] = None,
    factory_kwargs: Annotated[str | None, typer.Option(help="JSON object of the factory's arguments")] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression (default: from the file)")] = None,
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            "--trust-pickle",
            help="allow pickles, TorchScript and torch.export files (they run code from the file)",
        ),
    ] = False,
    trust_type: Annotated[list[str] | None, typer.Option(help="extra type a skops file may contain")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Run each member once on a split and save their outputs as Predictions.

    Python: `load_member(...)` for each file, then `collect_predictions(members, X, y, split).save(out)`.
    """
    from ._atomic import check_output
    from .datasets import load_dataset
    from .predictions import collect_predictions

    _safetensors_out(out, "--out")
    check_output(out, kind="file", overwrite=overwrite, inputs=checkpoints)
    kwargs = _parse_json_option(factory_kwargs, "--factory-kwargs")
    members = _load_members(
        checkpoints,
        factory=factory,
        factory_kwargs=kwargs,
        task=task,
        trust_code=trust_code,
        trusted_types=trust_type or (),
    )
    part = load_dataset(dataset, seed=seed).split(split)
    preds = collect_predictions(members, part.X, part.y, split)
    preds.save(out, overwrite=overwrite)
    console.print(f"saved predictions of {preds.num_members} members on {len(part)} {split} samples -> {out}")


@_command
def ensemble(
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(readable=False, help="member checkpoints (or use --val-preds/--test-preds)")
    ] = None,
    dataset: Annotated[str, typer.Option(help="embedded dataset the members were trained for")] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the dataset split and of the bootstrap")] = 0,
    method: Annotated[list[str] | None, typer.Option(help="combiner name (repeat it), or 'all'")] = None,
    val_preds: Annotated[
        Path | None, typer.Option(readable=False, help="saved validation Predictions instead of checkpoints")
    ] = None,
    test_preds: Annotated[
        Path | None, typer.Option(readable=False, help="saved test Predictions instead of checkpoints")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for combiners/ and results.json")] = Path("runs/ensemble"),
    factory: Annotated[
        str | None, typer.Option(help="model factory package.module:function for weights-only files")
    ] = None,
    factory_kwargs: Annotated[str | None, typer.Option(help="JSON object of the factory's arguments")] = None,
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            "--trust-pickle",
            help="allow pickles, TorchScript and torch.export files (they run code from the file)",
        ),
    ] = False,
    trust_type: Annotated[list[str] | None, typer.Option(help="extra type a skops file may contain")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Fit combiners on validation predictions, print the test leaderboard, save combiners and results.json.

    Python: `modelfusion.ensemble.fuse_and_evaluate(val_preds, test_preds, methods).save(out, overwrite=...)`.
    """
    from ._atomic import check_output
    from .datasets import load_dataset
    from .ensemble import COMBINERS, fuse_and_evaluate
    from .errors import LeakageError
    from .predictions import Predictions, collect_predictions
    from .report import print_leaderboard

    methods = method or ["all"]
    for name in methods if methods != ["all"] else []:
        COMBINERS[name]  # an unknown name fails here, before any member runs
    if checkpoints and (val_preds or test_preds):
        raise ConfigError("give member checkpoints or --val-preds/--test-preds, not both")
    inputs = [*(checkpoints or []), val_preds, test_preds]
    check_output(out, kind="folder", overwrite=overwrite, inputs=inputs)  # before any member runs
    if checkpoints:
        kwargs = _parse_json_option(factory_kwargs, "--factory-kwargs")
        members = _load_members(
            checkpoints, factory=factory, factory_kwargs=kwargs, trust_code=trust_code, trusted_types=trust_type or ()
        )
        data = load_dataset(dataset, seed=seed)
        val = collect_predictions(members, data.val.X, data.val.y, "val")
        test = collect_predictions(members, data.test.X, data.test.y, "test")
    elif val_preds and test_preds:
        val, test = Predictions.load(val_preds), Predictions.load(test_preds)
    else:
        raise ConfigError("give member checkpoints, or both --val-preds and --test-preds")
    try:
        run = fuse_and_evaluate(val, test, "all" if methods == ["all"] else methods, seed=seed)
    except LeakageError as err:
        if val_preds is None:
            raise
        raise LeakageError(f"--val-preds {val_preds}, --test-preds {test_preds}: {err}") from None
    print_leaderboard(run.report, console, chosen=run.choice and run.choice.reason())
    run.save(out, overwrite=overwrite, inputs=inputs)
    console.print(f"combiners and results.json -> {out}")


@_command
def merge(
    config: Annotated[Path, typer.Argument(readable=False, help="merge config (YAML, mergekit's common keys)")],
    out_dir: Annotated[Path, typer.Argument(help="output folder for the merged safetensors")],
    dry_run: Annotated[
        bool, typer.Option(help="check compatibility and the output, print the plan; write nothing")
    ] = False,
    overwrite: Overwrite = False,
) -> None:
    """Merge same-architecture safetensors checkpoints tensor by tensor, as a config says.

    Python: `modelfusion.merge.merge(config, out_dir, dry_run=..., overwrite=...)`.
    """
    from .errors import OutputError
    from .merge import merge as run_merge

    plan = run_merge(config, out_dir, dry_run=dry_run, overwrite=overwrite)
    if dry_run:
        console.print(plan.describe(), highlight=False, markup=False)
        if plan.output_refused:
            raise OutputError(plan.output_refused)


def _parse_hints(hints: list[str]) -> dict[str, str]:
    pairs = {}
    for hint in hints:
        student_module, sep, teacher_module = hint.partition("=")
        if not sep or not student_module or not teacher_module:
            raise ConfigError(f"--hint takes STUDENT_MODULE=TEACHER_MODULE (e.g. '1=1'), got {hint!r}")
        pairs[student_module] = teacher_module
    return pairs


@_command
def distill(
    student: Annotated[str, typer.Option(help="student factory package.module:function")],
    teacher: Annotated[
        list[Path] | None,
        typer.Option(readable=False, help="teacher checkpoint (repeat it for an ensemble of teachers)"),
    ] = None,
    offline: Annotated[
        Path | None,
        typer.Option(
            readable=False, help="saved Predictions of the teachers on the training split, instead of --teacher"
        ),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="comma-separated teacher weights for the probability mean")
    ] = None,
    combiner: Annotated[
        Path | None,
        typer.Option(readable=False, help="a fitted combiner file (from `modelfusion ensemble`) fusing the teachers"),
    ] = None,
    student_kwargs: Annotated[str | None, typer.Option(help="JSON object of the student factory's arguments")] = None,
    dataset: Annotated[str, typer.Option(help="embedded dataset")] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the split and of training")] = 0,
    loss: Annotated[str, typer.Option(help="hinton or mse")] = "hinton",
    temperature: Annotated[float, typer.Option(help="softening temperature (hinton)")] = 4.0,
    alpha: Annotated[float, typer.Option(help="weight of the distillation term against the label loss")] = 0.5,
    hint: Annotated[
        list[str] | None,
        typer.Option(help="FitNets hint STUDENT_MODULE=TEACHER_MODULE (repeatable; the first teacher's module)"),
    ] = None,
    feature_weight: Annotated[float, typer.Option(help="weight of the hint loss in the total")] = 1.0,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 40,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="global batch size (split over torchrun's processes)")] = 64,
    mixup: Annotated[float, typer.Option(help="Beta(m, m) mixup of transfer inputs; 0 turns it off")] = 0.0,
    patience: Annotated[
        int | None, typer.Option(help="stop after this many epochs without a better validation NLL")
    ] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="write a resumable checkpoint here each epoch")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the checkpoint in --checkpoint-dir")] = False,
    out: Annotated[Path, typer.Option(help="where to save the student (.safetensors)")] = Path("student.safetensors"),
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Distill one teacher or an ensemble of teachers into a student on embedded data.

    Python: `modelfusion.distill.distill(student, ModelTeacher(models), data.train, data.val, ...)`
    (`OfflineTeacher(predictions)` for --offline).
    """
    import torch

    from ._atomic import check_output
    from .datasets import load_dataset
    from .distill import FeatureHints, ModelTeacher, OfflineTeacher, process_rank
    from .distill import distill as run_distill
    from .ensemble import load_combiner
    from .io import save_member
    from .io.factory import build_model
    from .members import TorchMember

    if bool(teacher) == (offline is not None):
        raise ConfigError("give the teachers as --teacher checkpoints or as --offline predictions (one of the two)")
    _safetensors_out(out, "--out")
    check_output(out, kind="file", overwrite=overwrite, inputs=[*(teacher or []), offline, combiner])
    try:
        teacher_weights = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise ConfigError(f"--weights must be comma-separated numbers, got {weights!r}") from None
    fusion = load_combiner(combiner) if combiner is not None else None
    kwargs = _parse_json_option(student_kwargs, "--student-kwargs") or {}
    data = load_dataset(dataset, seed=seed)
    if offline is not None:
        source = OfflineTeacher(offline, weights=teacher_weights, combiner=fusion)
    else:
        teachers = _load_members(teacher)
        source = ModelTeacher(teachers, weights=teacher_weights, combiner=fusion)
    torch.manual_seed(seed)
    model = build_model(student, kwargs)
    hints = None
    if hint:
        if offline is not None:
            raise ConfigError("--hint needs live teachers (--teacher): offline predictions carry no features")
        hints = FeatureHints(model, source.models[0], _parse_hints(hint), data.train.X[:8])
    params = {"temperature": temperature, "alpha": alpha} if loss == "hinton" else {"alpha": alpha}
    result = run_distill(
        model,
        source,
        data.train,
        data.val,
        loss=loss,
        loss_params=params,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        mixup=mixup,
        feature_hints=hints,
        feature_weight=feature_weight,
        patience=patience,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    if process_rank()[0] != 0:  # under torchrun only the first process writes
        return
    save_member(
        TorchMember(result.student, name=out.stem, factory=student, factory_kwargs=kwargs), out, overwrite=overwrite
    )
    best = result.history[result.best_epoch - 1]
    console.print(
        f"student: best epoch {result.best_epoch}, validation accuracy {best['val_accuracy']:.3f}, "
        f"NLL {best['val_nll']:.3f} -> {out}",
        highlight=False,
    )


@_command
def align(
    reference: Annotated[
        Path, typer.Argument(readable=False, help="the model whose unit order is kept (a saved torch member)")
    ],
    other: Annotated[
        Path, typer.Argument(readable=False, help="the model to permute into that order (same architecture)")
    ],
    out: Annotated[Path, typer.Option(help="where to save the aligned copy of OTHER (.safetensors)")],
    dataset: Annotated[str, typer.Option(help="embedded dataset: inputs for the spec and activations")] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the split and of the matching order")] = 0,
    method: Annotated[str, typer.Option(help="weight_matching or activation_matching")] = "weight_matching",
    samples: Annotated[int, typer.Option(help="training samples used for the spec and activations")] = 1024,
    overwrite: Overwrite = False,
) -> None:
    """Permute OTHER's hidden units into REFERENCE's order (same function), so that averaging works.

    Python: `modelfusion.align.align([model_a, model_b], X=...)` (`align_checkpoints` for files).
    """
    from .align import align_checkpoints, interpolated_model
    from .datasets import load_dataset
    from .io import load_member
    from .training import score_classifier

    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    data = load_dataset(dataset, seed=seed)
    _, result = align_checkpoints(
        [reference, other], [None, out], data.train.X[:samples], method=method, seed=seed, overwrite=overwrite
    )

    def midpoint_accuracy(b) -> float:
        return score_classifier(interpolated_model(result.models[0], b, 0.5), data.val)["accuracy"]

    console.print(
        f"aligned {len(result.spec.groups)} unit groups by {method} in {result.seconds:.2f} s -> {out}\n"
        f"validation accuracy of the 50/50 average: naive {midpoint_accuracy(load_member(other).module):.3f}, "
        f"aligned {midpoint_accuracy(result.models[1]):.3f}",
        highlight=False,
    )


@_command
def evaluate(
    predictions: Annotated[
        Path, typer.Argument(readable=False, help="a saved Predictions file (from `modelfusion predict`)")
    ],
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON here")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Score each member of a Predictions file: leaderboard with bootstrap CIs, and diversity.

    Python: `modelfusion.evaluate.evaluate(Predictions.load(path))`.
    """
    from ._atomic import check_output, write_json
    from .evaluate import evaluate as evaluate_predictions
    from .predictions import Predictions
    from .report import print_leaderboard

    if json_out is not None:
        if json_out.suffix != ".json":
            raise ConfigError(f"--json {json_out}: the report is JSON; name it with .json")
        check_output(json_out, kind="file", overwrite=overwrite, inputs=[predictions])
    report = evaluate_predictions(Predictions.load(predictions), seed=seed)
    print_leaderboard(report, console)
    if json_out is not None:
        write_json(json_out, report.to_dict())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
