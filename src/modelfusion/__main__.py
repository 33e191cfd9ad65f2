"""`torchrun --standalone --nproc_per_node=2 -m modelfusion predict CHECKPOINTS --data FILE --out p.safetensors`:
the `modelfusion` command on several processes (gloo on CPU, NCCL on GPU), each predicting its share of the
batches; the first process prints and writes the outputs. Also `python -m modelfusion ...` as one process."""

from __future__ import annotations


def main() -> None:
    from ._cli_support import run_in_process_group
    from .cli import app, console

    # predict shares the batches among the processes, distill each batch (DDP); the others run on one process
    run_in_process_group(app, "python -m modelfusion", consoles=[console], commands=["predict", "distill"])


if __name__ == "__main__":
    main()
