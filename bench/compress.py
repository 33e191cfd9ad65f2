"""Compressing a trained digits MLP: bytes, accuracy and CPU latency of every compression method.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compress.py [--seeds 5] [--out FILE.json]

Per seed: the `digits-mlp` recipe's MLP trained on that seed's split, then each method of
`modelfusion.compress.COMPRESSORS` with its defaults. Bytes: the weights as stored (`Compressed.size_bytes`)
against fp32. Accuracy on the test split (the loss is in points against the uncompressed model). Latency:
median of 30 warm runs at batch 1 and batch 256 (`modelfusion.compress.measure`), on the threads torch is
given (the command sets one).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from modelfusion.compress import COMPRESSORS, compress, measure
from modelfusion.datasets import load_dataset
from modelfusion.evaluate.stats import t_interval
from modelfusion.training import RECIPES, score_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", help="write every figure here as JSON")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        data = load_dataset("digits", seed=seed)
        model = RECIPES["digits-mlp"].train(data, seed=seed).eval()
        fp32_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        base_accuracy = score_classifier(model, data.test)["accuracy"]
        results = {m: compress(model, m) for m in COMPRESSORS.names()}
        candidates = {"fp32": (model, fp32_bytes), **{m: (r.model, r.size_bytes) for m, r in results.items()}}
        for name, (compressed, size) in candidates.items():
            measured = measure(compressed, data.test, runs=30)
            rows.setdefault(name, []).append(
                {
                    "bytes_ratio": size / fp32_bytes,
                    "accuracy": measured["accuracy"] * 100,
                    "loss_points": (base_accuracy - measured["accuracy"]) * 100,
                    "latency_1_us": measured["latency_batch_1_us"],
                    "latency_256_us": measured["latency_batch_256_us"],
                }
            )
        print(f"seed {seed}: " + ", ".join(f"{n} {r[-1]['accuracy']:.2f}%" for n, r in rows.items()), flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| method | bytes vs fp32 | test accuracy % | loss in points [t-interval] | batch 1 (µs) | batch 256 (µs) |")
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():

        def mean(key, runs=runs):
            return statistics.mean(r[key] for r in runs)

        low, high = t_interval([r["loss_points"] for r in runs])
        print(
            f"| {name} | {mean('bytes_ratio'):.3f}x | {mean('accuracy'):.2f} | {mean('loss_points'):.2f} "
            f"[{low:.2f}, {high:.2f}] | {mean('latency_1_us'):.0f} | {mean('latency_256_us'):.0f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
