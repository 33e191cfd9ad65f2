"""`torchrun --standalone --nproc_per_node=2 -m modelfusion predict CHECKPOINTS --data FILE --out p.safetensors`:
the `modelfusion` command on several processes (gloo on CPU, NCCL on GPU), each predicting its share of the
batches; the first process prints and writes the outputs, the others stay quiet (but for an error that only they
meet). Also `python -m modelfusion ...` as one process."""

from __future__ import annotations

import sys


def main() -> None:
    from ._cli_support import err_console
    from ._distributed import process_group, process_rank
    from .cli import app, console

    with process_group():
        if process_rank()[0] != 0:  # every process runs the same command on the same files: one speaks
            console.quiet = err_console.quiet = True
        try:
            app(sys.argv[1:], prog_name="python -m modelfusion")
        except SystemExit as exit_:
            if exit_.code:
                raise  # a failed process does not wait for the others
    sys.exit(0)


if __name__ == "__main__":
    main()
