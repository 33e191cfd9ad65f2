"""How much of an ensemble's gain a distilled student recovers, per loss and per student.

    .venv/bin/python bench/distill.py [--datasets mnist1d,digits] [--seeds 5] [--epochs 150] [--out FILE.json]
                                      [--losses hinton,mse,hinton+hints|none] [--torchdistill]

Per dataset and seed: five teachers (mnist1d: the paper's 1-D CNN; digits: MLP 64-128-10) trained on the
train split with AdamW + cosine; their mean-probability ensemble; per student (mnist1d: the same 1-D CNN and
one with half the channels; digits: MLP 64-32-10) a lone copy trained on labels only and one distilled copy
per loss (Hinton KD, logit MSE, Hinton KD + FitNets hints on the last hidden features of teacher 0), all with
the same epochs and cosine schedule.

Each loss's recipe (T, alpha, mixup) is chosen on seed 0's validation split among a few candidates for the
first student, never on test, and then used for every seed and student. Reported on test: accuracy
(mean ± std over seeds and the 95% bootstrap CI of the pooled accuracy), NLL, ECE; the recovered fraction
(distilled - lone) / (ensemble - lone) of the seed means with a 95% CI from a paired bootstrap of each
seed's test samples; and the exact McNemar test of distilled against lone, pooled over seeds.

With --torchdistill, torchdistill's own DistillationBox and KDLoss distill the same teachers into the same
student on the same split with the same optimizer, schedule and epochs (bench/torchdistill_runner.py, in
bench/.venv-torchdistill, created here); the same seeds give the same teachers and lone students, so a run
with `--losses none --torchdistill` adds that row to an earlier run's table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from reference_venvs import ROOT, ensure_venv

from modelfusion.datasets import load_dataset
from modelfusion.distill import FeatureHints, ModelTeacher, distill
from modelfusion.evaluate.metrics import classification_metrics
from modelfusion.evaluate.stats import bootstrap_counts, bootstrap_means, mcnemar_exact, percentile_interval
from modelfusion.io import save_member
from modelfusion.io.factory import build_model
from modelfusion.members import TorchMember
from modelfusion.training import train_model

CNN1D = "modelfusion.models:cnn1d"
MLP = "modelfusion.models:mlp"
SETUPS = {
    "mnist1d": {
        "teacher": (CNN1D, {"length": 40, "num_outputs": 10}),
        "teacher_epochs": 60,
        "students": {
            "cnn1d (same)": (CNN1D, {"length": 40, "num_outputs": 10}),
            "cnn1d half width": (CNN1D, {"length": 40, "num_outputs": 10, "channels": 16}),
        },
        "hint": ("6", "6"),  # student module -> teacher module: the last conv block's ReLU, [N, C, 5]
    },
    "digits": {
        "teacher": (MLP, {"in_features": 64, "num_outputs": 10, "hidden": [128]}),
        "teacher_epochs": 40,
        "students": {"mlp 64-32-10": (MLP, {"in_features": 64, "num_outputs": 10, "hidden": [32]})},
        "hint": ("1", "1"),  # the hidden ReLU
    },
}
MIXUP = 0.4
CANDIDATES = {
    "hinton": {
        "T=4 a=0.5": {"loss_params": {"temperature": 4.0, "alpha": 0.5}, "mixup": 0.0},
        "T=4 a=1 mixup": {"loss_params": {"temperature": 4.0, "alpha": 1.0}, "mixup": MIXUP},
        "T=2 a=1 mixup": {"loss_params": {"temperature": 2.0, "alpha": 1.0}, "mixup": MIXUP},
        "T=1 a=1 mixup": {"loss_params": {"temperature": 1.0, "alpha": 1.0}, "mixup": MIXUP},
    },
    "mse": {
        "a=0.5": {"loss_params": {"alpha": 0.5}, "mixup": 0.0},
        "a=1 mixup": {"loss_params": {"alpha": 1.0}, "mixup": MIXUP},
    },
}
FEATURE_WEIGHTS = (0.1, 1.0)  # of the hint loss, added to the chosen Hinton recipe
TORCHDISTILL = "torchdistill KD (its KDLoss, T=1, alpha=0.5)"
LONE = {"loss": "hinton", "loss_params": {"temperature": 1.0, "alpha": 0.0}, "mixup": 0.0}  # labels only


def probabilities(model, X) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(X).double(), dim=1).numpy()


def train_student(factory, teacher_models, data, recipe, seed, args, hint=None):
    torch.manual_seed(seed)
    model = build_model(*factory)
    recipe = dict(recipe)
    hints = None
    if "feature_weight" in recipe:
        hints = FeatureHints(model, teacher_models[0], {hint[0]: hint[1]}, data.train.X[:8])
    result = distill(
        model,
        ModelTeacher(teacher_models),
        data.train,
        data.val,
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        progress=False,
        feature_hints=hints,
        **recipe,
    )
    if hints is not None:
        hints.remove()
    return result.student


def choose_recipes(factory, teachers, data, args, hint, losses) -> dict[str, tuple[str, dict]]:
    """Per loss in `losses`, the candidate with the best validation accuracy (then NLL) on this seed's split
    (the hints are added to the chosen Hinton recipe)."""
    chosen = {}

    def pick(loss, candidates):
        scores = {}
        for name, recipe in candidates.items():
            proba = probabilities(train_student(factory, teachers, data, recipe, 0, args, hint), data.val.X)
            metrics = classification_metrics(proba, data.val.y.numpy())
            scores[name] = (metrics["accuracy"], -metrics["nll"])
        best = max(scores, key=scores.get)
        print(
            f"  {loss}: validation accuracy " + ", ".join(f"{k} {v[0]:.4f}" for k, v in scores.items()) + f" -> {best}",
            flush=True,
        )
        chosen[loss] = (best, candidates[best])

    for loss, candidates in CANDIDATES.items():
        if loss in losses or (loss == "hinton" and "hinton+hints" in losses):
            pick(loss, {name: {"loss": loss, **recipe} for name, recipe in candidates.items()})
    if "hinton+hints" in losses:
        hinton_name, hinton = chosen["hinton"]
        pick(
            "hinton+hints",
            {f"{hinton_name} + hints x{w}": {**hinton, "feature_weight": w} for w in FEATURE_WEIGHTS},
        )
    return {loss: recipe for loss, recipe in chosen.items() if loss in losses}


def torchdistill_probabilities(python: Path, teachers, setup, factory, seed: int, args) -> np.ndarray:
    """torchdistill's KD of the same teachers into the same student on the same split (its own venv)."""
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, teacher in enumerate(teachers):
            spec, kwargs = setup["teacher"]
            member = TorchMember(teacher, name=f"teacher_{i}", factory=spec, factory_kwargs=kwargs)
            paths.append(str(save_member(member, Path(folder) / f"teacher_{i}.safetensors")))
        out = Path(folder) / "torchdistill.npz"
        command = [str(python), str(Path(__file__).with_name("torchdistill_runner.py")), "--dataset", args.dataset]
        command += ["--seed", str(seed), "--epochs", str(args.epochs), "--lr", str(args.lr), "--out", str(out)]
        command += ["--student", factory[0], "--student-kwargs", json.dumps(factory[1]), "--teachers", *paths]
        subprocess.run(command, check=True)
        return np.load(out)["proba"]


