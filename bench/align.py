"""Averaging the weights of models trained apart: naive, weight matching, activation matching, REPAIR.

    .venv/bin/python bench/align.py [--seeds 3] [--models 5] [--rebasin] [--out FILE.json] [--plot docs/align.png]

Per dataset (digits, mnist1d), architecture (the dataset's MLP and CNN recipes from modelfusion.training.RECIPES:
MLPs digits 64-128-10 and mnist1d 40-512-512-512-10 with dropout; CNNs with BatchNorm) and seed: five models
trained with the recipe on the train split from different initializations (and batch orders). Two models (the first
two): the endpoints, their output ensemble, and the 50/50 weight average naive, after weight matching and after
activation matching, each with and without REPAIR (statistics on 1,024 training samples; for BatchNorm networks
REPAIR is the recomputation of the running statistics); the loss and accuracy barriers along 11 interpolation
points; the matching time. All five: the output ensemble and the uniform weight average, naive and after weight
matching to the first model or to the running average, with and without REPAIR. Everything is scored on the test
split; nothing is tuned.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from reference_venvs import ROOT, ensure_venv

from modelfusion.align import align, barriers, interpolation_curve, plot_interpolation, repair
from modelfusion.datasets import load_dataset
from modelfusion.io import save_member
from modelfusion.merge import merge_state_dicts
from modelfusion.training import RECIPES

SETUPS = {  # (dataset, architecture): the recipe that trains the models
    ("digits", "mlp"): "digits-mlp",
    ("digits", "cnn+bn"): "digits-cnn",
    ("mnist1d", "mlp"): "mnist1d-mlp",
    ("mnist1d", "cnn+bn"): "mnist1d-cnn",
}
REPAIR_SAMPLES = 1024


def scores(model, split) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        logits = model(split.X)
    return {
        "accuracy": (logits.argmax(1) == split.y).float().mean().item() * 100,
        "loss": F.cross_entropy(logits, split.y).item(),
    }


def ensemble_accuracy(models, split) -> float:
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m.eval()(split.X), 1) for m in models]).mean(0)
    return (mean.argmax(1) == split.y).float().mean().item() * 100


def averaged(models, reference):
    model = copy.deepcopy(reference)
    model.load_state_dict(merge_state_dicts(models, method="linear"))
    return model.eval()


def repaired(model, endpoints, X, spec, weights=None):
    return repair(model, endpoints, X, spec, weights=weights).eval()


def rebasin_result(python: Path, models, dataset: str, seed: int) -> dict:
    """The `rebasin` package on the same two models (saved, then run in its own venv)."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [str(save_member(m, Path(folder) / f"model_{i}.safetensors")) for i, m in enumerate(models[:2])]
        out = Path(folder) / "rebasin.json"
        runner = str(Path(__file__).with_name("rebasin_runner.py"))
        command = [str(python), runner, "--dataset", dataset, "--seed", str(seed), "--a", paths[0], "--b", paths[1]]
        subprocess.run([*command, "--out", str(out)], check=True)
        return json.loads(out.read_text())


def ensure_rebasin() -> Path:
    constraints = ["-c", str(ROOT / "constraints.txt")]
    return ensure_venv("rebasin", [[*constraints, "torch==2.13.0", "rebasin==0.0.47"], [*constraints, "-e", str(ROOT)]])


def run(dataset: str, arch: str, seed: int, count: int, rebasin_python: Path | None) -> tuple[dict, dict]:
    recipe = RECIPES[SETUPS[(dataset, arch)]]
    data = load_dataset(dataset, seed=seed)
    models = [recipe.train(data, seed=seed * 100 + i) for i in range(count)]
    X = data.train.X[:REPAIR_SAMPLES]
    row: dict = {"endpoints": [scores(m, data.test)["accuracy"] for m in models[:2]]}
    row["ensemble of 2"] = ensemble_accuracy(models[:2], data.test)
    curves = {}
    aligned = {"naive": None}
    for method in ("weight_matching", "activation_matching"):
        started = time.perf_counter()
        aligned[method] = align(models[:2], method=method, X=X, seed=seed)
        row[f"{method} seconds"] = time.perf_counter() - started
    spec = aligned["weight_matching"].spec
    for name, result in aligned.items():
        pair = models[:2] if result is None else result.models
        curve = interpolation_curve(pair[0], pair[1], data.test)
        curves[name] = curve
        row[f"{name} midpoint"] = curve[5]["accuracy"] * 100
        row[f"{name} barriers"] = barriers(curve)
        repaired_curve = interpolation_curve(
            pair[0],
            pair[1],
            data.test,
            fix=lambda model, alpha, pair=pair: repaired(model, pair, X, spec, [1 - alpha, alpha]),
        )
        curves[f"{name} + REPAIR"] = repaired_curve
        row[f"{name} + REPAIR midpoint"] = repaired_curve[5]["accuracy"] * 100
        row[f"{name} + REPAIR barriers"] = barriers(repaired_curve)

    if rebasin_python is not None:
        members = [recipe.member(m, data, name=f"model_{i}") for i, m in enumerate(models)]
        row["rebasin"] = rebasin_result(rebasin_python / "python", members, dataset, seed)
    row[f"ensemble of {count}"] = ensemble_accuracy(models, data.test)
    row[f"naive average of {count}"] = scores(averaged(models, models[0]), data.test)["accuracy"]
    row[f"naive average of {count} + REPAIR"] = scores(
        repaired(averaged(models, models[0]), models, X, spec), data.test
    )["accuracy"]
    for target in ("reference", "average"):
        started = time.perf_counter()
        result = align(models, X=X, target=target, seed=seed)
        row[f"weight matching to the {target}, {count} models, seconds"] = time.perf_counter() - started
        merged = averaged(result.models, result.models[0])
        row[f"weight matching to the {target}: average of {count}"] = scores(merged, data.test)["accuracy"]
        row[f"weight matching to the {target}: average of {count} + REPAIR"] = scores(
            repaired(merged, result.models, X, spec), data.test
        )["accuracy"]
    return row, curves


