"""torch.distributed as modelfusion uses it under `torchrun`: the process group started from torchrun's
environment and torn down cleanly, each process's rank and share of the work, sums and gathers over the
processes, and errors shared by all of them. One process (no torchrun) is a world of one, and every helper here
is then a no-op."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

__all__ = [
    "process_rank",
    "process_group",
    "my_share",
    "sum_over_processes",
    "gather_over_processes",
    "concat_over_processes",
    "failing_together",
    "first_to_fail",
]


def process_rank() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(count: int) -> range:
    """This process's contiguous share of `count` work items (0..count-1): the first processes take one more
    when `count` does not divide evenly; a process may get none. Concatenated in rank order, the shares are
    0..count-1 again."""
    rank, world = process_rank()
    return range(rank * count // world, (rank + 1) * count // world)


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the processes, in place (unchanged in a world of one)."""
    import torch.distributed as dist

    if process_rank()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def gather_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (the same shape on each), stacked in rank order: `[world, *tensor.shape]`."""
    import torch.distributed as dist

    world = process_rank()[1]
    if world == 1:
        return tensor[None]
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def concat_over_processes(shard: torch.Tensor) -> torch.Tensor:
    """Every process's `shard` concatenated along the first dimension in rank order; the shards may differ in
    length (and be empty), not in their other dimensions or dtype. Each is padded to the longest for the
    all-gather, so a process holds at most `world` times the longest shard while gathering."""
    world = process_rank()[1]
    if world == 1:
        return shard
    lengths = gather_over_processes(torch.tensor([len(shard)], dtype=torch.int64))[:, 0].tolist()
    padded = shard.new_zeros((max(lengths), *shard.shape[1:]))
    padded[: len(shard)] = shard
    gathered = gather_over_processes(padded)
    return torch.cat([part[:length] for part, length in zip(gathered, lengths, strict=True)])


@contextlib.contextmanager
def failing_together() -> Iterator[None]:
    """Run the body on every process, then tell every process whether the body failed on any: a process whose
    body raised raises its error again, the others raise the first failed process's error (the same
    `ModelFusionError` class and message). Put around the work between two collectives, so that one process's
    error (a member that cannot run on its rows) stops them all instead of leaving the others waiting."""
    from . import errors

    world = process_rank()[1]
    if world == 1:
        yield
        return
    import torch.distributed as dist

    failure: Exception | None = None
    try:
        yield
    except Exception as err:
        failure = err
    said = None if failure is None else (type(failure).__name__, str(failure))
    heard: list = [None] * world
    dist.all_gather_object(heard, said)
    if failure is not None:
        raise failure
    for outcome in heard:
        if outcome is not None:
            name, message = outcome
            kind = getattr(errors, name, None)  # a class of our errors module only: the name is data
            if not (isinstance(kind, type) and issubclass(kind, errors.ModelFusionError)):
                kind = errors.ModelFusionError
            raise kind(message)


def first_to_fail() -> bool:
    """Whether this process is the first of its process group to report an error (always, outside a group), so
    that an error shared by all the processes is printed once."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    return dist.distributed_c10d._get_default_store().add("modelfusion/failures", 1) == 1


@contextlib.contextmanager
def process_group() -> Iterator[bool]:
    """The process group of torchrun's environment (gloo on CPU, NCCL on GPU), when `WORLD_SIZE` > 1; yields
    whether there is one. On the way out every process waits for the others (rank 0 may still be writing)."""
    import torch.distributed as dist

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    ok = False
    try:
        yield distributed
        ok = True
    finally:
        if distributed:
            if ok:
                # Rank 0 still writes when the others finish; tearing gloo down under a peer that is still
                # connected aborts the process ("terminate called without an active exception").
                dist.barrier()
                _all_left_the_barrier()
            dist.destroy_process_group()


def _all_left_the_barrier(poll_seconds: float = 0.01) -> None:
    """Wait, through torchrun's key-value store rather than gloo, until every process has returned from the last
    barrier: gloo aborts a process whose peer tears down while the barrier's last messages are in flight
    (pytorch/gloo#155, "barrier followed by context destruction causes some participants to fail")."""
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    store.add("modelfusion/left_barrier", 1)
    while store.add("modelfusion/left_barrier", 0) < dist.get_world_size():
        time.sleep(poll_seconds)
