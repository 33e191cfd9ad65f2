"""Weight fusion: merge methods, the streaming merge engine, mergekit-style configs, in-memory merging."""

from __future__ import annotations

import os
from pathlib import Path

from .config import MergeConfig, load_config
from .engine import Checkpoint, MergePlan, merge_checkpoints
from .methods import METHODS
from .soups import GreedySoup, greedy_soup, uniform_soup
from .state_dicts import merge_state_dicts

__all__ = [
    "METHODS",
    "merge",
    "merge_checkpoints",
    "merge_state_dicts",
    "MergeConfig",
    "MergePlan",
    "load_config",
    "Checkpoint",
    "uniform_soup",
    "greedy_soup",
    "GreedySoup",
]


def merge(
    config: MergeConfig | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dry_run: bool = False,
    progress: bool = True,
) -> MergePlan:
    """Run a merge config (a `MergeConfig` or the path of its YAML) into `out_dir`.

    Relative model paths are resolved against the config file's folder (or the working folder).

    Example:
        >>> merge("ties.yaml", "merged/")
    """
    root = Path.cwd()
    if not isinstance(config, MergeConfig):
        root = Path(config).resolve().parent
        config = load_config(config)
    models, base, params = config.resolve(root)
    return merge_checkpoints(
        models,
        out_dir,
        config.merge_method,
        base=base,
        params=params,
        out_dtype=config.out_dtype or config.dtype,
        shard_size=config.shard_size,
        seed=config.random_seed,
        dry_run=dry_run,
        progress=progress,
    )
