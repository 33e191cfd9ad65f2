import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from modelfusion import ConfigError, InvalidInputError, LeakageError, NotFittedError
from modelfusion.features import Cascade, Chained, plot_cascade_curve
from modelfusion.models import mlp
from modelfusion.predictions import Predictions, collect_predictions
from modelfusion.training import train_model


def _logits(probabilities):
    return torch.log(torch.tensor(probabilities, dtype=torch.float32))


def _hand_worked():
    """Three models on four samples; model 0's top probabilities are 0.9, 0.6, 0.55, 0.8, model 1's 0.7, 0.95,
    0.5, 0.6."""
    outputs = torch.stack(
        [
            _logits([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45], [0.2, 0.8]]),
            _logits([[0.3, 0.7], [0.95, 0.05], [0.5, 0.5], [0.6, 0.4]]),
            _logits([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.35, 0.65]]),
        ]
    )
    return Predictions(outputs, torch.tensor([0, 0, 1, 1]), ("cheap", "middle", "dear"), "classification", "val")


def test_routing_matches_a_hand_worked_example():
    preds = _hand_worked()
    result = Cascade([0.7, 0.9], costs=[1, 2, 10]).route(preds)
    # sample 0: 0.9 >= 0.7 at stage 0; 1: 0.6 < 0.7, then 0.95 >= 0.9 at stage 1; 2: 0.55, 0.5 -> stage 2;
    # 3: 0.8 >= 0.7 at stage 0
    assert result.stage.tolist() == [0, 1, 2, 0]
    assert result.cost.tolist() == [1, 3, 13, 1]
    assert result.mean_cost == pytest.approx(4.5)
    torch.testing.assert_close(result.proba[1], torch.tensor([0.95, 0.05], dtype=torch.float64))
    assert result.accuracy(preds.labels) == pytest.approx(1.0)  # 0 right, 0 right, 1 right, 1 right
    everything_first = Cascade([0.0, 0.0]).route(preds)
    assert everything_first.stage.tolist() == [0, 0, 0, 0] and everything_first.mean_cost == 1


def test_thresholds_are_chosen_on_validation_for_a_target_or_a_budget():
    preds = _hand_worked()
    cascade = Cascade(costs=[1, 2, 10], target_accuracy=1.0).fit(preds)
    assert cascade.val_accuracy_ == 1.0
    # the cheapest way to be always right: exhaustive check over the distinct confidence levels
    levels = sorted({0.0, 1.0, 0.9, 0.6, 0.55, 0.8, 0.7, 0.95, 0.5})
    costs = [
        Cascade([a, b], costs=[1, 2, 10]).route(preds)
        for a in levels
        for b in levels
        if Cascade([a, b]).route(preds).accuracy(preds.labels) == 1.0
    ]
    assert cascade.val_cost_ == pytest.approx(min(r.mean_cost for r in costs))
    budget = Cascade(costs=[1, 2, 10], budget=1.0).fit(preds)
    assert budget.val_cost_ <= 1.0 and budget.thresholds_[0] == 0.0
    with pytest.raises(InvalidInputError, match="no thresholds reach mean cost 0.5"):
        Cascade(costs=[1, 2, 10], budget=0.5).fit(preds)


def test_cascade_errors():
    preds = _hand_worked()
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\], got \[1.5\]"):
        Cascade([0.5, 1.5]).route(preds)
    with pytest.raises(ConfigError, match="a cascade of 3 models needs 2 thresholds, got 1"):
        Cascade([0.5]).route(preds)
    with pytest.raises(ConfigError, match=r"target_accuracy must lie in \[0, 1\]"):
        Cascade(target_accuracy=95)
    with pytest.raises(ConfigError, match="costs must be 3 non-negative numbers"):
        Cascade([0.5, 0.5], costs=[1, 2]).route(preds)
    with pytest.raises(NotFittedError, match="call fit"):
        Cascade().route(preds)
    with pytest.raises(LeakageError, match="cascade: refusing to fit on predictions of the 'test' split"):
        Cascade(costs=[1, 2, 10], target_accuracy=1.0).fit(dataclasses.replace(preds, split="test"))


def test_lazy_run_on_real_members_agrees_with_routing_saved_predictions(digits, digits_members, tmp_path):
    """Logistic regression first, a random forest second: the lazy run sends the forest only the undecided
    samples, and the most accurate thresholds within a budget beat either model alone on validation."""
    logreg, forest = digits_members[1], digits_members[2]
    val = collect_predictions([logreg, forest], digits.val.X, digits.val.y, "val", progress=False)
    test = collect_predictions([logreg, forest], digits.test.X, digits.test.y, "test", progress=False)
    cascade = Cascade(costs=[1, 20], budget=5.0).fit(val)
    alone = (val.outputs.argmax(2) == digits.val.y).double().mean(1)
    assert cascade.val_accuracy_ >= alone.max().item() and cascade.val_cost_ <= 5.0
    routed = cascade.route(test)
    run = cascade.predict([logreg, forest], digits.test.X)
    assert torch.equal(run.stage, routed.stage) and 0 < run.stage.sum() < len(run.stage)
    torch.testing.assert_close(run.proba, routed.proba, atol=1e-6, rtol=1e-6)
    assert run.mean_cost == pytest.approx(1 + 20 * run.stage.double().mean().item())

    curve = cascade.curve(test, points=11)
    assert curve[0]["mean_cost"] == 1 and curve[0]["accuracy"] == pytest.approx(
        (test.outputs[0].argmax(1) == test.labels).float().mean().item()
    )
    assert all(a["mean_cost"] <= b["mean_cost"] for a, b in zip(curve, curve[1:], strict=False))
    png = plot_cascade_curve({"logreg -> mlp": curve}, tmp_path / "curve.png")
    assert Image.open(png).size[0] > 100


def test_chained_models_feed_outputs_forward(digits, trained_mlp):
    torch.manual_seed(0)
    chained = Chained(trained_mlp, lambda width: mlp(width, 10, hidden=[16]), digits.train.X[:2])
    assert chained.in_width == 64 + 10
    frozen = {k: v.clone() for k, v in chained.first.state_dict().items()}
    train_model(chained, digits.train, digits.val, epochs=3, lr=1e-2, seed=0)
    assert all(torch.equal(frozen[k], v) for k, v in chained.first.state_dict().items())
    assert all(p.requires_grad for p in trained_mlp.parameters())
    accuracy = (chained(digits.test.X).argmax(1) == digits.test.y).float().mean().item()
    assert accuracy > 0.9
    features_only = Chained(trained_mlp, lambda w: mlp(w, 10), digits.train.X[:2], at="1", pass_input=False)
    assert features_only.in_width == 32 and features_only(digits.test.X[:3]).shape == (3, 10)
    assert np.isfinite(features_only(digits.test.X[:3]).detach().numpy()).all()
