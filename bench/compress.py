"""Compressing trained models: bytes, accuracy and CPU latency of every compression method, structured pruning
of the mnist1d CNN with recovery, and the end-to-end ensemble -> student -> int8 story.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compress.py [--seeds 5] [--story-seeds 5] [--out FILE.json]
        [--plot docs/compress_pareto.svg]

1. digits MLP (the `digits-mlp` recipe, trained per seed): each method of `modelfusion.compress.COMPRESSORS`
   with its defaults (pruning removes half), no recovery.
2. mnist1d CNN (the `mnist1d-cnn` recipe: 64 channels, BatchNorm): `prune-structured` removing half of every
   layer's channels, alone and with `--recover-epochs` of distillation from the uncompressed CNN (the recipe's
   learning rate; the epoch chosen on validation).
3. The story, mnist1d: five recipe CNNs (seeds 10s..10s+4), their mean-probability ensemble, a student with a
   quarter of the channels distilled from it (Hinton KD, the recipe's epochs and learning rate, the epoch chosen
   on validation), and the student after `int8`.

Bytes are the weights as stored (`Compressed.size_bytes`) against fp32. Accuracy and NLL on the test split;
the loss is in points against the uncompressed model, with t-intervals across seeds. Latency: median of 30
warm runs at batch 1 and batch 256 (`modelfusion.compress.measure`) on the threads torch is given (the command
sets one). Nothing is chosen on test: methods run with their defaults, settings fixed before the run.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from modelfusion.compress import COMPRESSORS, compress, dense_bytes, measure, recover
from modelfusion.datasets import load_dataset
from modelfusion.distill import ModelTeacher, distill
from modelfusion.ensemble import EnsembleModule, make_combiner
from modelfusion.evaluate.stats import t_interval
from modelfusion.members import TorchMember
from modelfusion.models import MODELS
from modelfusion.predictions import collect_predictions
from modelfusion.training import RECIPES

STUDENT = {"length": 40, "num_outputs": 10, "channels": 16, "batchnorm": True}  # a quarter of the recipe's 64


def row(model, size: int, reference: dict | None, split, fp32_bytes: int) -> dict:
    measured = measure(model, split, runs=30)
    return {
        "bytes": size,
        "bytes_ratio": size / fp32_bytes,
        "parameters": measured["parameters"],
        "accuracy": measured["accuracy"] * 100,
        "nll": measured["nll"],
        "loss_points": (reference["accuracy"] - measured["accuracy"] * 100) if reference else 0.0,
        "latency_1_us": measured["latency_batch_1_us"],
        "latency_256_us": measured["latency_batch_256_us"],
    }


def every_method(seed: int) -> dict[str, dict]:
    data = load_dataset("digits", seed=seed)
    model = RECIPES["digits-mlp"].train(data, seed=seed).eval()
    fp32 = dense_bytes(model)
    rows = {"fp32": row(model, fp32, None, data.test, fp32)}
    for method in COMPRESSORS.names():
        result = compress(model, method, X=data.train.X)
        rows[method] = row(result.model, result.size_bytes, rows["fp32"], data.test, fp32)
    return rows


def structured(seed: int, recover_epochs: int) -> tuple[dict[str, dict], torch.nn.Module]:
    data = load_dataset("mnist1d", seed=seed)
    recipe = RECIPES["mnist1d-cnn"]
    model = recipe.train(data, seed=seed).eval()
    fp32 = dense_bytes(model)
    rows = {"fp32 (64 channels)": row(model, fp32, None, data.test, fp32)}
    pruned = compress(model, "prune-structured", X=data.train.X, amount=0.5)
    rows["half the channels removed"] = row(
        pruned.model, pruned.size_bytes, rows["fp32 (64 channels)"], data.test, fp32
    )
    recovered = recover(pruned, model, data.train, data.val, epochs=recover_epochs, lr=recipe.lr, seed=seed)
    name = f"half removed + {recover_epochs} recovery epochs"
    rows[name] = row(recovered.model, recovered.size_bytes, rows["fp32 (64 channels)"], data.test, fp32)
    return rows, model


def story(seed: int, first_member: torch.nn.Module | None) -> dict[str, dict]:
    data = load_dataset("mnist1d", seed=seed)
    recipe = RECIPES["mnist1d-cnn"]
    members = [first_member] if first_member is not None else []
    while len(members) < 5:
        members.append(recipe.train(data, seed=10 * seed + len(members)).eval())
    named = [TorchMember(m, name=f"cnn{i}") for i, m in enumerate(members)]
    val = collect_predictions(named, data.val.X, data.val.y, "val", progress=False)
    ensemble = EnsembleModule(named, make_combiner("mean").fit(val), vectorize=False).eval()
    fp32 = sum(dense_bytes(m) for m in members)
    rows = {"ensemble of 5 CNNs": row(ensemble, fp32, None, data.test, fp32)}
    best = max(members, key=lambda m: measure(m, data.val, runs=1)["accuracy"])  # chosen on validation
    rows["its best member (by validation)"] = row(best, dense_bytes(best), rows["ensemble of 5 CNNs"], data.test, fp32)
    torch.manual_seed(seed)
    student = MODELS["cnn1d"](**STUDENT)
    student = distill(
        student,
        ModelTeacher(members),
        data.train,
        data.val,
        epochs=recipe.epochs,
        lr=recipe.lr,
        seed=seed,
        progress=False,
    ).student.eval()
    rows["distilled student (16 channels)"] = row(
        student, dense_bytes(student), rows["ensemble of 5 CNNs"], data.test, fp32
    )
    small = compress(student, "int8")
    rows["student, int8"] = row(small.model, small.size_bytes, rows["ensemble of 5 CNNs"], data.test, fp32)
    return rows


def table(title: str, runs: dict[str, list[dict]], against: str) -> list[str]:
    lines = [
        f"\n{title}\n",
        f"| | bytes | bytes vs {against} | parameters | test accuracy % | loss vs {against} in points [t-interval] "
        "| NLL | batch 1 (µs) | batch 256 (µs) | speed-up at 256 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference = statistics.mean(r["latency_256_us"] for r in next(iter(runs.values())))
    for name, rows in runs.items():

        def mean(key, rows=rows):
            return statistics.mean(r[key] for r in rows)

        low, high = t_interval([r["loss_points"] for r in rows]) if len(rows) > 1 else (float("nan"),) * 2
        lines.append(
            f"| {name} | {mean('bytes'):,.0f} | {mean('bytes_ratio'):.3f}x | {mean('parameters'):,.0f} "
            f"| {mean('accuracy'):.2f} ± {statistics.pstdev(r['accuracy'] for r in rows):.2f} "
            f"| {mean('loss_points'):.2f} [{low:.2f}, {high:.2f}] | {mean('nll'):.3f} | {mean('latency_1_us'):.0f} "
            f"| {mean('latency_256_us'):.0f} | {reference / mean('latency_256_us'):.2f}x |"
        )
    return lines


def pareto_plot(path: str, panels: dict[str, dict[str, list[dict]]]) -> None:
    from modelfusion.plotting import pyplot, save_figure
    from modelfusion.report.figures import pareto_front

    plt = pyplot()
    figure, axes = plt.subplots(len(panels), 2, figsize=(11, 4 * len(panels)), squeeze=False)
    for (title, runs), pair in zip(panels.items(), axes, strict=True):
        costs = (("bytes", "bytes stored"), ("latency_256_us", "latency at batch 256 (µs)"))
        for ax, (cost, label) in zip(pair, costs, strict=True):
            points = {
                n: (statistics.mean(r[cost] for r in rs), statistics.mean(r["accuracy"] for r in rs))
                for n, rs in runs.items()
            }
            front = [list(points)[i] for i in pareto_front(list(points.values()), higher_is_better=True)]
            for name, (x, y) in points.items():
                ax.scatter(x, y, color="C3" if name in front else "C0", zorder=3)
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ordered = sorted(points[n] for n in front)
            ax.plot([p[0] for p in ordered], [p[1] for p in ordered], color="C3", lw=1, zorder=2)
            ax.set_xscale("log")
            ax.set(xlabel=label, ylabel="test accuracy %", title=title)
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--story-seeds", type=int, default=5, help="seeds of part 3 (five CNNs each)")
    parser.add_argument("--recover-epochs", type=int, default=20)
    parser.add_argument("--parts", default="123", help="which parts to run")
    parser.add_argument("--out", help="write every figure here as JSON")
    parser.add_argument("--plot", help="write the Pareto plots here (svg or png)")
    args = parser.parse_args()
    results: dict[str, dict[str, list[dict]]] = {}

    def add(part: str, rows: dict[str, dict]) -> None:
        for name, values in rows.items():
            results.setdefault(part, {}).setdefault(name, []).append(values)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"args": vars(args), "results": results}, f, indent=1)

    first_members = {}
    for seed in range(args.seeds):
        if "1" in args.parts:
            add("digits MLP, every method", every_method(seed))
        if "2" in args.parts:
            rows, first_members[seed] = structured(seed, args.recover_epochs)
            add("mnist1d CNN, structured pruning", rows)
        print(f"seed {seed} done", flush=True)
    if "3" in args.parts:
        for seed in range(args.story_seeds):
            add("mnist1d, ensemble -> student -> int8", story(seed, first_members.get(seed)))
            print(f"story seed {seed} done", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    references = {
        "digits MLP, every method": "fp32",
        "mnist1d CNN, structured pruning": "fp32",
        "mnist1d, ensemble -> student -> int8": "the ensemble",
    }
    for part, runs in results.items():
        print("\n".join(table(f"#### {part} ({len(next(iter(runs.values())))} seeds)", runs, references[part])))
    if args.plot:
        pareto_plot(args.plot, results)


if __name__ == "__main__":
    main()
