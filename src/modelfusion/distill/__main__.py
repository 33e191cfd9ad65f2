"""`torchrun --standalone --nproc_per_node=2 -m modelfusion.distill --teacher ... --student ...`: the
`modelfusion distill` command on several processes (gloo on CPU, NCCL on GPU); also runs as one process. Its
options are `DistillJob`'s fields, like the CLI's; the CLI itself is not imported."""

from __future__ import annotations

import sys

from .._distributed import process_group


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
    with process_group():
        try:
            app(sys.argv[1:], prog_name="python -m modelfusion.distill")
        except SystemExit as exit_:
            if exit_.code:
                raise  # a failed process does not wait for the others
    sys.exit(0)


if __name__ == "__main__":
    main()