def ensure_torchdistill() -> Path:
    """torchdistill needs torchvision, whose wheels here pair with torch 2.14.1 (a CUDA build of about 5.5 GB,
    run on the CPU)."""
    bin_dir = ensure_venv(
        "torchdistill",
        [["torch==2.14.1", "torchvision==0.29.1", "torchdistill==1.1.5"], ["-e", str(ROOT)]],
    )
    return bin_dir / "python"


def recovered_fraction(correct: dict[str, list[np.ndarray]], model: str) -> dict:
    """(model - lone) / (ensemble - lone) of the seed-mean accuracies, with a paired bootstrap CI: each seed's
    test samples are resampled once and shared by the three models."""
    resampled = {name: [] for name in (model, "lone", "ensemble")}
    for seed, lone in enumerate(correct["lone"]):
        counts = bootstrap_counts(len(lone), seed=seed)
        for name in resampled:
            resampled[name].append(bootstrap_means(correct[name][seed].astype(float), counts))
    means = {name: np.mean(values, axis=0) for name, values in resampled.items()}
    point = {name: np.mean([c.mean() for c in correct[name]]) for name in resampled}
    low, high = percentile_interval((means[model] - means["lone"]) / (means["ensemble"] - means["lone"]))
    per_seed = [
        (m.mean() - lone.mean()) / (e.mean() - lone.mean()) if e.mean() != lone.mean() else float("nan")
        for m, lone, e in zip(correct[model], correct["lone"], correct["ensemble"], strict=True)
    ]
    return {
        "fraction": float((point[model] - point["lone"]) / (point["ensemble"] - point["lone"])),
        "ci": [float(low), float(high)],
        "per_seed": [float(f) for f in per_seed],
    }


