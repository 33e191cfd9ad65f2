"""The `modelfusion` command: a thin layer over the Python API (each command names its equivalent)."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ._checks import parse_json_object
from ._cli_support import Overwrite, command_from_job, err_console, guarded
from .errors import ConfigError, InvalidInputError

app = typer.Typer(
    help="Fuse several trained models into one better predictor or one better model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Rich wraps tables at 80 columns when output is not a terminal; the leaderboard needs about 100.
console = Console(width=None if sys.stdout.isatty() else 110)


WriteReport = Annotated[
    bool, typer.Option("--report", help="also write report.html (the HTML report) next to results.json")
]


def _command(fn):
    """Register `fn` as a command whose errors print as one line (`guarded`)."""
    return app.command()(guarded(fn))


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
    report: WriteReport = False,
    overwrite: Overwrite = False,
) -> None:
    """Train diverse members on embedded data, fuse them, print the test leaderboard.

    Python: `modelfusion.demo.run_demo(dataset, seed=..., out=..., report=..., overwrite=...)`.
    """
    from .demo import run_demo

    run_demo(
        dataset,
        seed=seed,
        out=out,
        epochs=epochs,
        n_mlps=mlps,
        progress=progress,
        report=report,
        overwrite=overwrite,
        console=console,
    )


def _seconds(text: str) -> float:
    """A duration such as 300, 300s, 5m or 1h, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        raise ConfigError(f"--budget {text!r}: give seconds, e.g. 300, 300s, 5m or 1h") from None
    if not value > 0:
        raise ConfigError(f"--budget {text!r}: the budget must be positive")
    return value


