"""Compressing trained models: bytes, accuracy and CPU latency of every compression method, structured pruning
of the mnist1d CNN with recovery, the end-to-end ensemble -> student -> int8 story, and int8 against fp32
latency head to head.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compress.py [--seeds 5] [--story-seeds 5] [--parts 1234]
        [--latency-runs 2000] [--out FILE.json] [--plot docs/compress_pareto.svg]

1. digits MLP (the `digits-mlp` recipe, trained per seed): each method of `modelfusion.compress.COMPRESSORS`
   with its defaults (pruning removes half), no recovery.
2. mnist1d CNN (the `mnist1d-cnn` recipe: 64 channels, BatchNorm): `prune-structured` removing half of every
   layer's channels, alone and with `--recover-epochs` of distillation from the uncompressed CNN (the recipe's
   learning rate; the epoch chosen on validation).
3. The story, mnist1d: five recipe CNNs (seeds 10s..10s+4), their mean-probability ensemble, a student with a
   quarter of the channels distilled from it (Hinton KD, the recipe's epochs and learning rate, the epoch chosen
   on validation), and the student after `int8`.

4. int8 against fp32, head to head, on the digits MLP and the mnist1d CNN (the recipes, trained per seed): `int8`
   (its kernels chosen by measured cost when it compresses, as a user gets it) and `onnx-int8`, timed against
   the fp32 model in the same run, one call of each in turn (`evaluate.timing.interleaved_latency_us`), so that
   load from other processes weighs on both sides alike: the median of `--latency-runs` rounds at batch 1 and
   of a tenth as many at batch 256, on one thread; the ratio int8 / fp32 of each seed, with a t-interval
   across seeds; the kernels `int8` chose; test accuracy and the share of test predictions equal to fp32's.

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
from modelfusion.evaluate.timing import interleaved_latency_us
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
        result = compress(model, method=method, X=data.train.X)
        rows[method] = row(result.model, result.size_bytes, rows["fp32"], data.test, fp32)
    return rows


def structured(seed: int, recover_epochs: int) -> tuple[dict[str, dict], torch.nn.Module]:
    data = load_dataset("mnist1d", seed=seed)
    recipe = RECIPES["mnist1d-cnn"]
    model = recipe.train(data, seed=seed).eval()
    fp32 = dense_bytes(model)
    rows = {"fp32 (64 channels)": row(model, fp32, None, data.test, fp32)}
    pruned = compress(model, method="prune-structured", X=data.train.X, amount=0.5)
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
    small = compress(student, method="int8", X=data.train.X)
    rows["student, int8"] = row(small.model, small.size_bytes, rows["ensemble of 5 CNNs"], data.test, fp32)
    return rows


HEAD_TO_HEAD = {"digits MLP": ("digits", "digits-mlp"), "mnist1d CNN": ("mnist1d", "mnist1d-cnn")}


def head_to_head(seed: int, runs: int) -> dict[str, dict]:
    """int8 and onnx-int8 against fp32 on each model of `HEAD_TO_HEAD`, timed interleaved on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = {}
        for name, (dataset, recipe) in HEAD_TO_HEAD.items():
            data = load_dataset(dataset, seed=seed)
            model = RECIPES[recipe].train(data, seed=seed).eval()
            int8 = compress(model, method="int8", X=data.train.X)
            onnx = compress(model, method="onnx-int8", X=data.train.X)
            candidates = {"fp32": model, "int8": int8.model, "onnx-int8": onnx.model}
            row = {"kernels": int8.params["kernels"]}
            with torch.no_grad():
                for batch, rounds in ((1, runs), (256, max(runs // 10, 20))):
                    x = data.test.X[:batch]
                    calls = {k: (lambda m=m, x=x: m(x)) for k, m in candidates.items()}
                    for key, median in interleaved_latency_us(calls, runs=rounds, warmup=20).items():
                        row[f"{key}_{batch}_us"] = median
                predictions = {k: m(data.test.X).argmax(1) for k, m in candidates.items()}
            for key, predicted in predictions.items():
                row[f"{key}_accuracy"] = float((predicted == data.test.y).double().mean()) * 100
                row[f"{key}_agreement"] = float((predicted == predictions["fp32"]).double().mean()) * 100
            rows[name] = row
        return rows
    finally:
        torch.set_num_threads(threads)


def head_to_head_table(runs: list[dict[str, dict]]) -> list[str]:
    lines = [
        f"\n#### int8 against fp32, head to head ({len(runs)} seeds; one thread; medians of interleaved runs)\n",
        "| model | method | batch 1 (µs) | ratio to fp32 [t-interval] | batch 256 (µs) | ratio to fp32 [t-interval] "
        "| test accuracy % | predictions equal to fp32's % | kernels chosen (layers) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in HEAD_TO_HEAD:
        rows = [run[name] for run in runs]
        for method in ("fp32", "int8", "onnx-int8"):
            cells = []
            for batch in (1, 256):
                cells.append(f"{statistics.mean(r[f'{method}_{batch}_us'] for r in rows):.1f}")
                ratios = [r[f"{method}_{batch}_us"] / r[f"fp32_{batch}_us"] for r in rows]
                low, high = t_interval(ratios) if len(ratios) > 1 else (float("nan"),) * 2
                cells.append(f"{statistics.mean(ratios):.3f} [{low:.3f}, {high:.3f}]")
            kernels = ""
            if method == "int8":
                chosen = [k for r in rows for k in r["kernels"].values()]
                kernels = ", ".join(f"{k} {chosen.count(k)}" for k in sorted(set(chosen)))
            accuracy = statistics.mean(r[f"{method}_accuracy"] for r in rows)
            agreement = statistics.mean(r[f"{method}_agreement"] for r in rows)
            lines.append(f"| {name} | {method} | {' | '.join(cells)} | {accuracy:.2f} | {agreement:.2f} | {kernels} |")
    return lines


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
    parser.add_argument("--parts", default="1234", help="which parts to run")
    parser.add_argument("--latency-runs", type=int, default=2000, help="rounds at batch 1 in part 4")
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

    first_members, head_to_heads = {}, []
    for seed in range(args.seeds):
        if "4" in args.parts:
            head_to_heads.append(head_to_head(seed, args.latency_runs))
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"args": vars(args), "results": results, "head_to_head": head_to_heads}, f, indent=1)
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
    if head_to_heads:
        print("\n".join(head_to_head_table(head_to_heads)))
    if args.plot:
        pareto_plot(args.plot, results)


if __name__ == "__main__":
    main()
