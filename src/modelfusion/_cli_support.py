"""What every command line shares, the `modelfusion` CLI and the torchrun entry point of distillation alike:
one-line errors with exit code 2, clean stops on signals, and commands generated from a job's dataclass, so
that an option is declared once, beside the Python API it drives."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import signal
import threading
import typing
from collections.abc import Callable, Iterator
from typing import Annotated

import typer
from rich.text import Text

from ._checks import parse_json_object
from ._terminal import escape_controls, terminal_console
from .errors import ModelFusionError

__all__ = ["err_console", "guarded", "fail", "parse_json_object", "command_from_job", "Overwrite"]

err_console = terminal_console(stderr=True)

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


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as one `error:` line on stderr (no markup: paths may hold brackets; control characters
    escaped)."""
    line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(Text.assemble(("error:", "red"), " ", escape_controls(line, keep="\t")), soft_wrap=True)
    return typer.Exit(code)


def guarded(fn: Callable) -> Callable:
    """`fn` as a command whose errors print as one line: exit code 2 for the ones a user can cause, 128 + the
    signal's number when stopped (Ctrl-C, SIGTERM, SIGHUP), after cleaning up."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _stop_on_signals():
                return fn(*args, **kwargs)
        except ModelFusionError as err:
            raise fail(str(err)) from None
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", signal.SIGINT)
            name = signal.Signals(signum).name
            raise fail(f"stopped by {name}; no output was left half-written", 128 + signum) from None
        except OSError as err:  # the system's refusals we did not foresee (a full disk, an I/O error)
            where = f"{err.filename}: " if err.filename else ""
            raise fail(f"{where}{err.strerror or err}") from None

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