@_command
def auto(
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(readable=False, help="members (default: trained here from the recipes)")
    ] = None,
    dataset: Annotated[str, typer.Option(help="embedded classification dataset the members belong to")] = "digits",
    out: Annotated[Path, typer.Option(help="folder for results.json, report.html and the exported model")] = Path(
        "runs/auto"
    ),
    budget: Annotated[
        str | None, typer.Option(help="time budget (300, 300s, 5m): families that would start later are skipped")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the split, of the members trained here, of the bootstrap")] = 0,
    report: Annotated[bool, typer.Option(help="write report.html (the HTML report)")] = True,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Try every family of fusion on the members, choose on validation, confirm on test, export the chosen one.

    Python: `modelfusion.auto.auto(members, load_dataset(dataset, seed=seed), out=..., budget_s=...)`.
    """
    from rich.table import Table

    from ._atomic import check_output
    from .auto import auto as run_auto
    from .datasets import load_dataset
    from .report.html import verdict_text
    from .report.results import parse_results

    budget_s = _seconds(budget) if budget is not None else None
    check_output(out, kind="folder", overwrite=overwrite, inputs=checkpoints or [])  # before any work
    members = _load_members(checkpoints) if checkpoints else None
    data = load_dataset(dataset, seed=seed)
    result = run_auto(
        members,
        data,
        budget_s=budget_s,
        seed=seed,
        out=out,
        report=report,
        overwrite=overwrite,
        progress=progress,
        log=lambda line: console.print(line, highlight=False, markup=False),
    )
    table = Table(title=f"auto on {dataset} (seed {seed}): ranked on validation, scored on test")
    columns = ("family", "candidate", "val %", "test % [95%]", "test NLL", "µs/sample", "kB", "passes")
    for column in columns:
        table.add_column(column, justify="left" if column in ("family", "candidate") else "right")
    for row in result.results["leaderboard"]:
        test, cost = row["test"], row["cost"]
        low, high = test["accuracy_ci"]
        table.add_row(
            row["family"],
            row["name"] + (" *" if row["name"] == result.chosen.name else ""),
            f"{row['val']['accuracy'] * 100:.1f}",
            f"{test['accuracy'] * 100:.1f} [{low * 100:.1f}, {high * 100:.1f}]",
            f"{test['nll']:.3f}",
            f"{cost['latency_batch_1_us']:,.0f}",
            f"{cost['bytes'] / 1e3:,.0f}" if cost.get("bytes") is not None else "-",
            f"{cost['forward_passes']:.2g}",
        )
    console.print(table)
    console.print(verdict_text(parse_results(result.results)), highlight=False)
    console.print(f"* chosen -> {result.results['chosen']['path']}", highlight=False)
    written = ["results.json"] + (["report.html"] if report else [])
    console.print(f"{', '.join(written)} -> {out}  ({result.results['wall_seconds']:.0f}s)", highlight=False)


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
    kwargs = parse_json_object(factory_kwargs, "--factory-kwargs")
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
    report: WriteReport = False,
    overwrite: Overwrite = False,
) -> None:
    """Fit combiners on validation predictions, print the test leaderboard, save combiners and results.json.

    Python: `modelfusion.ensemble.fuse_and_evaluate(val_preds, test_preds, methods).save(out, overwrite=...)`,
    and `modelfusion.report.write_report(out / "results.json", out / "report.html")` for `--report`.
    """
    from ._atomic import check_output
    from .datasets import load_dataset
    from .ensemble import COMBINERS, fuse_and_evaluate
    from .errors import LeakageError
    from .predictions import Predictions, collect_predictions
    from .report import check_report_extra, print_leaderboard, write_report

    methods = method or ["all"]
    for name in methods if methods != ["all"] else []:
        COMBINERS[name]  # an unknown name fails here, before any member runs
    if report:
        check_report_extra()  # before any member runs
    if checkpoints and (val_preds or test_preds):
        raise ConfigError("give member checkpoints or --val-preds/--test-preds, not both")
    inputs = [*(checkpoints or []), val_preds, test_preds]
    check_output(out, kind="folder", overwrite=overwrite, inputs=inputs)  # before any member runs
    if checkpoints:
        kwargs = parse_json_object(factory_kwargs, "--factory-kwargs")
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
    if report:
        write_report(out / "results.json", out / "report.html")
    console.print(f"combiners, results.json{' and report.html' if report else ''} -> {out}", highlight=False)


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


def _distill(job) -> None:
    from .distill import run_job

    run_job(job, console=console, note=lambda text: err_console.print(f"note: {text}", markup=False, highlight=False))


def _register_distill() -> None:
    """`modelfusion distill`: its options are `DistillJob`'s fields, as `python -m modelfusion.distill`'s are."""
    from .distill.job import DistillJob

    app.command("distill")(guarded(command_from_job(DistillJob, _distill)))


_register_distill()


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
    from .align import align_checkpoints, midpoint_accuracy
    from .datasets import load_dataset
    from .io import load_member

    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    data = load_dataset(dataset, seed=seed)
    _, result = align_checkpoints(
        [reference, other], [None, out], data.train.X[:samples], method=method, seed=seed, overwrite=overwrite
    )
    naive = midpoint_accuracy(result.models[0], load_member(other).module, data.val)
    aligned = midpoint_accuracy(*result.models, data.val)
    console.print(
        f"aligned {len(result.spec.groups)} unit groups by {method} in {result.seconds:.2f} s -> {out}\n"
        f"validation accuracy of the 50/50 average: naive {naive:.3f}, aligned {aligned:.3f}",
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


def _torch_member(path: Path):
    from .io import load_member
    from .members import TorchMember

    member = load_member(path)
    if not isinstance(member, TorchMember):
        raise InvalidInputError(f"{path}: a {type(member).__name__}, not a torch model; only torch models have layers")
    return member


@_command
def splice(
    backbone: Annotated[
        Path, typer.Argument(readable=False, help="a saved torch member whose factory is registered (e.g. a demo CNN)")
    ],
    at: Annotated[str, typer.Option(help="the last module kept (an unknown name lists them)")],
    num_outputs: Annotated[int, typer.Option(help="outputs of the new head (classes of the new task)")],
    out: Annotated[Path, typer.Option(help="where to save the spliced model (.safetensors)")],
    dataset: Annotated[str, typer.Option(help="embedded dataset whose inputs the backbone takes")] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the new head's initial weights")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Cut a trained backbone after a named layer and put a new head on it, ready for `finetune`.

    Python: `modelfusion.features.spliced_member(load_member(path), num_outputs, at=..., example_input=X[:2])`.
    """
    import torch

    from ._atomic import check_output
    from ._checks import check_count
    from .datasets import load_dataset
    from .features import spliced_member
    from .io import save_member

    _safetensors_out(out, "--out")
    check_count(num_outputs, "--num-outputs")
    check_output(out, kind="file", overwrite=overwrite, inputs=[backbone])
    member = _torch_member(backbone)
    example = load_dataset(dataset, seed=seed).train.X[:2]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        spliced = spliced_member(member, num_outputs, at=at, example_input=example)
    save_member(spliced, out, overwrite=overwrite)
    head = sum(p.numel() for p in spliced.module.head.parameters())
    console.print(
        f"spliced {member.name} after {at!r}: a new {num_outputs}-output head ({head:,} parameters) -> {out}",
        highlight=False,
    )


@_command
def finetune(
    checkpoint: Annotated[Path, typer.Argument(readable=False, help="a saved torch member (e.g. from `splice`)")],
    out: Annotated[Path, typer.Option(help="where to save the fine-tuned model (.safetensors)")],
    dataset: Annotated[str, typer.Option(help="embedded dataset to fine-tune on")] = "digits",
    schedule: Annotated[
        str, typer.Option(help="linear_probe, full, probe_then_finetune or gradual (modelfusion.features.SCHEDULES)")
    ] = "probe_then_finetune",
    head: Annotated[str, typer.Option(help="the name of the head module")] = "head",
    epochs: Annotated[int, typer.Option(help="total epochs over every stage")] = 40,
    lr: Annotated[float, typer.Option(help="the head's learning rate (the schedule sets the backbone's)")] = 1e-3,
    per_class: Annotated[
        int | None, typer.Option(help="train on this many labelled samples per class (and validate on as many)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the split, the few-shot draw and training")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Fine-tune a model on an embedded dataset stage by stage; validation keeps each stage's best epoch.

    Python: `modelfusion.features.finetune(model, data.train, data.val, schedule=..., epochs=..., lr=...)`.
    """
    from ._atomic import check_output
    from ._modules import output_width
    from .datasets import load_dataset
    from .features import finetune as run_finetune
    from .io import save_member
    from .training import score_classifier

    _safetensors_out(out, "--out")
    check_output(out, kind="file", overwrite=overwrite, inputs=[checkpoint])
    member = _torch_member(checkpoint)
    data = load_dataset(dataset, seed=seed)
    output_width(member.module, data.train.X, str(checkpoint))  # a model for other inputs fails here, in one line
    if member.num_outputs != data.num_classes:
        raise InvalidInputError(
            f"{checkpoint} has {member.num_outputs} outputs but {dataset} has {data.num_classes} classes; "
            f"splice it with --num-outputs {data.num_classes} first"
        )
    train, val = data.train, data.val
    if per_class is not None:
        train, val = train.per_class(per_class, seed=seed), val.per_class(per_class, seed=seed + 1)
    result = run_finetune(member.module, train, val, schedule=schedule, head=head, epochs=epochs, lr=lr, seed=seed)
    save_member(member, out, overwrite=overwrite)
    stages = ", ".join(f"{s['name']} {s['val_accuracy']:.3f}" for s in result.stages)
    test = score_classifier(member.module, data.test)["accuracy"]
    console.print(
        f"fine-tuned on {len(train)} samples; validation accuracy by stage: {stages}; test accuracy {test:.3f} "
        f"-> {out}",
        highlight=False,
    )


@_command
def cascade(
    checkpoints: Annotated[list[Path], typer.Argument(readable=False, help="the models, cheapest first")],
    dataset: Annotated[str, typer.Option(help="embedded dataset")] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    costs: Annotated[
        str | None,
        typer.Option(help="comma-separated cost per model (default: each one's measured CPU time per sample)"),
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option(help="cheapest thresholds reaching this validation accuracy (default: the last model's)"),
    ] = None,
    budget: Annotated[
        float | None, typer.Option(help="instead, the most accurate thresholds within this mean cost")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write thresholds and scores as JSON here")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Run cheap models first and later ones only on the samples they are unsure of; thresholds on validation.

    Python: `Cascade(costs=..., target_accuracy=...).fit(val_preds)` then `.predict(members, X)`
    (`modelfusion.features`; `measured_costs(members, X)` for the default costs).
    """
    from ._atomic import check_output, write_json
    from .datasets import load_dataset
    from .features import Cascade, measured_costs
    from .predictions import collect_predictions

    if json_out is not None:
        if json_out.suffix != ".json":
            raise ConfigError(f"--json {json_out}: the report is JSON; name it with .json")
        check_output(json_out, kind="file", overwrite=overwrite, inputs=checkpoints)
    try:
        given = [float(c) for c in costs.split(",")] if costs is not None else None
    except ValueError:
        raise ConfigError(f"--costs must be comma-separated numbers, got {costs!r}") from None
    members = _load_members(checkpoints)
    data = load_dataset(dataset, seed=seed)
    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)  # clear errors first
    per_sample = given if given is not None else measured_costs(members, data.val.X)
    fitted = Cascade(costs=per_sample, target_accuracy=target_accuracy, budget=budget).fit(val)
    run = fitted.predict(members, data.test.X)
    alone = collect_predictions(members[-1:], data.test.X, data.test.y, "test", progress=False)
    last_accuracy = float((alone.outputs[0].argmax(1) == data.test.y).double().mean())
    shares = [float((run.stage == k).double().mean()) for k in range(len(members))]
    report = {
        "members": [m.name for m in members],
        "costs": per_sample,
        "thresholds": fitted.thresholds_,
        "val": {"accuracy": fitted.val_accuracy_, "mean_cost": fitted.val_cost_},
        "test": {"accuracy": run.accuracy(data.test.y), "mean_cost": run.mean_cost, "decided_by_stage": shares},
        "last_model_alone": {"accuracy": last_accuracy, "cost": per_sample[-1]},
    }
    for k, member in enumerate(members):
        threshold = f"threshold {fitted.thresholds_[k]:.3f}" if k < len(fitted.thresholds_) else "last"
        console.print(
            f"stage {k}: {member.name} (cost {per_sample[k]:.3g}), {threshold}: decides {shares[k]:.1%} of the "
            "test samples",
            highlight=False,
        )
    console.print(
        f"test accuracy {report['test']['accuracy']:.3f} at mean cost {run.mean_cost:.3g}; the last model alone: "
        f"{last_accuracy:.3f} at {per_sample[-1]:.3g} (thresholds chosen on validation: accuracy "
        f"{fitted.val_accuracy_:.3f}, cost {fitted.val_cost_:.3g})",
        highlight=False,
    )
    if json_out is not None:
        write_json(json_out, report)


@_command
def compress(
    checkpoint: Annotated[
        Path, typer.Argument(readable=False, help="a saved torch member (registered factory) or EnsembleModule folder")
    ],
    method: Annotated[
        str,
        typer.Option(
            help="int8, int8-weight, int4, onnx-int8, fp16, bf16, prune, prune-wanda or prune-structured "
            "(modelfusion.compress.COMPRESSORS)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="folder for the compressed model and report.json")],
    amount: Annotated[float | None, typer.Option(help="pruning: the fraction of weights or units removed")] = None,
    group_size: Annotated[int | None, typer.Option(help="int8-weight, int4: inputs per scale (0: one per row)")] = None,
    recover_epochs: Annotated[
        int, typer.Option(help="pruning: epochs of distillation from the uncompressed model")
    ] = 0,
    dataset: Annotated[str, typer.Option(help="embedded dataset the model was trained on, to score it")] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Compress a saved model or ensemble; print its bytes, test accuracy and NLL (with 95% intervals), latency,
    and McNemar's test against the uncompressed model.

    Python: `modelfusion.compress.compress_and_measure(load_member(path), method, load_dataset(name), ...)`.
    """
    from rich.table import Table

    from ._atomic import atomic_dir, check_output, write_json
    from .compress import compress_and_measure
    from .datasets import load_dataset

    check_output(out, kind="folder", overwrite=overwrite, inputs=[checkpoint])  # before any work
    if checkpoint.is_dir():
        from .ensemble import EnsembleModule

        model, name = EnsembleModule.load(checkpoint), checkpoint.name
    else:
        model = _torch_member(checkpoint)
        name = model.name
    params = {k: v for k, v in {"amount": amount, "group_size": group_size}.items() if v is not None}
    run = compress_and_measure(
        model, method, load_dataset(dataset, seed=seed), recover_epochs=recover_epochs, seed=seed, **params
    )
    with atomic_dir(out, overwrite=overwrite, inputs=[checkpoint]) as tmp:
        saved = run.result.save(tmp / f"{name}_{method}")
        write_json(tmp / "report.json", run.summary())
    recovered = f", {recover_epochs} recovery epochs" if recover_epochs else ""
    table = Table(
        title=f"{name}: {method}{recovered} (test split of {dataset}, seed {seed}; {run.before['threads']} thread(s))"
    )
    for column in ("", "bytes", "test accuracy [95%]", "NLL [95%]", "batch 1 (µs)", "batch 256 (µs)"):
        table.add_column(column, justify="right")
    for label, row in (("before", run.before), ("after", run.after)):
        table.add_row(
            label,
            f"{row['bytes']:,}",
            f"{row['accuracy']:.4f} [{row['accuracy_ci'][0]:.4f}, {row['accuracy_ci'][1]:.4f}]",
            f"{row['nll']:.4f} [{row['nll_ci'][0]:.4f}, {row['nll_ci'][1]:.4f}]",
            f"{row['latency_batch_1_us']:.0f}",
            f"{row['latency_batch_256_us']:.0f}",
        )
    console.print(table)
    console.print(f"McNemar against the uncompressed model: p = {run.mcnemar['p_value']:.3g}", highlight=False)
    console.print(f"-> {out / saved.name}", highlight=False)


guard_app = typer.Typer(
    help="Screen inputs before they reach a model (fit, check) and find harmful training samples (clean).",
    no_args_is_help=True,
)
app.add_typer(guard_app, name="guard")


@guard_app.command("fit")
@guarded
def guard_fit(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(readable=False, help="the members whose outputs the scores read (none: inputs alone)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="where to save the guard (.safetensors)")] = Path("guard.safetensors"),
    dataset: Annotated[str, typer.Option(help="embedded dataset the members were trained on")] = "digits",
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    score: Annotated[
        str,
        typer.Option(
            help="a name in modelfusion.guard.SCORES (combined: the largest of every score's validation percentile)"
        ),
    ] = "combined",
    fpr: Annotated[float, typer.Option(help="share of validation samples the threshold may reject")] = 0.05,
    range_tolerance: Annotated[float, typer.Option(help="allowed excursion beyond each feature's range")] = 0.1,
    overwrite: Overwrite = False,
) -> None:
    """Fit an input guard on the training split; choose its score and threshold on the validation split.

    Python: `InputGuard(members, ood_score=..., fpr=...).fit(data.train, data.val).save(out)` (`modelfusion.guard`).
    """
    from ._atomic import check_output
    from .datasets import load_dataset
    from .guard import InputGuard

    checkpoints = checkpoints or []
    _safetensors_out(out, "--out")
    check_output(out, kind="file", overwrite=overwrite, inputs=checkpoints)
    members = _load_members(checkpoints) if checkpoints else None
    data = load_dataset(dataset, seed=seed)
    guard = InputGuard(members, ood_score=score, fpr=fpr, range_tolerance=range_tolerance, seed=seed)
    guard.fit(data.train, data.val)
    guard.save(out, overwrite=overwrite)
    aurocs = ", ".join(f"{name} {value:.3f}" for name, value in guard.val_auroc_.items())
    rejected = float((guard.score(data.val.X) > guard.threshold_).mean())
    console.print(
        f"guard for {dataset} inputs {guard.input_shape_} with {len(guard.member_names_)} member(s): score "
        f"{guard.score_}, threshold {guard.threshold_:.4g} (rejects {rejected:.1%} of validation, asked "
        f"{fpr:.1%}); validation AUROC "
        f"against proxy outliers (worst kind): {aurocs} -> {out}",
        highlight=False,
    )


def _inputs_file(path: Path):
    """A `.npy` array (never a pickle): the samples `guard check` screens."""
    import numpy as np

    from ._safetensors import check_readable
    from .errors import CheckpointError

    if path.suffix != ".npy":
        raise InvalidInputError(f"--inputs {path}: give the samples as a NumPy .npy file")
    check_readable(path, "NumPy .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CheckpointError.unreadable(path, "a NumPy .npy array", err) from None


@guard_app.command("check")
@guarded
def guard_check(
    guard_file: Annotated[Path, typer.Argument(readable=False, help="a guard saved by `guard fit`")],
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(readable=False, help="the members it was fitted with, in the same order")
    ] = None,
    inputs: Annotated[Path | None, typer.Option(help="samples to screen: a .npy array [N, features...]")] = None,
    dataset: Annotated[str, typer.Option(help="without --inputs: screen this embedded dataset's split")] = "digits",
    split: Annotated[str, typer.Option(help="without --inputs: train, val or test")] = "test",
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write every verdict as JSON here")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Screen samples with a saved guard: print how many are rejected and why.

    Python: `InputGuard.load(path, members=...).check(X)` (`modelfusion.guard`).
    """
    from ._atomic import check_output, write_json
    from .datasets import load_dataset
    from .guard import InputGuard

    checkpoints = checkpoints or []
    if json_out is not None:
        if json_out.suffix != ".json":
            raise ConfigError(f"--json {json_out}: the verdicts are JSON; name it with .json")
        check_output(json_out, kind="file", overwrite=overwrite, inputs=[guard_file, *checkpoints])
    members = _load_members(checkpoints) if checkpoints else None
    guard = InputGuard.load(guard_file, members=members)
    X = _inputs_file(inputs) if inputs is not None else load_dataset(dataset, seed=seed).split(split).X
    verdicts = guard.check(X)
    console.print(verdicts.summary(), highlight=False, markup=False)
    for i in verdicts.rejected[:10]:
        console.print(f"  row {i}: {verdicts.reasons[i]}", highlight=False, markup=False)
    if len(verdicts.rejected) > 10:
        console.print(f"  ... {len(verdicts.rejected) - 10} more", highlight=False)
    if json_out is not None:
        write_json(
            json_out,
            {
                "score": verdicts.score,
                "threshold": verdicts.threshold,
                "ok": verdicts.ok.tolist(),
                "reasons": list(verdicts.reasons),
                "scores": [float(s) if math.isfinite(s) else None for s in verdicts.scores],  # JSON has no inf
            },
        )


@guard_app.command("clean")
@guarded
def guard_clean(
    out: Annotated[Path, typer.Option(help="where to write the issues and accuracies (.json)")],
    dataset: Annotated[str, typer.Option(help="embedded classification dataset whose training split is screened")] = (
        "digits"
    ),
    recipe: Annotated[
        str | None, typer.Option(help="training recipe of the fold members (default: the dataset's strongest)")
    ] = None,
    folds: Annotated[int, typer.Option(help="folds (members) of the out-of-fold predictions")] = 5,
    noise: Annotated[
        float, typer.Option(help="first flip this share of training labels (symmetric noise), to see it found")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="seed of the split, the noise, the folds and the members")] = 0,
    strategy: Annotated[
        str, typer.Option(help="drop the suspects, relabel them, or auto: the better on validation")
    ] = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Find suspected mislabels and outliers in a training split, clean them, refit: accuracy before and after.

    Python: `clean(data, members=recipe, folds=..., seed=..., strategy=...)` (`find_label_issues` alone finds them;
    `inject_label_noise(data.train, rate, seed=...)` for --noise).
    """
    import dataclasses

    import numpy as np

    from ._atomic import check_output, write_json
    from .datasets import load_dataset
    from .guard import clean, inject_label_noise

    if out.suffix != ".json":
        raise ConfigError(f"--out {out}: the report is JSON; name it with .json")
    check_output(out, kind="file", overwrite=overwrite)
    data = load_dataset(dataset, seed=seed)
    flipped = None
    if noise:
        noisy, flipped = inject_label_noise(data.train, noise, seed=seed)
        data = dataclasses.replace(data, train=noisy)
    result = clean(data, members=recipe, folds=folds, seed=seed, strategy=strategy)
    issues = result.issues
    report = {
        "dataset": dataset,
        "seed": seed,
        "folds": folds,
        "label_issues": issues.label_issues.tolist(),
        "suggested_labels": issues.suggested_labels[issues.label_issues].tolist(),
        "outliers": issues.outliers.tolist(),
        "strategy": result.strategy,
        "validation_accuracy_by_strategy": result.candidates,
        "accuracy": result.accuracy,
    }
    found = f"{len(issues.label_issues)} suspected mislabels and {len(issues.outliers)} outliers"
    if flipped is not None:
        hits = len(np.intersect1d(issues.label_issues, flipped))
        report["injected"] = {"rate": noise, "flipped": flipped.tolist(), "found": hits}
        found += f" ({hits} of the {len(flipped)} flipped labels among them)"
    write_json(out, report)
    test = result.accuracy["test"]
    console.print(
        f"{found} in {len(data.train)} training samples of {dataset}; test accuracy of the {folds}-fold fusion: "
        f"{test['before']:.4f} before, {test['after']:.4f} after cleaning ({result.strategy}, chosen on validation "
        f"among {', '.join(result.candidates)}) -> {out}",
        highlight=False,
    )


@_command
def report(
    results: Annotated[
        Path, typer.Argument(readable=False, help="a results.json of `modelfusion auto`, `ensemble` or `demo`")
    ],
    out: Annotated[
        Path | None, typer.Option(help="where to write the HTML report (default: report.html beside RESULTS)")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write one self-contained HTML report of a run: leaderboard, verdict, figures, configuration.

    Python: `modelfusion.report.write_report(results, out, overwrite=...)`.
    """
    from .report import write_report

    out = out if out is not None else results.parent / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: the report is HTML; name it with .html")
    written = write_report(results, out, overwrite=overwrite)
    console.print(f"report ({written.stat().st_size / 1e3:.0f} kB) -> {written}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