def table(dataset: str, student: str, scores: dict, correct: dict, recovered: dict, recipes: dict) -> list[str]:
    lines = [
        f"\n#### {dataset}, student {student}\n",
        "| model | test accuracy % (mean ± std) | pooled 95% CI | NLL | ECE | recovered [95% CI] | McNemar vs lone |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in scores.items():
        accs = [r["accuracy"] * 100 for r in rows]
        pooled = np.concatenate(correct[name]).astype(float)
        low, high = percentile_interval(bootstrap_means(pooled, bootstrap_counts(len(pooled), seed=0)))
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        share = test = ""
        if name in recovered:
            fraction = recovered[name]
            share = f"{fraction['fraction']:.0%} [{fraction['ci'][0]:.0%}, {fraction['ci'][1]:.0%}]"
            mcnemar = mcnemar_exact(np.concatenate(correct[name]), np.concatenate(correct["lone"]))
            test = f"+{mcnemar['a_only_correct']} / -{mcnemar['b_only_correct']}, p = {mcnemar['p_value']:.2g}"
        label = f"distilled: {name} ({recipes[name][0]})" if name in recipes else name
        lines.append(
            f"| {label} | {statistics.mean(accs):.2f} ± {spread:.2f} | [{low * 100:.2f}, {high * 100:.2f}] | "
            f"{statistics.mean(r['nll'] for r in rows):.3f} | {statistics.mean(r['ece'] for r in rows):.3f} | "
            f"{share} | {test} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist1d,digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=150, help="student epochs (lone and distilled alike)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", help="write every per-seed figure here as JSON")
    parser.add_argument("--losses", default="hinton,mse,hinton+hints", help="ours to run, or 'none'")
    parser.add_argument("--torchdistill", action="store_true", help="add torchdistill's KD (its own venv)")
    args = parser.parse_args()
    losses = [] if args.losses == "none" else args.losses.split(",")
    torchdistill_python = ensure_torchdistill() if args.torchdistill else None
    report, lines = {}, []
    for dataset in args.datasets.split(","):
        args.dataset = dataset
        setup = SETUPS[dataset]
        recipes = None
        scores = {s: {} for s in setup["students"]}
        correct = {s: {} for s in setup["students"]}
        member_accuracy = []
        for seed in range(args.seeds):
            started = time.perf_counter()
            data = load_dataset(dataset, seed=seed)
            teachers = []
            for i in range(5):
                torch.manual_seed(seed * 100 + i)
                net = build_model(*setup["teacher"])
                teachers.append(
                    train_model(
                        net,
                        data.train,
                        data.val,
                        epochs=setup["teacher_epochs"],
                        lr=args.lr,
                        seed=seed * 100 + i,
                        cosine=True,
                    )
                )
            if recipes is None:
                print(f"{dataset}: choosing each loss's recipe on seed 0's validation split", flush=True)
                first = next(iter(setup["students"].values()))
                recipes = choose_recipes(first, teachers, data, args, setup["hint"], losses)
            y = data.test.y.numpy()
            member_probs = [probabilities(t, data.test.X) for t in teachers]
            member_accuracy.append(float(np.mean([(p.argmax(1) == y).mean() for p in member_probs])))
            for student, factory in setup["students"].items():
                outputs = {
                    "ensemble": np.mean(member_probs, axis=0),
                    "lone": probabilities(train_student(factory, teachers, data, LONE, seed, args), data.test.X),
                }
                for loss, (_, recipe) in recipes.items():
                    model = train_student(factory, teachers, data, recipe, seed, args, setup["hint"])
                    outputs[loss] = probabilities(model, data.test.X)
                if torchdistill_python is not None:
                    outputs[TORCHDISTILL] = torchdistill_probabilities(
                        torchdistill_python, teachers, setup, factory, seed, args
                    )
                for name, proba in outputs.items():
                    scores[student].setdefault(name, []).append(classification_metrics(proba, y))
                    correct[student].setdefault(name, []).append(proba.argmax(1) == y)
            print(
                f"{dataset} seed {seed} ({time.perf_counter() - started:.0f} s): mean member "
                f"{member_accuracy[-1]:.4f}; "
                + "; ".join(
                    f"{student}: " + ", ".join(f"{k} {v[-1]['accuracy']:.4f}" for k, v in scores[student].items())
                    for student in scores
                ),
                flush=True,
            )
        section = [
            f"\n### {dataset}: {args.seeds} seeds, teachers {setup['teacher_epochs']} epochs (mean member accuracy "
            f"{statistics.mean(member_accuracy) * 100:.2f}%), students {args.epochs} epochs"
        ]
        recovered = {  # the bootstrap runs once per distilled model: the table and the JSON share it
            student: {
                name: recovered_fraction(correct[student], name)
                for name in scores[student]
                if name not in ("ensemble", "lone")
            }
            for student in scores
        }
        for student in scores:
            section += table(dataset, student, scores[student], correct[student], recovered[student], recipes)
        print("\n".join(section), flush=True)
        lines += section
        report[dataset] = {
            "member_accuracy": member_accuracy,
            "recipes": {loss: name for loss, (name, _) in recipes.items()},
            "students": {student: {"scores": scores[student], "recovered": recovered[student]} for student in scores},
        }
    print("\n## all results" + "\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), **report}, f, indent=1)


if __name__ == "__main__":
    main()
