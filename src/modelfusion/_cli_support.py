"""What every command line shares, the `modelfusion` CLI and the torchrun entry point of distillation alike:
one-line errors with exit code 2, clean stops on signals, and commands generated from a job's dataclass, so
that an option is declared once, beside the Python API it drives."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import signal
import sys
import threading
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from ._checks import parse_json_object
from ._terminal import escape_controls, terminal_console
from .errors import ModelFusionError

__all__ = [
    "err_console",
    "guarded",
    "fail",
    "run_in_process_group",
    "parse_json_object",
    "command_from_job",
    "with_data",
    "Overwrite",
]

err_console = terminal_console(stderr=True)

Overwrite = Annotated[bool, typer.Option(help="replace an existing output (never an input of the run)")]
# Input paths are declared readable=False: the readers say themselves, in one line, why a file cannot be read.


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every temporary output is cleaned up on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals(stops: list[int]) -> Iterator[None]:
    """Raise SIGTERM and SIGHUP as `_Stopped`, and note each in `stops`: a library may catch the exception and
    raise its own (torch turns it into a ValueError), but the stop is still known."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        stops.append(signum)
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as one `error:` line on stderr (no markup: paths may hold brackets; control characters
    escaped); once under torchrun, by whichever process fails first."""
    if "torch.distributed" in sys.modules:  # (the command line imports torch only when a command needs it)
        from ._distributed import first_to_fail

        if not first_to_fail():  # under torchrun, an error the processes share is printed by the first of them
            return typer.Exit(code)
    line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    quiet, err_console.quiet = err_console.quiet, False  # the other processes of a torchrun are quiet but errors
    try:
        err_console.print(Text.assemble(("error:", "red"), " ", escape_controls(line, keep="\t")), soft_wrap=True)
    finally:
        err_console.quiet = quiet
    return typer.Exit(code)


def run_in_process_group(
    app: typer.Typer, prog_name: str, *, consoles: Sequence[Console] = (), commands: Sequence[str] | None = None
) -> None:
    """Run `app` on the command line's arguments in torchrun's process group (`python -m ...` alone: one
    process), and exit. Every process runs the same command on the same files, so only the first speaks:
    `err_console` and `consoles` are quiet in the others (but for an error only they meet, see `fail`). A failed
    process exits at once instead of waiting for the others, which torchrun then stops. `commands`: the
    commands of `app` that share their work among processes; the others are refused on more than one (each
    process would do all of it and write the same outputs)."""
    from ._distributed import process_group, process_rank

    with process_group():
        rank, world = process_rank()
        if rank != 0:
            for console in (err_console, *consoles):
                console.quiet = True
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if world > 1 and commands is not None and command not in commands and not command.startswith("-"):
            refused = fail(
                f"{command!r} runs on one process; under torchrun run {' or '.join(commands)}, and the others "
                f"as `{prog_name} {command}` alone"
            )
            sys.exit(refused.exit_code)
        try:
            app(sys.argv[1:], prog_name=prog_name)
        except SystemExit as exit_:
            if exit_.code:
                raise
    sys.exit(0)


def guarded(fn: Callable) -> Callable:
    """`fn` as a command whose errors print as one line: exit code 2 for the ones a user can cause, 128 + the
    signal's number when stopped (Ctrl-C, SIGTERM, SIGHUP), after cleaning up."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stops: list[int] = []
        try:
            with _stop_on_signals(stops):
                return fn(*args, **kwargs)
        except BaseException as err:
            if stops or isinstance(err, KeyboardInterrupt):  # whatever a library made of the stop on its way up
                signum = stops[0] if stops else getattr(err, "signum", signal.SIGINT)
                name = signal.Signals(signum).name
                raise fail(f"stopped by {name}; no output was left half-written", 128 + signum) from None
            if isinstance(err, ModelFusionError):
                raise fail(str(err)) from None
            if isinstance(err, OSError):  # the system's refusals we did not foresee (an I/O error)
                where = f"{err.filename}: " if err.filename else ""
                raise fail(f"{where}{err.strerror or err}") from None
            raise

    return wrapper


def command_from_job(job: type, run: Callable[[object], None]) -> Callable[..., None]:
    """A typer command with one option per field of the dataclass `job`, which builds the job and `run`s it.

    Each field's metadata gives its `help`; `cli` the option's type where the command line spells the value
    differently (a JSON string, a comma-separated list), with `parse(text, option)` turning it into the field's
    value; `readable=False` for input paths. Fields without a default are required options.
    """
    hints = typing.get_type_hints(job, include_extras=True)
    parameters, parsers = [], {}
    for spec in dataclasses.fields(job):
        option = "--" + spec.name.replace("_", "-")
        extra = {"readable": False} if spec.metadata.get("readable") is False else {}
        annotation = Annotated[
            spec.metadata.get("cli", hints[spec.name]), typer.Option(help=spec.metadata["help"], **extra)
        ]
        if "parse" in spec.metadata:
            parsers[spec.name] = functools.partial(spec.metadata["parse"], option=option)
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = inspect.Parameter.empty
        parameters.append(
            inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )

    def command(**options) -> None:
        values = {
            name: parsers[name](value) if name in parsers and value is not None else value
            for name, value in options.items()
        }
        run(job(**values))

    command.__signature__ = inspect.Signature(parameters)
    command.__doc__ = job.__doc__
    command.__name__ = job.__name__
    return command


def _data_parameters(taken: set[str]) -> list[inspect.Parameter]:
    """`--dataset`, `--data`, `--target`, `--task`: the options of `DataChoice`, with its help (less those the
    command declares itself, in `taken`)."""
    from .data_options import DATA_HELP

    types = {"dataset": str | None, "data": Path | None, "target": str | None, "task": str | None}
    return [
        inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None,
            annotation=Annotated[kind, typer.Option(help=DATA_HELP[name], readable=False if name == "data" else True)],
        )
        for name, kind in types.items()
        if name not in taken
    ]


def with_data(fn: Callable) -> Callable:
    """`fn`, whose parameter `data` takes a `DataChoice`, as a command with the shared data options in its place
    (`--dataset NAME` or `--data PATH [--target COLUMN] [--task ...]`): declared once, for every command. A
    command that declares `task` itself (`predict`: the members' task) gets it too, and so does the data."""
    from .data_options import DataChoice

    signature = inspect.signature(fn, eval_str=True)  # typer reads the types, not their text
    taken = set(signature.parameters) - {"data"}
    parameters = []
    for parameter in signature.parameters.values():
        parameters += _data_parameters(taken) if parameter.name == "data" else [parameter]

    @functools.wraps(fn)
    def command(*args, dataset=None, data=None, target=None, **options):
        task = options.get("task") if "task" in taken else options.pop("task", None)
        choice = DataChoice(dataset=dataset, data=data, target=target, task=task if data is not None else None)
        if "task" not in taken and task is not None and data is None:
            choice = DataChoice(dataset=dataset, task=task)  # refused: --task describes a --data file
        return fn(*args, data=choice, **options)

    command.__signature__ = signature.replace(parameters=parameters)
    return command
