"""`torchrun --standalone --nproc_per_node=2 -m modelfusion.distill --teacher ... --student ...`: the
`modelfusion distill` command on several processes (gloo on CPU, NCCL on GPU); also runs as one process. Its
options are `DistillJob`'s fields, like the CLI's; the CLI itself is not imported."""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    import typer

    from .._cli_support import command_from_job, err_console, guarded
    from .._terminal import terminal_console
    from .job import DistillJob, run_job

    def run(job: DistillJob) -> None:
        note = lambda text: err_console.print(f"note: {text}", markup=False, highlight=False)  # noqa: E731
        run_job(job, console=terminal_console(), note=note)

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(guarded(command_from_job(DistillJob, run)))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    code = 0
    try:
        app(sys.argv[1:], prog_name="python -m modelfusion.distill")
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        if distributed:
            if code == 0:
                # Rank 0 still writes the student when the others finish; tearing gloo down under a peer that
                # is still connected aborts the process ("terminate called without an active exception").
                dist.barrier()
                _all_left_the_barrier()
            dist.destroy_process_group()
    sys.exit(code)


def _all_left_the_barrier(poll_seconds: float = 0.01) -> None:
    """Wait, through torchrun's key-value store rather than gloo, until every process has returned from the last
    barrier: gloo aborts a process whose peer tears down while the barrier's last messages are in flight
    (pytorch/gloo#155, "barrier followed by context destruction causes some participants to fail")."""
    store = dist.distributed_c10d._get_default_store()
    store.add("modelfusion/left_barrier", 1)
    while store.add("modelfusion/left_barrier", 0) < dist.get_world_size():
        time.sleep(poll_seconds)


if __name__ == "__main__":
    main()
