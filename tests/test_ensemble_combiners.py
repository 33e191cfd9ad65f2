"""Fitted fusions are never worse than their best member on validation; mean_logit floors overconfident members.

The end-to-end cases reproduce issue 12's finding on mnist1d with real scikit-learn members: a random forest
is accurate but underconfident, a small MLP trained longer is less accurate but sharper, and the NLL-optimal
mixture of the two (`weighted`, `greedy_selection` with metric nll) is less accurate than the forest alone.
"""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier

from modelfusion import ConfigError, OverconfidenceWarning
from modelfusion.datasets import load_dataset
from modelfusion.ensemble import fuse_and_evaluate, load_combiner, make_combiner, save_combiner
from modelfusion.ensemble.base import best_member_or_fusion
from modelfusion.members import SklearnMember
from modelfusion.predictions import Predictions, collect_predictions

FITTED_FUSIONS = ["weighted", "greedy_selection"]


@pytest.fixture(scope="module")
def mnist1d_members():
    """Members fitted on mnist1d's train split (about 2 s): forest 68% validation accuracy, the MLPs 56-57%."""
    data = load_dataset("mnist1d", seed=0)
    X, y = data.train.X.numpy(), data.train.y.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimators = {
            "forest": RandomForestClassifier(30, random_state=0),
            "mlp_sharp": MLPClassifier((64,), max_iter=200, random_state=0),  # trained longer: sharper, overfit
            "mlp": MLPClassifier((64,), max_iter=100, random_state=0),
            "knn": KNeighborsClassifier(5),  # gives many classes probability exactly 0
        }
        members = {name: SklearnMember(est.fit(X, y), name=name) for name, est in estimators.items()}
    return data, members


def _val_test(mnist1d_members, names):
    data, members = mnist1d_members
    chosen = [members[name] for name in names]
    val = collect_predictions(chosen, data.val.X, data.val.y, "val", progress=False)
    test = collect_predictions(chosen, data.test.X, data.test.y, "test", progress=False)
    return val, test


def _accuracy(proba: torch.Tensor, labels: torch.Tensor) -> float:
    return (proba.argmax(dim=1) == labels).double().mean().item()


def _member_accuracy(preds: Predictions, index: int) -> float:
    return _accuracy(preds.outputs[index], preds.labels)


@pytest.mark.parametrize("name", FITTED_FUSIONS)
def test_nll_fusion_that_loses_to_the_forest_falls_back_to_it(name, mnist1d_members, tmp_path):
    val, test = _val_test(mnist1d_members, ["forest", "mlp_sharp"])
    forest_val, forest_test = _member_accuracy(val, 0), _member_accuracy(test, 0)

    # The finding: the NLL fit mixes in the sharper, less accurate MLP and loses accuracy on val and test.
    plain = make_combiner(name, fallback=False).fit(val)
    plain_val = _accuracy(plain.fuse(val), val.labels)
    assert plain.weights_[1] > 0.3 and plain_val < forest_val - 0.02
    assert _accuracy(plain.fuse(test), test.labels) < forest_test - 0.02
    assert plain.choice_ == "fusion" and torch.equal(plain.weights_, plain.fusion_weights_)
    assert plain.choice_reason_ == (
        f"fusion (fallback off): validation accuracy {plain_val:.4f}, worse than best member 'forest' {forest_val:.4f}"
    )

    combiner = make_combiner(name).fit(val)
    assert combiner.choice_ == "forest"
    assert combiner.choice_reason_ == f"member 'forest': validation accuracy {forest_val:.4f} > fusion {plain_val:.4f}"
    assert combiner.weights_.tolist() == [1.0, 0.0]
    torch.testing.assert_close(combiner.fusion_weights_, plain.weights_)
    torch.testing.assert_close(combiner.predict_proba(test), torch.softmax(test.outputs[0].double(), 1).float())
    assert _accuracy(combiner.predict_proba(test), test.labels) == forest_test

    # The decision survives saving, and results.json reports it.
    loaded = load_combiner(save_combiner(combiner, tmp_path / f"{name}.safetensors"))
    assert (loaded.choice_, loaded.choice_reason_) == (combiner.choice_, combiner.choice_reason_)
    assert torch.equal(loaded.fusion_weights_, combiner.fusion_weights_) and loaded.fallback is True
    entry = fuse_and_evaluate(val, test, [name]).results().candidate(name).details["combiner"]
    assert entry["choice"] == "forest" and entry["choice_reason"] == combiner.choice_reason_
    assert entry["weights"] == [1.0, 0.0] and entry["params"]["fallback"] is True


