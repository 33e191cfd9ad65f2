"""The `modelfusion` command: a thin layer over the Python API (each command names its equivalent)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from ._checks import parse_json_object
from ._cli_support import Overwrite, command_from_job, err_console, guarded, with_data
from ._terminal import terminal_console
from .data_options import DataChoice
from .errors import ConfigError, InvalidInputError

app = typer.Typer(
    help="Fuse several trained models into one better predictor or one better model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Rich wraps tables at 80 columns when output is not a terminal; the leaderboard needs about 120.
console = terminal_console(piped_width=120)


WriteReport = Annotated[
    bool, typer.Option("--report", help="also write report.html (the HTML report) next to results.json")
]


def _command(fn):
    """Register `fn` as a command whose errors print as one line (`guarded`); a parameter `data` becomes the
    shared data options (`with_data`: `--dataset NAME` or `--data PATH [--target COLUMN] [--task ...]`)."""
    if "data" in inspect.signature(fn).parameters:
        fn = with_data(fn)
    return app.command()(guarded(fn))


Recipe = Annotated[
    str | None,
    typer.Option(
        help="the networks' training recipe (modelfusion.training.RECIPES; default: chosen by the data's shape)"
    ),
]
Estimator = Annotated[
    list[str] | None,
    typer.Option(
        help="estimator to train beside the networks (repeat it; modelfusion.estimators.ESTIMATORS, e.g. "
        "hist_gradient_boosting, lightgbm, tfidf_linear for texts; default: chosen by the data's shape)"
    ),
]


def _load_members(paths: Sequence[Path], *, fusions: bool = False, **options) -> list:
    """Load each checkpoint (`modelfusion.io.load_members`: one given twice is refused); members whose stored
    names collide are named after their files, and told so. With `fusions`, a folder an output fusion was saved
    in (`save_fusion`, auto's export) is one member (`ensemble.load_fusion_member`)."""
    from .ensemble import is_fusion_folder, load_fusion_member
    from .io import load_members

    def note(text: str) -> None:
        err_console.print(f"note: {text}", highlight=False)

    fused = {i: load_fusion_member(path) for i, path in enumerate(paths) if fusions and is_fusion_folder(path)}
    files = [path for i, path in enumerate(paths) if i not in fused]
    loaded = iter(load_members(files, note=note, **options) if files else [])
    return [fused[i] if i in fused else next(loaded) for i in range(len(paths))]


def _safetensors_out(path: Path, option: str) -> None:
    if path.suffix != ".safetensors":
        raise InvalidInputError(f"{option} {path}: outputs are safetensors files; name it with .safetensors")


@_command
def demo(
    data: DataChoice = None,
    seed: Annotated[int, typer.Option(help="seed of the split and of every member")] = 0,
    out: Annotated[Path, typer.Option(help="folder for members, predictions and results.json")] = Path("runs/demo"),
    epochs: Annotated[
        int | None, typer.Option(help="training epochs of the torch members (default: their recipe's)")
    ] = None,
    mlps: Annotated[int, typer.Option(help="number of MLP members (different seeds)")] = 3,
    recipe: Recipe = None,
    estimator: Estimator = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    report: WriteReport = False,
    overwrite: Overwrite = False,
) -> None:
    """Train diverse members on the data, fuse them, print the test leaderboard.

    Python: `modelfusion.demo.run_demo(load_dataset(name) or load_data(path), out=..., report=..., overwrite=...)`.
    """
    from ._atomic import check_output
    from .demo import run_demo

    check_output(out, kind="folder", overwrite=overwrite, inputs=data.inputs)  # before any work
    run_demo(
        data.load(seed=seed),
        seed=seed,
        out=out,
        epochs=epochs,
        n_mlps=mlps,
        recipe=recipe,
        estimators=estimator,
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
    data: DataChoice = None,
    out: Annotated[Path, typer.Option(help="folder for results.json, report.html and the exported model")] = Path(
        "runs/auto"
    ),
    budget: Annotated[
        str | None,
        typer.Option(
            help="time budget (300, 300s, 5m, 1h), member training included: members and families that would not "
            "finish in it are skipped"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the split, of the members trained here, of the bootstrap")] = 0,
    recipe: Recipe = None,
    estimator: Estimator = None,
    workers: Annotated[
        int | None, typer.Option(help="processes training members in parallel (default: one per core, at most 4)")
    ] = None,
    report: Annotated[bool, typer.Option(help="write report.html (the HTML report)")] = True,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Try every family of fusion on the members, choose on validation, confirm on test, export the chosen one.

    Python: `modelfusion.auto.auto(members, load_data(path) or load_dataset(name), out=..., budget_s=...)`.
    """
    from ._atomic import check_output
    from .auto import auto as run_auto
    from .report import print_leaderboard

    budget_s = _seconds(budget) if budget is not None else None
    check_output(
        out, kind="folder", overwrite=overwrite, inputs=[*(checkpoints or []), *data.inputs]
    )  # before any work
    members = _load_members(checkpoints) if checkpoints else None
    result = run_auto(
        members,
        data.load(seed=seed),
        budget_s=budget_s,
        seed=seed,
        recipe=recipe,
        estimators=estimator,
        workers=workers,
        out=out,
        report=report,
        overwrite=overwrite,
        progress=progress,
        log=lambda line: console.print(line, highlight=False, markup=False),
    )
    print_leaderboard(result.results, console)
    console.print(f"* chosen -> {result.chosen.path}", highlight=False, markup=False)
    written = ["results.json"] + (["report.html"] if report else [])
    console.print(f"{', '.join(written)} -> {out}  ({result.results.wall_seconds:.0f}s)", highlight=False)


@_command
def predict(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            readable=False,
            help="member checkpoints (see `modelfusion.io` for formats), or folders an output fusion was saved in "
            "(auto's model/ when it chose an ensemble): each predicts as one member",
        ),
    ],
    data: DataChoice = None,
    seed: Annotated[int, typer.Option(help="seed of the dataset split")] = 0,
    split: Annotated[
        str | None,
        typer.Option(
            help="split to predict: train, val or test (default: test; with --data and a preprocessing, every row)"
        ),
    ] = None,
    preprocessing: Annotated[
        Path | None,
        typer.Option(
            readable=False,
            help="the preprocessing.json saved with the members (default: the one beside them, if any): --data is new "
            "data, every row prepared as the training data was",
        ),
    ] = None,
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
    batch_size: Annotated[
        int, typer.Option(min=1, help="samples per forward call (under torchrun, the unit of each process's share)")
    ] = 1024,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Run each member once on a split, or on new data, and save their outputs as Predictions.

    Python: `load_member(...)` for each file (`ensemble.load_fusion_member(folder)` for a saved fusion), then
    `collect_predictions(members, X, y, split).save(out)`, with `X, y`
    a split of `load_data(path)` or, for new data, `read_preparation(path).prepare(new_file)` (`modelfusion.datasets`).
    Several processes: `torchrun --standalone --nproc_per_node=N -m modelfusion predict ...`.
    """
    from ._atomic import check_output
    from ._distributed import process_rank
    from .datasets import prediction_inputs
    from .predictions import collect_predictions

    _safetensors_out(out, "--out")
    check_output(out, kind="file", overwrite=overwrite, inputs=[*checkpoints, *data.inputs])
    X, y, split, used = prediction_inputs(data, checkpoints, seed=seed, split=split, preprocessing=preprocessing)
    if used is not None:
        err_console.print(
            f"note: {data.label} prepared with {used}; every row predicted", markup=False, highlight=False
        )
    kwargs = parse_json_object(factory_kwargs, "--factory-kwargs")
    members = _load_members(
        checkpoints,
        fusions=True,
        factory=factory,
        factory_kwargs=kwargs,
        task=task,
        trust_code=trust_code,
        trusted_types=trust_type or (),
    )
    preds = collect_predictions(members, X, y, split, batch_size=batch_size, progress=progress)
    if process_rank()[0] != 0:  # under torchrun every process predicts its share, the first one writes
        return
    preds.save(out, overwrite=overwrite)
    console.print(f"saved predictions of {preds.num_members} members on {len(X)} {split} samples -> {out}")


@_command
def ensemble(
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(readable=False, help="member checkpoints (or use --val-preds/--test-preds)")
    ] = None,
    data: DataChoice = None,
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
    from .ensemble import COMBINERS, fuse_and_evaluate
    from .errors import LeakageError
    from .report import check_report_extra, print_leaderboard, write_report

    methods = method or ["all"]
    for name in methods if methods != ["all"] else []:
        COMBINERS[name]  # an unknown name fails here, before any member runs
    if report:
        check_report_extra()  # before any member runs
    inputs = [*(checkpoints or []), val_preds, test_preds, *data.inputs]
    check_output(out, kind="folder", overwrite=overwrite, inputs=inputs)  # before any member runs
    options = {"factory": factory, "factory_kwargs": parse_json_object(factory_kwargs, "--factory-kwargs")}
    options.update(trust_code=trust_code, trusted_types=trust_type or ())
    val, test = _ensemble_inputs(checkpoints, val_preds, test_preds, (data, seed), options)
    try:
        run = fuse_and_evaluate(val, test, "all" if methods == ["all"] else methods, seed=seed)
    except LeakageError as err:
        if val_preds is None:
            raise
        raise LeakageError(f"--val-preds {val_preds}, --test-preds {test_preds}: {err}") from None
    results = run.results()
    print_leaderboard(results, console)
    run.save(out, overwrite=overwrite, inputs=inputs)
    if report:
        write_report(results, out / "report.html")
    console.print(f"combiners, results.json{' and report.html' if report else ''} -> {out}", highlight=False)


def _ensemble_inputs(checkpoints, val_preds: Path | None, test_preds: Path | None, dataset: tuple, options: dict):
    """The validation and test predictions `ensemble` fits and scores: the checkpoints' on `dataset` (the
    `DataChoice`, seed), or read from the saved Predictions files."""
    from .predictions import Predictions, collect_predictions

    if checkpoints and (val_preds or test_preds):
        raise ConfigError("give member checkpoints or --val-preds/--test-preds, not both")
    if checkpoints:
        members = _load_members(checkpoints, **options)
        data = dataset[0].load(seed=dataset[1])
        val = collect_predictions(members, data.val.X, data.val.y, "val")
        return val, collect_predictions(members, data.test.X, data.test.y, "test")
    if val_preds and test_preds:
        return Predictions.load(val_preds), Predictions.load(test_preds)
    raise ConfigError("give member checkpoints, or both --val-preds and --test-preds")


@_command
def merge(
    config: Annotated[Path, typer.Argument(readable=False, help="merge config (YAML, mergekit's common keys)")],
    out_dir: Annotated[Path, typer.Argument(help="output folder for the merged safetensors")],
    dry_run: Annotated[
        bool, typer.Option(help="check compatibility and the output, print the plan; write nothing")
    ] = False,
    overwrite: Overwrite = False,
    allow_nonfinite: Annotated[
        bool, typer.Option(help="write merged tensors that hold NaN or inf instead of refusing the merge")
    ] = False,
) -> None:
    """Merge same-architecture safetensors checkpoints tensor by tensor, as a config says.

    Python: `modelfusion.merge.merge(config, out_dir, dry_run=..., overwrite=..., allow_nonfinite=...)`.
    """
    from .errors import OutputError
    from .merge import merge as run_merge

    plan = run_merge(config, out_dir, dry_run=dry_run, overwrite=overwrite, allow_nonfinite=allow_nonfinite)
    if dry_run:
        console.print(plan.describe(), highlight=False, markup=False)
        if plan.output_refused:
            raise OutputError(plan.output_refused)


@app.command("extract-lora")
@guarded
def extract_lora(
    base: Annotated[Path, typer.Argument(readable=False, help="the base model (safetensors file or folder)")],
    finetune: Annotated[Path, typer.Argument(readable=False, help="its fine-tune (same architecture)")],
    rank: Annotated[int, typer.Option(help="rank of each low-rank update")],
    out: Annotated[Path, typer.Option(help="the adapter folder to write (PEFT: adapter_config.json, ...)")],
    embeddings: Annotated[
        str, typer.Option(help="whole (stored as modules_to_save, as mergekit), lora, or skip")
    ] = "whole",
    svd: Annotated[str, typer.Option(help="exact, or randomized (faster on large matrices)")] = "exact",
    overwrite: Overwrite = False,
) -> None:
    """Extract a LoRA adapter that turns BASE into FINETUNE, and report its reconstruction error.

    Python: `modelfusion.merge.lora.extract_lora(base, finetune, out, rank=...)`.
    """
    from .merge.lora import REPORT_NAME
    from .merge.lora import extract_lora as run_extraction

    result = run_extraction(base, finetune, out, rank=rank, embeddings=embeddings, svd=svd, overwrite=overwrite)
    console.print(f"{result.summary()}\nadapter -> {out} (errors per tensor in {REPORT_NAME})", highlight=False)


@app.command("merge-adapters")
@guarded
def merge_adapters(
    adapters: Annotated[list[Path], typer.Argument(readable=False, help="PEFT LoRA adapter folders of one base")],
    out: Annotated[Path, typer.Option(help="the merged adapter folder to write")],
    method: Annotated[str, typer.Option(help="linear, task_arithmetic, ties, dare_ties, tsv, wudi, ...")] = (
        "task_arithmetic"
    ),
    weight: Annotated[list[float] | None, typer.Option(help="weight of each adapter (repeat, in order)")] = None,
    density: Annotated[float | None, typer.Option(help="share of each update kept (ties, dare, ...)")] = None,
    rank: Annotated[int | None, typer.Option(help="rank of the merged adapter (default: see the docs)")] = None,
    base: Annotated[
        Path | None, typer.Option(help="the base model, when adapters store whole tensors (modules_to_save)")
    ] = None,
    params: Annotated[
        str | None, typer.Option(help="other parameters of the method as JSON, e.g. '{\"lambda_\": 0.8}'")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of random methods (DARE, DELLA)")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Merge LoRA adapters into one adapter, without forming the full weights where the method allows.

    Python: `modelfusion.merge.lora.merge_adapters(adapters, out, method=..., rank=..., **params)`.
    """
    from .merge.lora import merge_adapters as run_merge

    settings = parse_json_object(params, "--params") or {}
    if weight:
        settings["weight"] = list(weight)
    if density is not None:
        settings["density"] = density
    result = run_merge(adapters, out, method=method, rank=rank, base=base, seed=seed, overwrite=overwrite, **settings)
    console.print(f"{result.summary()}\nadapter -> {out}", highlight=False)


@app.command("merge-search")
@guarded
@with_data
def merge_search(
    config: Annotated[Path, typer.Argument(readable=False, help="a merge config listing models (saved members)")],
    out: Annotated[Path, typer.Option(help="where to write the best config (YAML); its curve goes beside it")],
    data: DataChoice = None,
    evaluations: Annotated[int, typer.Option(help="merges to score, the config as given included")] = 60,
    layer_groups: Annotated[int, typer.Option(help="1: a value per model; G: per model and group of layers")] = 1,
    metric: Annotated[str, typer.Option(help="accuracy or nll")] = "accuracy",
    optimizer: Annotated[str, typer.Option(help="cma (CMA-ES) or powell (scipy)")] = "cma",
    seed: Annotated[int, typer.Option(help="seed of the split and of the search")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Tune a merge's per-model weights and densities on validation data; write the best config as YAML.

    Python: `modelfusion.merge.search.search_merge(config, load_data(path).val, ...).save(out)` (the validation
    split scores each merge).
    """
    from ._atomic import atomic_path, check_output
    from .errors import MissingExtraError
    from .merge.search import search_merge

    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: the best config is YAML; name it with .yaml")
    split = data.load(seed=seed).val
    result = search_merge(
        config,
        split,
        evaluations=evaluations,
        layer_groups=layer_groups,
        metric=metric,
        optimizer=optimizer,
        seed=seed,
    )
    result.save(out, overwrite=overwrite, inputs=[config, *data.inputs])
    figure = out.with_suffix(".search.svg")
    try:
        from .report.figures import search_svg

        check_output(figure, kind="file", overwrite=overwrite, inputs=[config])
        svg = search_svg({config.name: result.curve_points()}, ylabel=f"validation {metric}")
        with atomic_path(figure) as tmp:
            tmp.write_text(svg)
    except MissingExtraError as err:
        err_console.print(f"note: no search curve drawn ({err})", markup=False, highlight=False)
    console.print(f"{result.summary()}\nbest config -> {out} (its search curve beside it)", highlight=False)


@_command
def moe(
    config: Annotated[Path, typer.Argument(readable=False, help="mergekit-moe's YAML: base_model, experts, gate_mode")],
    out_dir: Annotated[Path, typer.Argument(help="output folder for the Mixtral-style checkpoint")],
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Assemble a Mixtral-style mixture of experts from dense fine-tunes of one base model.

    Python: `modelfusion.merge.moe.build_moe(config, out_dir, overwrite=...)`.
    """
    from .merge.moe import build_moe

    console.print(build_moe(config, out_dir, overwrite=overwrite, progress=progress).summary(), highlight=False)


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
    data: DataChoice = None,
    seed: Annotated[int, typer.Option(help="seed of the split and of the matching order")] = 0,
    method: Annotated[str, typer.Option(help="weight_matching or activation_matching")] = "weight_matching",
    samples: Annotated[int, typer.Option(help="training samples used for the spec and activations")] = 1024,
    overwrite: Overwrite = False,
) -> None:
    """Permute OTHER's hidden units into REFERENCE's order (same function), so that averaging works.

    Python: `modelfusion.align.align([model_a, model_b], X=...)` (`align_checkpoints` for files).
    """
    from .align import align_checkpoints, midpoint_accuracy
    from .io import load_member

    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    data = data.load(seed=seed)
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

    Python: `modelfusion.evaluate.evaluate(Predictions.load(path)).to_results()` (`.save(path)` for --json).
    """
    from ._atomic import check_output
    from .evaluate import evaluate as evaluate_predictions
    from .predictions import Predictions
    from .report import print_leaderboard

    if json_out is not None:
        if json_out.suffix != ".json":
            raise ConfigError(f"--json {json_out}: the results are JSON; name it with .json")
        check_output(json_out, kind="file", overwrite=overwrite, inputs=[predictions])
    results = evaluate_predictions(Predictions.load(predictions), seed=seed).to_results()
    print_leaderboard(results, console)
    if json_out is not None:
        results.save(json_out)


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
    data: DataChoice = None,
    seed: Annotated[int, typer.Option(help="seed of the new head's initial weights")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Cut a trained backbone after a named layer and put a new head on it, ready for `finetune`.

    Python: `modelfusion.features.spliced_member(load_member(path), num_outputs, at=..., example_input=X[:2])`.
    """
    import torch

    from ._atomic import check_output
    from ._checks import check_count
    from .features import spliced_member
    from .io import save_member

    _safetensors_out(out, "--out")
    check_count(num_outputs, "--num-outputs")
    check_output(out, kind="file", overwrite=overwrite, inputs=[backbone, *data.inputs])
    member = _torch_member(backbone)
    example = data.load(seed=seed).train.X[:2]
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
    data: DataChoice = None,
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
    from .features import finetune as run_finetune
    from .io import save_member
    from .training import score_classifier

    _safetensors_out(out, "--out")
    check_output(out, kind="file", overwrite=overwrite, inputs=[checkpoint, *data.inputs])
    member = _torch_member(checkpoint)
    choice, data = data, data.load(seed=seed)
    output_width(member.module, data.train.X, str(checkpoint))  # a model for other inputs fails here, in one line
    if member.num_outputs != data.num_classes:
        raise InvalidInputError(
            f"{checkpoint} has {member.num_outputs} outputs but {choice.label} has {data.num_classes} classes; "
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
    data: DataChoice = None,
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
        Path | None, typer.Option("--json", help="also write the results (thresholds, scores, costs) as JSON here")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Run cheap models first and later ones only on the samples they are unsure of; thresholds on validation.

    Python: `modelfusion.features.run_cascade(members, data, costs=..., target_accuracy=...)` (`.results()` is
    what --json writes); `Cascade(costs=...).fit(val_preds)` then `.predict(members, X)` for the cascade alone.
    """
    from ._atomic import check_output
    from .features import run_cascade

    if json_out is not None:
        if json_out.suffix != ".json":
            raise ConfigError(f"--json {json_out}: the results are JSON; name it with .json")
        check_output(json_out, kind="file", overwrite=overwrite, inputs=[*checkpoints, *data.inputs])
    try:
        given = [float(c) for c in costs.split(",")] if costs is not None else None
    except ValueError:
        raise ConfigError(f"--costs must be comma-separated numbers, got {costs!r}") from None
    members = _load_members(checkpoints)
    data = data.load(seed=seed)
    run = run_cascade(members, data, costs=given, target_accuracy=target_accuracy, budget=budget)
    for line in run.lines():
        console.print(line, highlight=False, markup=False)
    if json_out is not None:
        run.results(seed=seed).save(json_out)


@_command
def compress(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            readable=False,
            help="a saved torch member (registered factory), EnsembleModule folder or transformers folder",
        ),
    ],
    method: Annotated[
        str,
        typer.Option(
            help="int8, int8-weight, int4, onnx-int8, fp16, bf16, prune, prune-wanda or prune-structured "
            "(modelfusion.compress.COMPRESSORS)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="folder for the compressed model and results.json")],
    amount: Annotated[float | None, typer.Option(help="pruning: the fraction of weights or units removed")] = None,
    group_size: Annotated[int | None, typer.Option(help="int8-weight, int4: inputs per scale (0: one per row)")] = None,
    recover_epochs: Annotated[
        int, typer.Option(help="pruning: epochs of distillation from the uncompressed model")
    ] = 0,
    data: DataChoice = None,
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Compress a saved model or ensemble; print its bytes, test accuracy and NLL (with 95% intervals), latency,
    and McNemar's test against the uncompressed model; save it and results.json.

    Python: `modelfusion.compress.compress_and_measure(load_member(path), method, load_dataset(name), ...)`, then
    `.save(out)`.
    """
    from ._atomic import check_output
    from .compress import compress_and_measure
    from .report import print_leaderboard

    check_output(out, kind="folder", overwrite=overwrite, inputs=[checkpoint, *data.inputs])  # before any work
    from .io.transformers import is_transformers_folder

    if checkpoint.is_dir() and not is_transformers_folder(checkpoint):
        from .ensemble import EnsembleModule

        model, name = EnsembleModule.load(checkpoint), checkpoint.name
    else:
        model = _torch_member(checkpoint)
        name = model.name
    params = {k: v for k, v in {"amount": amount, "group_size": group_size}.items() if v is not None}
    data = data.load(seed=seed)
    run = compress_and_measure(model, method, data, recover_epochs=recover_epochs, seed=seed, name=name, **params)
    saved = run.save(out, overwrite=overwrite, inputs=[checkpoint])
    print_leaderboard(run.results(), console)
    recovered = f" after {recover_epochs} recovery epochs" if recover_epochs else ""
    before, after = run.before["latency_batch_256_us"], run.after["latency_batch_256_us"]
    console.print(
        f"{method}{recovered}: latency at batch 256 {before:,.0f} µs before, {after:,.0f} µs after "
        f"({run.after['threads']} thread(s)) -> {saved}",
        highlight=False,
        markup=False,
    )


guard_app = typer.Typer(
    help="Screen inputs before they reach a model (fit, check) and find harmful training samples (clean).",
    no_args_is_help=True,
)
app.add_typer(guard_app, name="guard")


@guard_app.command("fit")
@guarded
@with_data
def guard_fit(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(readable=False, help="the members whose outputs the scores read (none: inputs alone)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="where to save the guard (.safetensors)")] = Path("guard.safetensors"),
    data: DataChoice = None,
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
    from .guard import InputGuard

    checkpoints = checkpoints or []
    _safetensors_out(out, "--out")
    check_output(out, kind="file", overwrite=overwrite, inputs=[*checkpoints, *data.inputs])
    members = _load_members(checkpoints) if checkpoints else None
    choice, data = data, data.load(seed=seed)
    guard = InputGuard(members, ood_score=score, fpr=fpr, range_tolerance=range_tolerance, seed=seed)
    guard.fit(data.train, data.val)
    guard.save(out, overwrite=overwrite)
    aurocs = ", ".join(f"{name} {value:.3f}" for name, value in guard.val_auroc_.items())
    rejected = float((guard.score(data.val.X) > guard.threshold_).mean())
    console.print(
        f"guard for {choice.label} inputs {guard.input_shape_} with {len(guard.member_names_)} member(s): score "
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
@with_data
def guard_check(
    guard_file: Annotated[Path, typer.Argument(readable=False, help="a guard saved by `guard fit`")],
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(readable=False, help="the members it was fitted with, in the same order")
    ] = None,
    inputs: Annotated[Path | None, typer.Option(help="samples to screen: a .npy array [N, features...]")] = None,
    data: DataChoice = None,
    split: Annotated[
        str, typer.Option(help="without --inputs: the split of the data to screen: train, val or test")
    ] = ("test"),
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write every verdict as JSON here")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Screen samples with a saved guard: print how many are rejected and why.

    Python: `InputGuard.load(path, members=...).check(X)` (`modelfusion.guard`).
    """
    from ._atomic import check_output
    from .guard import InputGuard

    checkpoints = checkpoints or []
    if json_out is not None:
        if json_out.suffix != ".json":
            raise ConfigError(f"--json {json_out}: the verdicts are JSON; name it with .json")
        check_output(json_out, kind="file", overwrite=overwrite, inputs=[guard_file, *checkpoints])
    members = _load_members(checkpoints) if checkpoints else None
    guard = InputGuard.load(guard_file, members=members)
    X = _inputs_file(inputs) if inputs is not None else data.load(seed=seed).split(split).X
    verdicts = guard.check(X)
    console.print(verdicts.summary(), highlight=False, markup=False)
    for i in verdicts.rejected[:10]:
        console.print(f"  row {i}: {verdicts.reasons[i]}", highlight=False, markup=False)
    if len(verdicts.rejected) > 10:
        console.print(f"  ... {len(verdicts.rejected) - 10} more", highlight=False)
    if json_out is not None:
        verdicts.save(json_out)


@guard_app.command("clean")
@guarded
@with_data
def guard_clean(
    out: Annotated[Path, typer.Option(help="where to write the issues and accuracies (.json)")],
    data: DataChoice = None,
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

    Python: `clean(data, recipe=recipe, folds=..., seed=..., strategy=...)` (`find_label_issues` alone finds them;
    `inject_label_noise(data.train, rate, seed=...)` for --noise).
    """
    import dataclasses

    from ._atomic import check_output
    from .guard import clean, inject_label_noise

    if out.suffix != ".json":
        raise ConfigError(f"--out {out}: the report is JSON; name it with .json")
    check_output(out, kind="file", overwrite=overwrite, inputs=data.inputs)
    choice, data = data, data.load(seed=seed)
    flipped = None
    if noise:
        noisy, flipped = inject_label_noise(data.train, noise, seed=seed)
        data = dataclasses.replace(data, train=noisy)
    result = clean(data, recipe=recipe, folds=folds, seed=seed, strategy=strategy)
    result.save(out, flipped=flipped, rate=noise if noise else None)
    found = f"{len(result.issues.label_issues)} suspected mislabels and {len(result.issues.outliers)} outliers"
    if flipped is not None:
        found += f" ({result.found_among(flipped)} of the {len(flipped)} flipped labels among them)"
    test = result.accuracy["test"]
    console.print(
        f"{found} in {len(data.train)} training samples of {choice.label}; test accuracy of the {folds}-fold fusion: "
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
