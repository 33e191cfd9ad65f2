"""EnsembleModule forward: a Python loop over members against one vmapped call (torch.func).

    .venv/bin/python bench/ensemble_module.py [--repeats 30]

Prints a markdown table of milliseconds per forward (median over repeats) for members of one architecture.
"""

from __future__ import annotations

import argparse

import torch

from modelfusion.ensemble import EnsembleModule, make_combiner
from modelfusion.evaluate.timing import median_latency_us
from modelfusion.models import cnn2d, mlp
from modelfusion.predictions import Predictions

ARCHITECTURES = {
    "mlp 64-128-10": lambda: mlp(64, 10, hidden=[128]),
    "mlp 64-512-512-10": lambda: mlp(64, 10, hidden=[512, 512]),
    "cnn2d 8x8": lambda: cnn2d((1, 8, 8), 10),
}


def median_ms(fn, repeats: int) -> float:
    return median_latency_us(fn, runs=repeats, warmup=1) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| members | architecture | batch | loop ms | vmap ms | loop / vmap |")
    print("|---|---|---|---|---|---|")
    for num_members in (5, 10):
        for arch, build in ARCHITECTURES.items():
            torch.manual_seed(0)
            members = [build().eval() for _ in range(num_members)]
            names = tuple(f"m{k}" for k in range(num_members))
            fake = Predictions(torch.zeros(num_members, 2, 10), torch.tensor([0, 1]), names, "classification", "val")
            combiner = make_combiner("mean").fit(fake)
            loop = EnsembleModule(members, combiner, vectorize=False).eval()
            vmapped = EnsembleModule(members, combiner, vectorize=True).eval()
            for batch in (1, 64, 1024):
                x = torch.randn(batch, 64)
                with torch.no_grad():
                    loop_ms = median_ms(lambda m=loop, x=x: m(x), args.repeats)
                    vmap_ms = median_ms(lambda m=vmapped, x=x: m(x), args.repeats)
                print(f"| {num_members} | {arch} | {batch} | {loop_ms:.3f} | {vmap_ms:.3f} | {loop_ms / vmap_ms:.2f} |")


if __name__ == "__main__":
    main()
