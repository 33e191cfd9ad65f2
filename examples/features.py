"""Fusion inside the network on digits: a CNN and an MLP fused by attention, a spliced backbone fine-tuned on
new classes, and a cascade that runs the CNN only where logistic regression is unsure.

    .venv/bin/python examples/features.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from modelfusion.datasets import Split, load_dataset
from modelfusion.features import Cascade, FeatureFusion, finetune, splice
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.models import cnn2d
from modelfusion.predictions import collect_predictions
from modelfusion.training import RECIPES, train_model


def accuracy(model, split: Split) -> float:
    with torch.no_grad():
        return (model.eval()(split.X).argmax(1) == split.y).float().mean().item()


def digits_of(split: Split, labels: range, per_class: int | None = None) -> Split:
    """The samples of `labels` (relabelled from 0), the first `per_class` of each when given."""
    keep = torch.cat([torch.nonzero(split.y == label)[:per_class, 0] for label in labels]).sort().values
    return Split(split.name, split.X[keep], split.y[keep] - labels.start)


data = load_dataset("digits", seed=0)
torch.manual_seed(0)  # new layers draw their initial weights from the global generator
cnn_recipe = RECIPES["digits-cnn"]  # the settings that reach digits' published accuracy
cnn = cnn_recipe.train(data, seed=0)
net = RECIPES["digits-mlp"].train(data, seed=1)

# 1. Feature fusion: both backbones frozen, their last hidden layers fused by attention under a new head.
fused = FeatureFusion({"cnn": cnn, "mlp": net}, data.train.X[:8], layers=["11", "1"], fusion="attention", head=10)
train_model(fused, data.train, data.val, epochs=20, lr=3e-3, seed=0, cosine=True)
print(f"cnn {accuracy(cnn, data.test):.3f}, mlp {accuracy(net, data.test):.3f}, fused {accuracy(fused, data.test):.3f}")
fused(data.test.X[:4])
print("attention over (cnn, mlp) for 4 test digits:", np.round(fused.fusion.last_weights.double().numpy(), 2).tolist())

# 2. Splicing + transfer: a CNN trained on digits 0-4, cut after its conv blocks, learns 5-9 from 10 per class.
old, new = range(0, 5), range(5, 10)
torch.manual_seed(0)
pretrained = cnn_recipe.fit(
    cnn2d(num_outputs=5, **cnn_recipe.architecture), digits_of(data.train, old), digits_of(data.val, old), seed=0
)
few = digits_of(data.train, new)
few = Split(
    "train",
    few.X[torch.cat([torch.nonzero(few.y == c)[:10, 0] for c in range(5)])],
    few.y[torch.cat([torch.nonzero(few.y == c)[:10, 0] for c in range(5)])],
)
model = splice(pretrained, 5, at="8", example_input=few.X[:2])
result = finetune(model, few, digits_of(data.val, new), schedule="gradual", epochs=60, lr=3e-3)
print("gradual unfreezing stages:", [(s["name"], round(s["val_accuracy"], 3)) for s in result.stages])
print(f"digits 5-9 from 50 labels: {accuracy(model, digits_of(data.test, new)):.3f}")

# 3. Cascade: logistic regression first; the CNN sees only the samples it is unsure of.
logreg = SklearnMember(LogisticRegression(max_iter=2000).fit(data.train.X.numpy(), data.train.y.numpy()), name="lr")
members = [logreg, TorchMember(cnn, name="cnn")]
val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)
cascade = Cascade(costs=[1, 50]).fit(val)  # thresholds that keep the CNN's validation accuracy
run = cascade.predict(members, data.test.X)
print(
    f"cascade: threshold {cascade.thresholds_[0]:.3f}, {(run.stage == 1).float().mean():.0%} of test samples reach "
    f"the CNN, accuracy {run.accuracy(data.test.y):.3f}, mean cost {run.mean_cost:.1f} (CNN alone: 50)"
)
