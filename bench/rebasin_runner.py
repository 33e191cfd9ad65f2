"""The `rebasin` package's weight matching on modelfusion's models; run by bench/align.py in its own venv.

    bench/.venv-rebasin/bin/python bench/rebasin_runner.py --dataset mnist1d --seed 0 --a a.safetensors \
        --b b.safetensors --out result.json

Permutes a copy of model B towards model A with `rebasin.PermutationCoordinateDescent` (it traces the graph
itself), then scores the 50/50 weight average and the interpolation curve on the test split.
"""

from __future__ import annotations

import argparse
import json
import time

from modelfusion.align import barriers, interpolation_curve
from modelfusion.datasets import load_dataset
from modelfusion.io import load_member


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from rebasin import PermutationCoordinateDescent

    data = load_dataset(args.dataset, seed=args.seed)
    a, b = load_member(args.a).module.eval(), load_member(args.b).module.eval()
    b_before = interpolation_curve(b, b, data.test, points=2)[0]["accuracy"] * 100
    started = time.perf_counter()
    try:
        matcher = PermutationCoordinateDescent(a, b, data.train.X[: args.samples])
        matcher.rebasin()
    except Exception as err:  # report what the reference tool cannot do instead of stopping the benchmark
        result = {"error": f"{type(err).__name__}: {err}"[:300]}
    else:
        seconds = time.perf_counter() - started
        curve = interpolation_curve(a, b, data.test)
        # a permutation must not change B's function: its accuracy before and after says whether it did
        result = {
            "seconds": seconds,
            "midpoint": curve[5]["accuracy"] * 100,
            "barriers": barriers(curve),
            "b_before": b_before,
            "b_after": curve[-1]["accuracy"] * 100,
        }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