def mean_std(values) -> str:
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--setups", default=",".join(f"{d}/{a}" for d, a in SETUPS))
    parser.add_argument("--out", help="write every figure here as JSON")
    parser.add_argument("--plot", help="save seed 0's interpolation curves of the mnist1d MLPs here (PNG)")
    parser.add_argument("--rebasin", action="store_true", help="also run the rebasin package (its own venv)")
    args = parser.parse_args()
    rebasin_python = ensure_rebasin() if args.rebasin else None
    report, lines = {}, []
    for setup in args.setups.split(","):
        dataset, arch = setup.split("/")
        rows = []
        for seed in range(args.seeds):
            row, curves = run(dataset, arch, seed, args.models, rebasin_python)
            rows.append(row)
            print(f"{setup} seed {seed}: {json.dumps(row, default=float)}", flush=True)
            if args.plot and seed == 0 and (dataset, arch) == ("mnist1d", "mlp"):
                plot_interpolation(curves, args.plot, title="mnist1d MLPs (test)")
        report[setup] = rows
        n = args.models

        def column(key, rows=rows):
            return mean_std(r[key] for r in rows)

        def barrier(key, which, rows=rows):
            return mean_std(r[key][which] * (100 if which == "accuracy_barrier" else 1) for r in rows)

        lines += [
            f"\n### {dataset}, {arch}: {args.seeds} seeds (test accuracy %, mean ± std)\n",
            f"Endpoints {mean_std(a for r in rows for a in r['endpoints'])}; output ensemble of 2: "
            f"{column('ensemble of 2')}; of {n}: {column(f'ensemble of {n}')}. Matching time for 2 models: "
            f"weights {column('weight_matching seconds')} s, activations {column('activation_matching seconds')} s.\n",
            "| 2 models, 50/50 average | midpoint accuracy | loss barrier | accuracy barrier (points) |",
            "|---|---|---|---|",
        ]
        for name in ("naive", "weight_matching", "activation_matching"):
            for suffix in ("", " + REPAIR"):
                key = f"{name}{suffix}"
                lines.append(
                    f"| {key} | {column(f'{key} midpoint')} | {barrier(f'{key} barriers', 'loss_barrier')} | "
                    f"{barrier(f'{key} barriers', 'accuracy_barrier')} |"
                )
        if args.rebasin:
            ok = [r["rebasin"] for r in rows if "error" not in r["rebasin"]]
            if ok:
                lines.append(
                    f"| rebasin package (weight matching, {len(ok)} of {len(rows)} seeds ran) | "
                    f"{mean_std(r['midpoint'] for r in ok)} | "
                    f"{mean_std(r['barriers']['loss_barrier'] for r in ok)} | "
                    f"{mean_std(r['barriers']['accuracy_barrier'] * 100 for r in ok)} |"
                )
                lines.append(
                    f"\nrebasin matching time: {mean_std(r['seconds'] for r in ok)} s; model B's own accuracy "
                    f"before its permutation {mean_std(r['b_before'] for r in ok)}, after "
                    f"{mean_std(r['b_after'] for r in ok)} (a correct permutation leaves it unchanged)"
                )
            failures = {r["rebasin"]["error"] for r in rows if "error" in r["rebasin"]}
            lines += [f"\nrebasin failed: {error}" for error in sorted(failures)]
        lines += [
            "",
            f"| {n} models, uniform average | accuracy | + REPAIR |",
            "|---|---|---|",
            f"| naive | {column(f'naive average of {n}')} | {column(f'naive average of {n} + REPAIR')} |",
        ]
        for target in ("reference", "average"):
            key = f"weight matching to the {target}: average of {n}"
            lines.append(f"| weight matching to the {target} | {column(key)} | {column(key + ' + REPAIR')} |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), **report}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
