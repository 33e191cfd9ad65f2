import json

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from sklearn import metrics as skm

from modelfusion import InvalidInputError
from modelfusion.evaluate import evaluate
from modelfusion.evaluate.diversity import diversity, error_correlation_matrix
from modelfusion.evaluate.metrics import (
    classification_metrics,
    expected_calibration_error,
    regression_metrics,
    reliability_curve,
)
from modelfusion.evaluate.stats import (
    bootstrap_counts,
    bootstrap_means,
    mcnemar_exact,
    paired_bootstrap_test,
    t_interval,
)
from modelfusion.predictions import Predictions


def _random_proba(n, c, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return proba, rng.integers(0, c, n)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_classification_metrics_match_scikit_learn(num_classes):
    proba, y = _random_proba(400, num_classes, seed=num_classes)
    m = classification_metrics(proba, y)
    pred = proba.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["nll"] == pytest.approx(skm.log_loss(y, proba, labels=range(num_classes)), rel=1e-9)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    if num_classes == 2:
        # Our Brier sums over both classes: twice scikit-learn's binary Brier score.
        assert m["brier"] == pytest.approx(2 * skm.brier_score_loss(y, proba[:, 1]))
        assert "top3_accuracy" not in m
    else:
        assert m["top3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, proba, k=3))


def test_ece_hand_worked():
    proba = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    y = np.array([0, 1, 0, 1])
    # Bin of 0.9: accuracy 1/2, confidence 0.9 -> 2 * 0.4; bin of 0.6: 1 * 0.4; bin of 0.7: 1 * 0.3.
    assert expected_calibration_error(proba, y, 15) == pytest.approx((0.8 + 0.4 + 0.3) / 4)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def test_reliability_curve_hand_worked_and_its_gaps_weighted_by_counts_are_the_ece():
    proba = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    y = np.array([0, 1, 0, 1])
    curve = reliability_curve(proba, y, 15)  # bins of 0.6, 0.7 and 0.9, in order; empty bins left out
    assert curve["confidence"] == pytest.approx([0.6, 0.7, 0.9])
    assert curve["accuracy"] == pytest.approx([1.0, 1.0, 0.5])
    assert curve["count"] == [1, 1, 2]
    proba, y = _random_proba(500, 4, seed=3)
    curve = reliability_curve(proba, y, 10)
    gaps = np.abs(np.array(curve["accuracy"]) - np.array(curve["confidence"])) * np.array(curve["count"])
    assert sum(curve["count"]) == 500
    assert gaps.sum() / 500 == pytest.approx(expected_calibration_error(proba, y, 10))


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    m = regression_metrics(pred, y)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred))


def test_bootstrap_counts_equal_explicit_resampling():
    n, b = 50, 200
    counts = bootstrap_counts(n, n_resamples=b, seed=7)
    assert counts.shape == (b, n) and np.all(counts.sum(1) == n)
    draws = np.random.default_rng(7).integers(0, n, size=(b, n))
    values = np.random.default_rng(1).normal(size=n)
    np.testing.assert_allclose(bootstrap_means(values, counts), values[draws].mean(1))
    assert np.array_equal(counts, bootstrap_counts(n, n_resamples=b, seed=7))


def test_bootstrap_interval_has_the_binomial_width():
    correct = (np.random.default_rng(0).random(2000) < 0.8).astype(float)
    resampled = bootstrap_means(correct, bootstrap_counts(2000, n_resamples=2000, seed=0))
    low, high = np.percentile(resampled, [2.5, 97.5])
    half_width = 1.96 * np.sqrt(0.8 * 0.2 / 2000)
    assert low < correct.mean() < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_mcnemar_exact_hand_worked():
    a = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 1], bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1], bool)
    # Discordant: a only 1, b only 6 -> p = 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * 8 / 128.
    result = mcnemar_exact(a, b)
    assert (result["a_only_correct"], result["b_only_correct"]) == (1, 6)
    assert result["p_value"] == pytest.approx(0.125)
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(0.125)
    assert mcnemar_exact(a, a)["p_value"] == 1.0


def test_paired_bootstrap_test():
    rng = np.random.default_rng(0)
    loss = rng.random(300)
    counts = bootstrap_counts(300, seed=0)
    same = paired_bootstrap_test(loss, loss, counts)
    assert same["mean_difference"] == 0 and same["p_value"] == 1.0
    better = paired_bootstrap_test(loss * 0.5, loss, counts)
    assert better["mean_difference"] < 0 and better["ci"][1] < 0 and better["p_value"] <= 0.01