@pytest.mark.parametrize("name", FITTED_FUSIONS)
def test_fusion_that_beats_the_best_member_is_kept(name, mnist1d_members):
    val, test = _val_test(mnist1d_members, ["forest", "mlp"])
    combiner = make_combiner(name).fit(val)
    fused_val, forest_val = _accuracy(combiner.fuse(val), val.labels), _member_accuracy(val, 0)
    assert fused_val > forest_val + 0.01
    assert combiner.choice_ == "fusion" and torch.equal(combiner.weights_, combiner.fusion_weights_)
    assert (
        combiner.choice_reason_
        == f"fusion: validation accuracy {fused_val:.4f} >= best member 'forest' {forest_val:.4f}"
    )
    assert 0 < combiner.weights_[1] < 1


def test_best_member_is_the_most_accurate_then_the_lowest_nll():
    # a and b are both always right (b more confidently); c is always wrong and has all the fitted weight.
    proba = torch.tensor([[[0.6, 0.4], [0.4, 0.6]], [[0.9, 0.1], [0.1, 0.9]], [[0.2, 0.8], [0.8, 0.2]]])
    weights, choice, reason = best_member_or_fusion(
        torch.tensor([0.0, 0.0, 1.0]), proba.log().double(), torch.tensor([0, 1]), ("a", "b", "c"), fallback=True
    )
    assert weights.tolist() == [0.0, 1.0, 0.0] and choice == "b"
    assert reason == "member 'b': validation accuracy 1.0000 > fusion 0.0000"
    # A tie with the fusion keeps the fusion: the member must be strictly better.
    weights, choice, reason = best_member_or_fusion(
        torch.tensor([0.5, 0.5, 0.0]), proba.log().double(), torch.tensor([0, 1]), ("a", "b", "c"), fallback=True
    )
    assert weights.tolist() == [0.5, 0.5, 0.0] and choice == "fusion"
    assert reason == "fusion: validation accuracy 1.0000 >= best member 'b' 1.0000"


def test_regression_falls_back_when_shrinkage_makes_the_fusion_worse():
    # a is exact and b is off by 2: NNLS gives [1, 0], shrinkage 0.5 makes it [0.75, 0.25], whose MSE is
    # 0.5^2 = 0.25 > 0, so the fallback uses a alone.
    y = torch.tensor([1.0, -2.0, 3.0, 0.5])
    preds = Predictions(torch.stack([y, y + 2]), y, ("a", "b"), "regression", "val")
    combiner = make_combiner("weighted", shrinkage=0.5).fit(preds)
    assert combiner.choice_ == "a" and combiner.weights_.tolist() == [1.0, 0.0]
    assert combiner.choice_reason_ == "member 'a': validation MSE 0 < fusion 0.25"
    np.testing.assert_allclose(combiner.fusion_weights_, [0.75, 0.25], atol=1e-6)
    kept = make_combiner("weighted", shrinkage=0.5, fallback=False).fit(preds)
    np.testing.assert_allclose(kept.weights_, [0.75, 0.25], atol=1e-6)
    assert kept.choice_reason_ == "fusion (fallback off): validation MSE 0.25, worse than best member 'a' 0"
    with pytest.raises(ConfigError, match="weighted: fallback must be True or False, got 'no'"):
        make_combiner("weighted", fallback="no").fit(preds)


# -- mean_logit's floor ---------------------------------------------------------------------------------
def _overconfident_case() -> Predictions:
    """Sample 0 (class 1): `a` gives class 1 probability 1e-12 (a forest's clipped zero, log = -27.6), `b` and
    `c` give it 0.999. Sample 1 (class 0): everyone agrees."""
    proba = torch.tensor(
        [
            [[1 - 1e-12, 1e-12], [0.9, 0.1]],  # a
            [[0.001, 0.999], [0.8, 0.2]],  # b
            [[0.001, 0.999], [0.7, 0.3]],  # c
        ],
        dtype=torch.float64,
    )
    return Predictions(proba.log().float(), torch.tensor([1, 0]), ("a", "b", "c"), "classification", "val", (0, 1))


