"""`torchrun --standalone --nproc_per_node=2 -m modelfusion predict CHECKPOINTS --data FILE --out p.safetensors`:
the `modelfusion` command on several processes (gloo on CPU, NCCL on GPU), each predicting its share of the
batches (the first process writes the outputs); also `python -m modelfusion ...` as one process."""

from __future__ import annotations

import sys


def main() -> None:
    from ._distributed import process_group
    from .cli import app

    with process_group():
        try:
            app(sys.argv[1:], prog_name="python -m modelfusion")
        except SystemExit as exit_:
            if exit_.code:
                raise  # a failed process does not wait for the others
    sys.exit(0)


if __name__ == "__main__":
    main()
