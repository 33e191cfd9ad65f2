"""Checks of the numbers a user passes (seeds, counts, rates): one clear ConfigError instead of a failure
deep inside numpy, scikit-learn or torch."""

from __future__ import annotations

import json
import math

from .errors import ConfigError

__all__ = ["MAX_SEED", "check_seed", "check_count", "check_number", "parse_json_object"]

# scikit-learn's random_state and numpy's legacy seeding take 32-bit seeds.
MAX_SEED = 2**32 - 1


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
