"""torchensemble on modelfusion's splits and networks; run by bench/ensembles.py inside its own venv.

    bench/.venv-torchensemble/bin/python bench/torchensemble_runner.py --dataset digits --seed 0 --epochs 40 --out f.npz

Trains VotingClassifier, BaggingClassifier, SnapshotEnsembleClassifier and GradientBoostingClassifier (5
networks each) on the train split only, with no test_loader (torchensemble would pick epochs on it), and
saves each method's test probabilities and training time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import time

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
from modelfusion.io.factory import build_model


class Network(nn.Module):
    """torchensemble builds each estimator from a class and its arguments: wrap our factory in one."""

    def __init__(self, factory: str, kwargs: dict) -> None:
        super().__init__()
        self.net = build_model(factory, kwargs)

    def forward(self, x):
        return self.net(x)


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
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--factory", required=True)
    parser.add_argument("--factory-kwargs", required=True)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    logging.disable(logging.INFO)
    data = load_dataset(args.dataset, seed=args.seed)
    train = DataLoader(
        TensorDataset(data.train.X, data.train.y),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    estimator_args = {"factory": args.factory, "kwargs": json.loads(args.factory_kwargs)}
    results = {}
    for name, cls in METHODS.items():
        torch.manual_seed(args.seed)
        model = cls(estimator=Network, n_estimators=args.members, estimator_args=estimator_args, cuda=False)
        model.set_optimizer("AdamW", lr=1e-3, weight_decay=1e-4)
        start = time.perf_counter()
        # Snapshot ensembles spend one model's budget on all snapshots; give it the members' total epochs.
        epochs = args.epochs * args.members if name == "torchensemble_snapshot" else args.epochs
        with contextlib.redirect_stdout(io.StringIO()):  # torchensemble prints every epoch
            model.fit(train, epochs=epochs, save_model=False)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            proba = model.predict(data.test.X).numpy()
        results[name] = proba
        results[name + "_seconds"] = np.array(seconds)
        print(f"{name}: accuracy {(proba.argmax(1) == data.test.y.numpy()).mean():.4f} in {seconds:.1f}s", flush=True)
    np.savez(args.out, **results)


if __name__ == "__main__":
    main()