def test_diversity_hand_worked():
    y = np.array([0, 1, 0, 1])
    # member a predicts 0,1,1,1 (one error at 2); member b predicts 0,0,0,1 (one error at 1)
    eye = np.eye(2)
    outputs = np.stack([eye[[0, 1, 1, 1]], eye[[0, 0, 0, 1]]])
    d = diversity(outputs, y, "classification")
    assert d["oracle_accuracy"] == 1.0
    assert d["mean_disagreement"] == 0.5
    # Error vectors (0,0,1,0) and (0,1,0,0): correlation -1/3.
    assert d["mean_error_correlation"] == pytest.approx(-1 / 3)
    never_wrong = error_correlation_matrix(np.array([[0.0, 0, 0], [1, 0, 1]]))
    assert np.isnan(never_wrong[0, 1])


def test_evaluate_members_and_fusion(digits_members, digits):
    from modelfusion.predictions import collect_predictions

    preds = collect_predictions(digits_members, digits.test.X, digits.test.y, "test", progress=False)
    fused = preds.probabilities().mean(0)
    report = evaluate(preds, {"mean": fused}, seed=3)
    assert [r.name for r in report.rows] == ["mlp", "logreg", "forest", "mean"]
    members = [r for r in report.rows if r.kind == "member"]
    best = max(members, key=lambda r: r.metrics["accuracy"])
    assert report.best_member == best.name
    row = report.row("mean")
    assert row.vs_best_member["test"] == "mcnemar_exact" and row.vs_best_member["against"] == best.name
    assert 0 <= row.vs_best_member["p_value"] <= 1
    low, high = row.ci["accuracy"]
    assert low <= row.metrics["accuracy"] <= high
    assert row.metrics["accuracy"] == pytest.approx((fused.argmax(1) == digits.test.y).float().mean().item())
    assert set(report.reliability) == {"mlp", "logreg", "forest", "mean"}
    assert sum(report.reliability["mean"]["count"]) == preds.num_samples
    json.dumps(report.to_dict())  # results.json material
    assert report.ranked()[0].metrics["accuracy"] == max(r.metrics["accuracy"] for r in report.rows)
    again = evaluate(preds, {"mean": fused}, seed=3)
    assert again.to_dict() == report.to_dict()


def test_evaluate_regression():
    y = torch.linspace(0, 10, 40)
    outputs = torch.stack([y + 1.0, y - 2.0, y + torch.linspace(-1, 1, 40)])
    preds = Predictions(outputs, y, ("up", "down", "tilt"), "regression", "test")
    report = evaluate(preds, {"mean": outputs.mean(0)})
    assert report.best_member == "tilt"
    assert report.row("up").metrics["rmse"] == pytest.approx(1.0)
    assert report.row("mean").vs_best_member["test"] == "paired_bootstrap"
    assert "mean_error_correlation" in report.diversity


def test_evaluate_bad_input(digits_members, digits):
    preds = Predictions(torch.zeros(2, 4, 3), None, ("a", "b"), "classification", "val")
    with pytest.raises(InvalidInputError, match="have no labels"):
        evaluate(preds)
    preds = Predictions(torch.zeros(2, 4, 3), torch.tensor([0, 1, 2, 0]), ("a", "b"), "classification", "val")
    with pytest.raises(InvalidInputError, match=r"fused prediction 'f' has shape \(4, 2\), expected \(4, 3\)"):
        evaluate(preds, {"f": torch.full((4, 2), 0.5)})
    with pytest.raises(InvalidInputError, match="must be probabilities"):
        evaluate(preds, {"f": torch.ones(4, 3)})
    with pytest.raises(InvalidInputError, match="NaN"):
        evaluate(preds, {"f": torch.full((4, 3), float("nan"))})
    with pytest.raises(InvalidInputError, match="reuse member names"):
        evaluate(preds, {"a": torch.full((4, 3), 1 / 3)})
    with pytest.raises(InvalidInputError, match="best_member 'zz' is not a member"):
        evaluate(preds, best_member="zz")


def test_t_interval_over_seeds_matches_scipy_and_skips_non_finite():
    values = [96.8, 97.3, 96.1, 97.0, 96.5]
    low, high = t_interval(values)
    expected = scipy_stats.t.interval(0.95, 4, loc=np.mean(values), scale=scipy_stats.sem(values))
    np.testing.assert_allclose((low, high), expected)
    assert t_interval([*values, float("nan")]) == (low, high)
    assert t_interval([3.0]) == (3.0, 3.0)


def test_interleaved_latency_times_every_call_in_turns_that_rotate():
    from modelfusion.evaluate.timing import interleaved_latency_us

    calls = []
    timed = interleaved_latency_us({n: (lambda n=n: calls.append(n)) for n in "abc"}, runs=4, warmup=1)
    assert set(timed) == {"a", "b", "c"} and all(t >= 0 for t in timed.values())
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab" + "abc"  # warm-up, then each round one call later
    calls.clear()
    interleaved_latency_us({"x": lambda: calls.append(1)}, runs=1000, warmup=0, budget_s=0.0)
    assert len(calls) == 1 + 5  # the probe round, then the fewest rounds a budget allows
