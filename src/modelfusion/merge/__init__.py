"""Weight fusion: merge methods, the streaming merge engine, mergekit-style configs, in-memory merging."""

from __future__ import annotations

import functools
from pathlib import Path

from .._atomic import check_output
from .._checks import PathArg, checked
from ..errors import ConfigError
from .align_step import aligned_copies
from .config import MergeConfig, load_config
from .engine import AdaptedModel, Checkpoint, MergePlan, files_of, merge_checkpoints
from .methods import METHODS, MergeMethod
from .modules import DATA_METHODS, merge_modules
from .soups import GreedySoup, greedy_soup, uniform_soup
from .state_dicts import merge_state_dicts

__all__ = [
    "METHODS",
    "MergeMethod",
    "merge",
    "merge_checkpoints",
    "merge_state_dicts",
    "merge_modules",
    "DATA_METHODS",
    "MergeConfig",
    "MergePlan",
    "load_config",
    "Checkpoint",
    "AdaptedModel",
    "uniform_soup",
    "greedy_soup",
    "GreedySoup",
]


@checked
def merge(
    config: MergeConfig | PathArg,
    out_dir: PathArg,
    *,
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    allow_nonfinite: bool = False,
    console=None,
) -> MergePlan:
    """Run a merge config (a `MergeConfig` or the path of its YAML) into `out_dir`.

    Relative model paths are resolved against the config file's folder (or the working folder). An existing
    non-empty `out_dir` is replaced only with `overwrite`, and never when it is or holds the config or a model;
    a dry run reports such a refusal in the plan (`MergePlan.output_refused`) instead of raising. A merged
    tensor that holds NaN or inf is refused (naming the model whose tensor does) unless `allow_nonfinite`.

    Example:
        >>> merge("ties.yaml", "merged/")
    """
    root, source, inputs = Path.cwd(), "the config", []
    if not isinstance(config, MergeConfig):
        root, source, inputs = Path(config).resolve().parent, str(config), [config]
        config = load_config(config)
    try:
        resolved = config.resolve(root)
        if resolved.layout is None:
            METHODS[config.merge_method].check(resolved.params, len(resolved.models))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    models, base = resolved.models, resolved.base
    inputs += files_of([*models, *([base] if base is not None else [])])
    run = functools.partial(
        merge_checkpoints,
        out_dir=out_dir,
        method=config.merge_method,
        params=resolved.params,
        layout=resolved.layout,
        config_updates=resolved.config_updates,
        out_dtype=config.out_dtype or config.dtype,
        shard_size=config.shard_size,
        seed=config.random_seed,
        dry_run=dry_run,
        overwrite=overwrite,
        inputs=inputs,
        progress=progress,
        allow_nonfinite=allow_nonfinite,
        console=console,
    )
    try:
        if config.align is not None and any(isinstance(m, AdaptedModel) for m in [*models, base]):
            raise ConfigError("align: works on saved members; apply the LoRA adapters (MODEL+ADAPTER) without it")
        if config.align is not None and not dry_run:
            check_output(out_dir, kind="folder", overwrite=overwrite, inputs=inputs)  # before the alignment's work
            with aligned_copies(models, base, config.align) as (models, base):
                return run(models, base=base)
        return run(models, base=base)
    except ConfigError as err:  # a setting of the config (a slice's range, a parameter): name the file
        if source in str(err):
            raise
        raise ConfigError(f"{source}: {err}") from None
