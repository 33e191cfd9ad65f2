"""Results for the report's tests, made by the real writers (so they cannot drift from what the commands
write): a small `auto` run with the output, merge and cascade families on real members, and a real
`fuse_and_evaluate` run on synthetic predictions. Each is made once per process and handed out as a fresh
copy of its JSON, for tests to read or tamper with."""

from __future__ import annotations

import atexit
import functools
import json
import re
import shutil
import tempfile
from pathlib import Path

import torch

from modelfusion.predictions import Predictions

MLP_KWARGS = {"in_features": 64, "num_outputs": 10, "hidden": [32]}


@functools.cache
def _auto_json() -> str:
    from sklearn.linear_model import LogisticRegression

    from modelfusion.auto import auto
    from modelfusion.datasets import load_dataset
    from modelfusion.members import SklearnMember, TorchMember
    from modelfusion.models import mlp
    from modelfusion.results import Skipped
    from modelfusion.training import train_model

    data = load_dataset("digits", seed=0)
    members = []
    for seed in (0, 1):  # two MLPs of one architecture, trained apart: the merge family has a pair to merge
        torch.manual_seed(seed)
        model = train_model(mlp(**MLP_KWARGS), data.train, data.val, epochs=4, seed=seed)
        members.append(TorchMember(model, name=f"mlp_{seed}", factory="mlp", factory_kwargs=MLP_KWARGS))
    X, y = data.train.X.numpy(), data.train.y.numpy()
    members.append(SklearnMember(LogisticRegression(max_iter=300).fit(X, y), name="logreg"))
    folder = tempfile.mkdtemp(prefix="modelfusion-sample-")  # the chosen model's path is real while tests read it
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    out = Path(folder) / "auto"
    families = ["output", "merge", "cascade"]
    run = auto(members, data, families=families, out=out, report=False, progress=False, log=lambda line: None)
    # a family skipped as `auto` skips one (its reason in the results), so the report's section shows
    skipped = [*run.results.skipped, Skipped(family="distill", reason="the time budget of 60s was spent (61s)")]
    return json.dumps(run.results.updated(skipped=skipped).to_json())


def renamed(document, names: dict[str, str]):
    """`document` with each name of `names` replaced by its new one wherever it stands as a word: keys and
    values, and inside other names ("cascade mlp_0 -> mean")."""
    if isinstance(document, dict):
        return {renamed(k, names): renamed(v, names) for k, v in document.items()}
    if isinstance(document, list):
        return [renamed(v, names) for v in document]
    if isinstance(document, str):
        for old, new in names.items():
            document = re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", lambda _, new=new: new, document)
    return document


def auto_results(member_names: tuple[str, str, str] | None = None) -> dict:
    """The JSON of a real `auto` run (members mlp_0, mlp_1 and logreg; every output combiner, two merges and a
    cascade), its members renamed `member_names` if given."""
    document = json.loads(_auto_json())
    if member_names is not None:
        document = renamed(document, dict(zip(("mlp_0", "mlp_1", "logreg"), member_names, strict=True)))
    return document


def ensemble_predictions(member_names: tuple[str, ...] = ("a", "b", "c")) -> tuple[Predictions, Predictions]:
    """Validation and test predictions of members of rising accuracy on 90 samples of 3 classes."""
    generator = torch.Generator().manual_seed(0)

    def predictions(split: str, n: int) -> Predictions:
        labels = torch.arange(n) % 3
        logits = torch.randn(len(member_names), n, 3, generator=generator)
        logits[:, torch.arange(n), labels] += torch.linspace(1.5, 2.5, len(member_names))[:, None]
        return Predictions(logits, labels, member_names, "classification", split)

    return predictions("val", 90), predictions("test", 90)


@functools.cache
def _ensemble_json(member_names: tuple[str, ...], methods: tuple[str, ...]) -> str:
    from modelfusion.ensemble import fuse_and_evaluate

    return json.dumps(fuse_and_evaluate(*ensemble_predictions(member_names), list(methods)).results().to_json())


def ensemble_results(member_names: tuple[str, ...] = ("a", "b", "c"), methods=("mean", "weighted")) -> dict:
    """The JSON `modelfusion ensemble` writes (`EnsembleRun.results`) of a real fit on synthetic predictions."""
    return json.loads(_ensemble_json(tuple(member_names), tuple(methods)))
