from __future__ import annotations

import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from modelfusion.datasets import load_dataset
from modelfusion.io.factory import build_model
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.training import train_model

MLP_SPEC = "modelfusion.models:mlp"
MLP_KWARGS = {"in_features": 64, "num_outputs": 10, "hidden": [32]}


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def trained_mlp(digits):
    torch.manual_seed(0)
    model = build_model(MLP_SPEC, MLP_KWARGS)
    return train_model(model, digits.train, digits.val, epochs=5, seed=0)


@pytest.fixture(scope="session")
def digits_members(digits, trained_mlp):
    """Real members of both kinds, trained on digits' train split."""
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    return [
        TorchMember(trained_mlp, name="mlp"),
        SklearnMember(LogisticRegression(max_iter=500).fit(X, y), name="logreg"),
        SklearnMember(RandomForestClassifier(30, random_state=0).fit(X, y), name="forest"),
    ]
