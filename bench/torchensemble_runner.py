"""torchensemble on modelfusion's splits and recipe networks; run by bench/ensembles.py inside its own venv.

    bench/.venv-torchensemble/bin/python bench/torchensemble_runner.py --dataset digits --seed 0 --out f.npz

Trains VotingClassifier, BaggingClassifier, SnapshotEnsembleClassifier and GradientBoostingClassifier (5
networks each) with the dataset's recipe (`recipe_for(data)`: network, AdamW rate and weight decay, cosine
schedule, batch size, epochs; Snapshot gets the members' total epochs) on the train split. The validation
split is torchensemble's hold-out (`test_loader`): it keeps the best validation epoch, as our members do;
the test split is only predicted. Saves each method's test probabilities and training time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchensemble import (
    BaggingClassifier,
    GradientBoostingClassifier,
    SnapshotEnsembleClassifier,
    VotingClassifier,
)

from modelfusion.datasets import load_dataset
from modelfusion.models import MODELS
from modelfusion.training import recipe_for


class Network(nn.Module):
    """torchensemble builds each estimator from a class and its arguments: wrap our factory in one."""

    def __init__(self, factory: str, kwargs: dict) -> None:
        super().__init__()
        self.net = MODELS[factory](**kwargs)

    def forward(self, x):
        return self.net(x)


def load_best(model, save_dir: str) -> None:
    """torchensemble's `io.load`, with `weights_only=False`: the file is the one this process just wrote (it
    pickles the loss module, which torch's safe loader refuses)."""
    (path,) = Path(save_dir).glob("*.pth")
    state = torch.load(path, weights_only=False)
    count = state["n_estimators"]  # a snapshot ensemble may keep fewer snapshots than it took
    while len(model.estimators_) > count:
        del model.estimators_[-1]
    while len(model.estimators_) < count:
        model.estimators_.append(model._make_estimator())
    model._criterion = state["_criterion"]
    model.load_state_dict(state["model"])


METHODS = {
    "torchensemble_voting": VotingClassifier,
    "torchensemble_bagging": BaggingClassifier,
    "torchensemble_snapshot": SnapshotEnsembleClassifier,
    "torchensemble_gradient_boosting": GradientBoostingClassifier,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    logging.disable(logging.INFO)
    data = load_dataset(args.dataset, seed=args.seed)
    recipe = recipe_for(data)
    train = DataLoader(
        TensorDataset(data.train.X, data.train.y),
        batch_size=recipe.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    val = DataLoader(TensorDataset(data.val.X, data.val.y), batch_size=1024)
    estimator_args = {"factory": recipe.factory, "kwargs": recipe.factory_kwargs(data)}
    results = {}
    for name, cls in METHODS.items():
        torch.manual_seed(args.seed)
        model = cls(estimator=Network, n_estimators=args.members, estimator_args=estimator_args, cuda=False)
        model.set_optimizer("AdamW", lr=recipe.lr, weight_decay=recipe.weight_decay)
        # Snapshot ensembles spend one model's budget on all snapshots; give it the members' total epochs.
        epochs = recipe.epochs * args.members if name == "torchensemble_snapshot" else recipe.epochs
        if recipe.cosine and name != "torchensemble_snapshot":  # snapshot brings its own cyclic schedule
            model.set_scheduler("CosineAnnealingLR", T_max=epochs)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as save_dir, contextlib.redirect_stdout(io.StringIO()):
            # torchensemble saves the ensemble at its best hold-out accuracy; load that one back.
            model.fit(train, epochs=epochs, test_loader=val, save_model=True, save_dir=save_dir)
            load_best(model, save_dir)
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            proba = model.predict(data.test.X).numpy()
        results[name] = proba
        results[name + "_seconds"] = np.array(seconds)
        print(f"{name}: accuracy {(proba.argmax(1) == data.test.y.numpy()).mean():.4f} in {seconds:.1f}s", flush=True)
    np.savez(args.out, **results)


if __name__ == "__main__":
    main()