def test_mean_logit_floors_a_member_that_gives_zero_probability():
    preds = _overconfident_case()
    message = (
        "mean_logit: member 'a' gives the true class probability < 0.0001 on 1 of 2 validation samples "
        "(overconfident); its log-probabilities are floored at log(0.0001)"
    )
    for name in ("mean_logit", "geometric_mean"):
        with pytest.warns(OverconfidenceWarning, match=re.escape(message)):
            combiner = make_combiner(name).fit(preds)
        assert combiner.overconfident_ == {"a": 1}
        assert combiner.predict(preds).tolist() == [1, 0]  # b and c outvote a's zero

    # By hand: the normalized geometric mean of the floored probabilities. Sample 0: class 0 gets
    # (1 * 0.001 * 0.001)^(1/3) = 0.01, class 1 gets (1e-4 * 0.999 * 0.999)^(1/3).
    class_1 = (1e-4 * 0.999**2) ** (1 / 3)
    expected = torch.tensor([0.01, class_1]) / (0.01 + class_1)
    torch.testing.assert_close(combiner.fuse(preds)[0], expected.float())
    assert expected[1].item() == pytest.approx(0.8227, abs=1e-4)

    # A floor below a's 1e-12 is the old, unfloored mean logit: a's -27.6 outweighs two members at 0.999.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unfloored = make_combiner("mean_logit", floor=1e-15).fit(preds)
    assert unfloored.overconfident_ == {} and unfloored.predict(preds).tolist() == [0, 0]
    torch.testing.assert_close(unfloored.fuse(preds), torch.softmax(preds.outputs.double().mean(0), 1).float())


def test_mean_logit_names_every_overconfident_member_and_round_trips(tmp_path):
    preds = _overconfident_case()
    with pytest.warns(OverconfidenceWarning) as record:
        combiner = make_combiner("mean_logit", floor=0.85).fit(preds)
    assert [str(w.message) for w in record] == [
        "mean_logit: members give the true class probability < 0.85 on validation samples (overconfident): "
        "'a' on 1, 'b' on 1, 'c' on 1 of 2; their log-probabilities are floored at log(0.85)"
    ]
    assert combiner.overconfident_ == {"a": 1, "b": 1, "c": 1}
    loaded = load_combiner(save_combiner(combiner, tmp_path / "mean_logit.safetensors"))
    assert loaded.overconfident_ == combiner.overconfident_ and loaded.floor == 0.85
    assert torch.equal(loaded.fuse(preds), combiner.fuse(preds))
    for floor in (0, 1, -0.5, math.nan, True):
        with pytest.raises(ConfigError, match=re.escape(f"mean_logit: floor must be in (0, 1), got {floor!r}")):
            make_combiner("mean_logit", floor=floor).fit(preds)


def test_mean_logit_warns_about_a_real_member_with_zero_probabilities(mnist1d_members):
    val, test = _val_test(mnist1d_members, ["forest", "mlp", "knn"])
    knn_misses = int(
        (torch.softmax(val.outputs[2].double(), 1)[torch.arange(val.num_samples), val.labels] < 1e-4).sum()
    )
    assert knn_misses > 20  # 5 neighbours: a class none of them has gets probability 0
    # the warning names members overconfident on >= 1% of the samples; the record holds every one
    with pytest.warns(OverconfidenceWarning, match=f"member 'knn' gives .* on {knn_misses} of {val.num_samples}"):
        run = fuse_and_evaluate(val, test, ["mean_logit"])
    overconfident = run.results().candidate("mean_logit").details["combiner"]["overconfident"]
    assert overconfident["knn"] == knn_misses


def test_mean_logit_does_not_warn_about_one_confident_mistake_in_hundreds():
    labels = torch.zeros(200, dtype=torch.long)
    logits = torch.zeros(2, 200, 2)
    logits[:, :, 0] = 3.0  # both members right and sure
    logits[0, 0] = torch.tensor([-20.0, 20.0])  # member 'a' confidently wrong on one sample of 200
    preds = Predictions(logits, labels, ("a", "b"), "classification", "val", (0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverconfidenceWarning)
        combiner = make_combiner("mean_logit").fit(preds)
    assert combiner.overconfident_ == {"a": 1}
