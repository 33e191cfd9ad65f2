"""torch.distributed as the commands use it under `torchrun`: the process group started from torchrun's
environment and torn down cleanly, each process's rank, and sums over the processes. One process (no torchrun)
is a world of one, and every helper here is then a no-op."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

__all__ = ["process_rank", "process_group", "sum_over_processes"]


def process_rank() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the processes, in place (unchanged in a world of one)."""
    import torch.distributed as dist

    if process_rank()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


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
