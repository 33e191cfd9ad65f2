"""Checks of what a user passes (arguments of public functions, seeds, counts, rates): one clear ConfigError
instead of a failure deep inside numpy, scikit-learn or torch."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Annotated, TypeVar

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, validate_call

from .errors import ArgumentError, ConfigError

__all__ = [
    "MAX_SEED",
    "MAX_COUNT",
    "check_seed",
    "check_count",
    "check_number",
    "parse_json_object",
    "checked",
    "explain",
    "PositiveInt",
    "Share",
    "PathArg",
]

# scikit-learn's random_state and numpy's legacy seeding take 32-bit seeds.
MAX_SEED = 2**32 - 1
# The largest count (epochs, batch size, resamples) taken: past it a count is a mistake (a 64-bit value, an
# overflow), not a plan, and would loop or allocate for ever.
MAX_COUNT = 2**31 - 1
# An argument that counts something (a batch size, epochs): a whole number of at least 1.
PositiveInt = Annotated[int, Field(ge=1, le=MAX_COUNT)]
# A share strictly between 0 and 1 (a confidence level, a false-positive rate).
Share = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


def _usable_path(value: str | os.PathLike) -> str | os.PathLike:
    text = os.fspath(value)
    if not isinstance(text, str):
        raise ValueError("must be a path as text or os.PathLike, not bytes")
    if not text.strip():
        raise ValueError("is empty; name a file or folder")
    if "\x00" in text:
        raise ValueError("holds a NUL character, which no file name can")
    return value


# A file or folder the user names: text or a Path, not empty, no NUL.
PathArg = Annotated[str | os.PathLike, AfterValidator(_usable_path)]
# How the aliases above read in an error message.
_SAID = {
    "PathArg": "a path (text or os.PathLike)",
    "PositiveInt": "a whole number of at least 1",
    "Share": "a number between 0 and 1",
}
_Function = TypeVar("_Function", bound=Callable)
_BOUNDS = {"gt": "above", "ge": "at least", "lt": "below", "le": "at most"}
_TYPES = {
    "float_type": "must be a number",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "finite_number": "must be a finite number",
    "sequence_str": "must be a list of names, not one text",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "missing_argument": "is required",
    "missing_keyword_only_argument": "is required",
    "unexpected_keyword_argument": "is not one of its arguments",
    "unexpected_positional_argument": "is one positional argument too many",
}


def explain(error: Mapping, where: str, expected: str = "") -> str:
    """One line for pydantic's `error` (one entry of `ValidationError.errors()`) about `where`: what the value
    must be and what it is. `expected` (the declared type, in words) is said where pydantic's own words would
    name one member of a union or its internals."""
    value, kind, loc = error.get("input"), error["type"], error.get("loc", ())
    if kind in ("missing_argument", "missing_keyword_only_argument", "unexpected_keyword_argument"):
        return f"{where} {_TYPES[kind]}"
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        return f"{where} must be a finite number, got an integer of {len(str(abs(value)))} digits"
    bounds = [f"{_BOUNDS[k]} {v:g}" for k, v in error.get("ctx", {}).items() if k in _BOUNDS]
    one_of_union = len(loc) > 1 and isinstance(loc[1], str)
    if one_of_union and len(loc) > 2 and "[" not in loc[1]:  # a field of a model given as a mapping
        field = ".".join(str(part) for part in loc[2:])
        return f"{where} as a {loc[1]}: field {field!r}: {error['msg']}"
    if kind == "literal_error":
        what = f"must be {error.get('ctx', {}).get('expected', '')} (or left out)"
    elif kind == "value_error":  # one of our validators: its message says it
        what = error["msg"].removeprefix("Value error, ")
    elif bounds:
        what = f"must be {', '.join(bounds)}"
    elif expected and (one_of_union or kind not in _TYPES):
        what = f"must be {expected}"
    else:
        what = _TYPES.get(kind, error["msg"])
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    typed = kind.endswith("_type") or kind in ("is_instance_of", "sequence_str") or one_of_union
    return f"{where} {what}, got {type(value).__name__} {shown}" if typed else f"{where} {what}, got {shown}"


def checked(function: _Function) -> _Function:
    """`function` with its arguments checked against its type hints (pydantic's `validate_call`, strict: no text
    read as a number, no number as a flag) before it runs: a wrong one is an `ArgumentError` naming it.

    Objects pydantic has no schema for (tensors, arrays, modules, members) are checked with `isinstance`.
    """
    signature = inspect.signature(function)

    @functools.cache
    def validated() -> Callable:
        # Built at the first call, when the names the hints refer to (the function's own class) exist.
        return validate_call(config=ConfigDict(arbitrary_types_allowed=True, strict=True))(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return validated()(*args, **kwargs)
        except ValidationError as err:
            if err.title not in (function.__name__, function.__qualname__):  # another model's, inside the function
                raise
            error = err.errors()[0]
            name = error["loc"][0] if error["loc"] else "?"
            if isinstance(name, int):  # a positional argument: pydantic counts them
                name = list(signature.parameters)[name] if name < len(signature.parameters) else f"#{name + 1}"
            parameter = signature.parameters.get(name)
            expected = _readable(parameter.annotation) if parameter is not None else ""
            where = f"{function.__qualname__}: argument {name!r}"
            raise ArgumentError(explain(error, where, expected)) from None

    return wrapper  # type: ignore[return-value]


def _readable(annotation) -> str:
    """A type hint as a reader would say it: `MergeConfig | PathArg` -> "a MergeConfig or a path (text or
    os.PathLike)"."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):  # the union's members at the top level (not inside brackets)
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth == 0 and text.startswith(" | ", i):
            parts.append(text[start:i])
            start = i + 3
    parts.append(text[start:])
    said = [_SAID.get(part, part if part == "None" else f"a {part}") for part in parts]
    return " or ".join(said)


def first_problem(err) -> tuple[str, str]:
    """Where pydantic's first complaint in `err` (a `ValidationError`) points, as a dotted field path
    ("(top level)" for the document itself), and what it says."""
    first = err.errors()[0]
    return ".".join(str(part) for part in first["loc"]) or "(top level)", first["msg"]


def check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{name} must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def check_count(value, name: str) -> int:
    """A positive whole number (epochs, batch size, patience)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    if value > MAX_COUNT:
        raise ConfigError(f"{name} must be at most {MAX_COUNT}, got {value}")
    return value


def check_number(value, name: str, *, low: float | None = None, open_low: bool = False) -> float:
    """A finite number, at least `low` (above it with `open_low`)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (open_low and value == low)):
        bound = f"above {low:g}" if open_low else f"at least {low:g}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def parse_json_object(value: str | None, option: str) -> dict | None:
    """A JSON object given on the command line as `option`, or None."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as err:  # not JSON, or an integer too long to convert
        raise ConfigError(f"{option} must be a JSON object, e.g. '{{\"hidden\": [128]}}' ({err})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{option} must be a JSON object, got {type(parsed).__name__}")
    return parsed
