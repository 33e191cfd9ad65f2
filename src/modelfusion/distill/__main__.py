"""`torchrun --standalone --nproc_per_node=2 -m modelfusion.distill --teacher ... --student ...`: the
`modelfusion distill` command on several processes (gloo on CPU, NCCL on GPU); also runs as one process. Its
options are `DistillJob`'s fields, like the CLI's; the CLI itself is not imported."""

from __future__ import annotations


def main() -> None:
    import typer

    from .._cli_support import command_from_job, err_console, guarded, run_in_process_group
    from .._terminal import terminal_console
    from .job import DistillJob, run_job

    def run(job: DistillJob) -> None:
        note = lambda text: err_console.print(f"note: {text}", markup=False, highlight=False)  # noqa: E731
        run_job(job, console=terminal_console(), note=note)

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(guarded(command_from_job(DistillJob, run)))
    run_in_process_group(app, "python -m modelfusion.distill")


if __name__ == "__main__":
    main()
