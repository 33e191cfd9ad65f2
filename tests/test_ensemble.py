import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, StackingClassifier, VotingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from typer.testing import CliRunner

from modelfusion import (
    ConfigError,
    IncompatibleModelsError,
    InvalidInputError,
    LeakageError,
    NotFittedError,
    UnknownNameError,
)
from modelfusion.cli import app
from modelfusion.ensemble import (
    COMBINERS,
    Mean,
    Voting,
    choose_combiner,
    combiners_for,
    fuse_and_evaluate,
    load_combiner,
    make_combiner,
)
from modelfusion.ensemble.temperature import fit_temperature
from modelfusion.members import SklearnMember
from modelfusion.predictions import Predictions, collect_predictions


def _classification(probs, labels, split="val"):
    probs = torch.as_tensor(probs, dtype=torch.float64)
    names = tuple("abcdefgh"[: len(probs)])
    return Predictions(probs.log().float(), torch.as_tensor(labels), names, "classification", split)


def _regression(values, y, split="val"):
    values = torch.as_tensor(np.asarray(values), dtype=torch.float32)
    names = tuple("abcdefgh"[: len(values)])
    return Predictions(values, torch.as_tensor(y, dtype=torch.float32), names, "regression", split)


# -- hand-worked values -------------------------------------------------------------------------------
def test_mean_probability():
    preds = _classification([[[0.9, 0.1], [0.4, 0.6]], [[0.5, 0.5], [0.2, 0.8]]], [0, 1])
    torch.testing.assert_close(Mean().fit(preds).predict_proba(preds), torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    assert Mean().fit(preds).predict(preds).tolist() == [0, 1]


def test_mean_logit_is_the_normalized_geometric_mean():
    # sqrt(0.5 * 0.1) : sqrt(0.5 * 0.9) = 1 : 3
    preds = _classification([[[0.5, 0.5]], [[0.1, 0.9]]], [1])
    for name in ("mean_logit", "geometric_mean"):
        torch.testing.assert_close(make_combiner(name).fit(preds).fuse(preds), torch.tensor([[0.25, 0.75]]))


def test_regression_mean_and_median():
    preds = _regression([[1.0, 0.0], [5.0, 2.0], [2.0, 4.0], [10.0, 6.0]], [0.0, 0.0])
    assert make_combiner("mean").fit(preds).predict(preds).tolist() == [4.5, 3.0]
    assert make_combiner("median").fit(preds).predict(preds).tolist() == [3.5, 3.0]  # middle two averaged
    assert make_combiner("median").fit(preds.select(["a", "b", "c"])).predict(
        preds.select(["a", "b", "c"])
    ).tolist() == [2.0, 2.0]


def test_weighted_nll_weights_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(2, 60))  # two members, 60 samples, 3 classes
    labels = rng.integers(0, 3, 60)
    preds = _classification(probs, labels)
    fitted = make_combiner("weighted").fit(preds).fusion_weights_.numpy()  # the NLL fit, before any fallback
    grid = np.linspace(0, 1, 10001)
    q = probs[:, np.arange(60), labels]
    nll = [-np.log(w * q[0] + (1 - w) * q[1]).mean() for w in grid]
    assert fitted[0] == pytest.approx(grid[int(np.argmin(nll))], abs=2e-4)
    assert fitted.sum() == pytest.approx(1.0)


def test_weighted_symmetric_and_dominant_cases():
    symmetric = _classification([[[0.8, 0.2], [0.8, 0.2]], [[0.2, 0.8], [0.2, 0.8]]], [0, 1])
    np.testing.assert_allclose(make_combiner("weighted").fit(symmetric).weights_, [0.5, 0.5], atol=1e-6)
    dominant = _classification([[[0.9, 0.1], [0.1, 0.9]], [[0.1, 0.9], [0.9, 0.1]]], [0, 1])
    assert make_combiner("weighted").fit(dominant).weights_[0] > 0.999


def test_weighted_regression_is_nnls_and_shrinkage_blends_toward_uniform():
    a, b = np.array([1.0, 2.0, 0.0, 3.0]), np.array([0.0, 1.0, 4.0, 1.0])
    preds = _regression([a, b], 0.3 * a + 0.7 * b)
    np.testing.assert_allclose(make_combiner("weighted").fit(preds).weights_, [0.3, 0.7], atol=1e-6)
    np.testing.assert_allclose(make_combiner("weighted", shrinkage=0.5).fit(preds).weights_, [0.4, 0.6], atol=1e-6)
    raw = make_combiner("weighted", normalize=False).fit(_regression([a, b], 2 * (0.3 * a + 0.7 * b)))
    np.testing.assert_allclose(raw.weights_, [0.6, 1.4], atol=1e-5)


def test_voting_hand_worked():
    preds = _classification([[[0.9, 0.1]], [[0.5, 0.5]]], [0])
    soft = make_combiner("soft_vote", weights=[1, 3]).fit(preds)
    torch.testing.assert_close(soft.fuse(preds), torch.tensor([[0.6, 0.4]]))
    three = _classification([[[0.9, 0.1]], [[0.4, 0.6]], [[0.45, 0.55]]], [0])
    shares = make_combiner("hard_vote").fit(three).fuse(three)
    torch.testing.assert_close(shares, torch.tensor([[1 / 3, 2 / 3]]), atol=1e-5, rtol=0)
    # One vote each: the tie goes to class 1, whose summed probability is larger (0.4 + 0.7 > 0.6 + 0.3).
    tie = _classification([[[0.6, 0.4]], [[0.3, 0.7]]], [0])
    assert make_combiner("hard_vote").fit(tie).predict(tie).tolist() == [1]
    weighted = make_combiner("hard_vote", weights=[3, 1]).fit(tie)
    assert weighted.predict(tie).tolist() == [0]


def test_greedy_selection_hand_worked():
    # y = 0; a = +1 and b = -1 (MSE 1 each), c = +2 (MSE 4). Start from a; adding b gives MSE 0, and no
    # later addition beats that, so the kept prefix is {a, b}.
    preds = _regression([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0]], [0.0, 0.0])
    combiner = make_combiner("greedy_selection", n_iterations=5).fit(preds)
    np.testing.assert_allclose(combiner.weights_, [0.5, 0.5, 0.0])
    sorted_init = make_combiner("greedy_selection", n_iterations=0, init_size=2).fit(preds)
    np.testing.assert_allclose(sorted_init.weights_, [0.5, 0.5, 0.0])


def test_greedy_selection_bagging_is_seeded(digits_val_test):
    val, _ = digits_val_test
    a = make_combiner("greedy_selection", bagging_rounds=5, seed=1).fit(val).weights_
    b = make_combiner("greedy_selection", bagging_rounds=5, seed=1).fit(val).weights_
    assert torch.equal(a, b) and a.sum().item() == pytest.approx(1.0)


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20000, 5)) * 3
    scaled = np.exp(logits / 2.5)
    labels = np.array([rng.choice(5, p=row / row.sum()) for row in scaled])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_temperature_on_fused_output_keeps_the_classes_and_lowers_val_nll(digits_val_test):
    val, test = digits_val_test
    base = make_combiner("mean").fit(val)
    calibrated = make_combiner("temperature", per_member=False).fit(val)
    assert torch.equal(calibrated.predict(test), base.predict(test))

    def nll(proba):
        return -torch.log(proba[torch.arange(len(val.labels)), val.labels]).mean().item()

    assert nll(calibrated.fuse(val)) <= nll(base.fuse(val)) + 1e-9
    both = make_combiner("temperature", base="weighted").fit(val)
    assert both.member_temperatures_.shape == (3,) and both.base_.weights_.shape == (3,)


# -- against scikit-learn ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sklearn_members(digits):
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    estimators = {
        "logreg": LogisticRegression(max_iter=1000).fit(X, y),
        "forest": RandomForestClassifier(50, random_state=0).fit(X, y),
        "knn": KNeighborsClassifier(7).fit(X, y),
        "extra_trees": ExtraTreesClassifier(50, random_state=0).fit(X, y),
    }
    members = [SklearnMember(e, name=n) for n, e in estimators.items()]
    val = collect_predictions(members, digits.val.X, digits.val.y, "val", progress=False)
    test = collect_predictions(members, digits.test.X, digits.test.y, "test", progress=False)
    return estimators, val, test


@pytest.mark.parametrize("weights", [None, [1, 2, 1, 0.5]])
def test_voting_equals_scikit_learn_voting_classifier(sklearn_members, digits, weights):
    estimators, val, test = sklearn_members
    frozen = [(n, FrozenEstimator(e)) for n, e in estimators.items()]
    X_val, y_val, X_test = digits.val.X.numpy(), digits.val.y.numpy(), digits.test.X.numpy()
    soft = VotingClassifier(frozen, voting="soft", weights=weights).fit(X_val, y_val)
    ours = make_combiner("soft_vote", weights=weights).fit(val)
    np.testing.assert_allclose(ours.predict_proba(test).numpy(), soft.predict_proba(X_test), atol=1e-6)
    hard = VotingClassifier(frozen, voting="hard", weights=weights).fit(X_val, y_val)
    ours_hard = make_combiner("hard_vote", weights=weights).fit(val)
    shares = ours_hard.fuse(test).numpy()
    top2 = np.sort(shares, axis=1)[:, -2:]
    no_tie = top2[:, 1] - top2[:, 0] > 1e-4  # scikit-learn breaks ties by the lower class index instead
    assert no_tie.mean() > 0.9
    np.testing.assert_array_equal(ours_hard.predict(test).numpy()[no_tie], hard.predict(X_test)[no_tie])


def test_stacking_equals_scikit_learn_stacking_classifier(sklearn_members, digits):
    estimators, val, test = sklearn_members
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(digits.val.X, digits.val.y))
    reference = StackingClassifier(
        [(n, FrozenEstimator(e)) for n, e in estimators.items()],
        final_estimator=LogisticRegression(max_iter=2000),
        cv=folds,
        stack_method="predict_proba",
    ).fit(digits.val.X.numpy(), digits.val.y.numpy())
    ours = make_combiner("stacking", cv=folds).fit(val)
    np.testing.assert_allclose(
        ours.predict_proba(test).numpy(), reference.predict_proba(digits.test.X.numpy()), atol=1e-6
    )
    assert ours.linear_head_ is not None  # served by torch, not by scikit-learn
    assert set(ours.cv_score_) == {"accuracy", "nll"} and 0.8 < ours.cv_score_["accuracy"] <= 1


def test_stacking_options(sklearn_members, digits):
    _, val, test = sklearn_members
    tree = make_combiner("stacking", meta_learner="sklearn.tree:DecisionTreeClassifier", meta_params={"max_depth": 3})
    assert tree.fit(val).linear_head_ is None and tree.fuse(test).shape == (len(test.labels), 10)
    passthrough = make_combiner("stacking", passthrough=True).fit(val, X=digits.val.X)
    assert passthrough.meta_learner_.n_features_in_ == 4 * 10 + 64
    with pytest.raises(InvalidInputError, match="passthrough=True needs the inputs"):
        passthrough.fuse(test)
    with pytest.raises(ConfigError, match="cannot import meta_learner 'sklearn.nope:Model'"):
        make_combiner("stacking", meta_learner="sklearn.nope:Model").fit(val)
    with pytest.raises(ConfigError, match="is not a classifier"):
        make_combiner("stacking", meta_learner="sklearn.linear_model:Ridge").fit(val)


def test_stacking_binary_drops_the_redundant_column():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(2), size=(3, 80))
    preds = _classification(probs, rng.integers(0, 2, 80))
    stacking = make_combiner("stacking").fit(preds)
    assert stacking.meta_learner_.n_features_in_ == 3
    torch.testing.assert_close(stacking.fuse(preds).sum(1), torch.ones(80))


def test_stacking_regression_uses_ridge():
    rng = np.random.default_rng(0)
    y = rng.normal(size=100)
    values = np.stack([y + rng.normal(scale=s, size=100) for s in (0.1, 0.5, 1.0)])
    stacking = make_combiner("stacking").fit(_regression(values, y))
    assert type(stacking.meta_learner_).__name__ == "Ridge" and stacking.cv_score_["rmse"] < 0.2


# -- contract, leakage and registry ------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_val_test(digits_members, digits):
    val = collect_predictions(digits_members, digits.val.X, digits.val.y, "val", progress=False)
    test = collect_predictions(digits_members, digits.test.X, digits.test.y, "test", progress=False)
    return val, test


@pytest.fixture(scope="module")
def regression_val_test():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(2, 50))
    noise = [rng.normal(scale=s, size=(2, 50)) for s in (0.2, 0.4, 0.8)]
    return _regression(np.stack([y[0] + n[0] for n in noise]), y[0]), _regression(
        np.stack([y[1] + n[1] for n in noise]), y[1], "test"
    )


@pytest.mark.parametrize("name", COMBINERS.names())
def test_every_registered_combiner_fits_and_predicts(name, digits_val_test, regression_val_test):
    cls = COMBINERS[name]
    assert cls.__doc__ and cls.name == name
    for task, (val, test) in (("classification", digits_val_test), ("regression", regression_val_test)):
        if task not in cls.tasks:
            with pytest.raises(InvalidInputError, match=f"supports .* not {task}"):
                make_combiner(name).fit(val)
            continue
        combiner = make_combiner(name).fit(val)
        fused = combiner.fuse(test)
        if task == "classification":
            assert fused.shape == (test.num_samples, test.num_classes)
            torch.testing.assert_close(fused.sum(1), torch.ones(test.num_samples))
        else:
            assert fused.shape == (test.num_samples,) and torch.isfinite(fused).all()
        assert combiner.member_names_ == val.member_names
        assert set(combiner.get_params()) == set(make_combiner(name).get_params())


def _same_state(a, b) -> bool:
    """Exact equality of fitted states: tensors, arrays, dicts, sequences and objects (a scikit-learn
    meta-learner, a base combiner) compared attribute by attribute."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dict__") and type(a) is type(b):
        return _same_state(vars(a), vars(b))
    return a == b


def _corrupted(preds: Predictions, split: str | None = None) -> Predictions:
    """The same outputs with every label wrong (classification: the next class) or targets reversed."""
    if preds.task == "classification":
        labels = (preds.labels + 1) % preds.num_classes
    else:
        labels = -preds.labels.flip(0)
    return dataclasses.replace(preds, labels=labels, split=split or preds.split)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fuse_and_evaluate_never_sees_test_labels(task, digits_val_test, regression_val_test):
    """Leakage check: corrupting every test label changes no fitted state and no fused test output."""
    val, test = digits_val_test if task == "classification" else regression_val_test
    names = combiners_for(task)
    # The check has teeth: fitted on these test outputs, the learning combiners do depend on the labels, so
    # a fuse_and_evaluate that fitted on test (however its split was named) would fail the asserts below.
    as_val = dataclasses.replace(test, split="val")
    label_dependent = {
        name
        for name in names
        if not _same_state(
            make_combiner(name).fit(as_val).fitted_state(), make_combiner(name).fit(_corrupted(as_val)).fitted_state()
        )
    }
    assert {"weighted", "stacking", "greedy_selection"} <= label_dependent

    before = val.outputs.clone()
    run = fuse_and_evaluate(val, test, "all")
    corrupted = fuse_and_evaluate(val, _corrupted(test), "all")
    assert torch.equal(val.outputs, before)  # fitting leaves its input alone
    assert set(run.combiners) == set(corrupted.combiners) == set(names)
    for name in names:
        fitted, other = run.combiners[name], corrupted.combiners[name]
        assert _same_state(fitted.fitted_state(), other.fitted_state()), name
        assert torch.equal(fitted.fuse(test), other.fuse(test)), name
        assert _same_state(make_combiner(name).fit(val).fitted_state(), fitted.fitted_state()), name  # val only


def test_fitting_on_the_test_split_is_refused(digits_val_test, regression_val_test):
    for val, test in (digits_val_test, regression_val_test):
        for name in combiners_for(val.task):
            with pytest.raises(
                LeakageError, match=f"combiner '{name}': refusing to fit on predictions of the 'test' split"
            ):
                make_combiner(name).fit(test)
        with pytest.raises(LeakageError, match="of the 'Test ' split"):
            make_combiner("mean").fit(dataclasses.replace(val, split="Test "))
        with pytest.raises(LeakageError, match="validation predictions are of the 'test' split"):
            fuse_and_evaluate(test, val, ["mean"])  # swapped
        with pytest.raises(LeakageError, match="validation predictions are of the 'test' split"):
            fuse_and_evaluate(test, test, ["mean"])
        for same in (val, dataclasses.replace(val)):  # one object twice, or a copy of it
            with pytest.raises(LeakageError, match="validation and test predictions are the same \\(split 'val'"):
                fuse_and_evaluate(val, same, ["mean"])
    assert issubclass(LeakageError, InvalidInputError)


def _ensemble_cli(*args: str):
    return CliRunner().invoke(app, ["ensemble", *args])


def test_ensemble_command_never_sees_test_labels(tmp_path, digits_val_test):
    val, test = digits_val_test
    val.save(tmp_path / "val.safetensors")
    test.save(tmp_path / "test.safetensors")
    _corrupted(test).save(tmp_path / "corrupted.safetensors")
    methods = ["--method", "weighted", "--method", "stacking", "--method", "temperature"]
    for preds in ("test", "corrupted"):
        args = [
            "--val-preds",
            str(tmp_path / "val.safetensors"),
            "--test-preds",
            str(tmp_path / f"{preds}.safetensors"),
        ]
        result = _ensemble_cli(*args, *methods, "--out", str(tmp_path / f"run_{preds}"))
        assert result.exit_code == 0, result.output
    for name in ("weighted", "stacking", "temperature"):  # files differ in skops' zip timestamps: load them
        fitted = [
            load_combiner(tmp_path / run / "combiners" / f"{name}.safetensors") for run in ("run_test", "run_corrupted")
        ]
        assert _same_state(fitted[0].fitted_state(), fitted[1].fitted_state()), name
        assert torch.equal(fitted[0].fuse(test), fitted[1].fuse(test)), name


def test_ensemble_command_refuses_to_fit_on_test(tmp_path, digits_val_test):
    val, test = digits_val_test
    val.save(tmp_path / "val.safetensors")
    test.save(tmp_path / "test.safetensors")
    for val_file, test_file, reason in (
        ("test", "test", "the validation predictions are of the 'test' split"),
        ("test", "val", "the validation predictions are of the 'test' split"),
        ("val", "val", "the validation and test predictions are the same (split 'val'"),
    ):
        val_path, test_path = tmp_path / f"{val_file}.safetensors", tmp_path / f"{test_file}.safetensors"
        result = _ensemble_cli(
            "--val-preds", str(val_path), "--test-preds", str(test_path), "--out", str(tmp_path / "o")
        )
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: --val-preds {val_path}, --test-preds {test_path}: {reason}")
        assert "fit on validation predictions" in lines[0] or "give the validation split's" in lines[0]
    assert not (tmp_path / "o").exists()


def test_contract_errors(digits_val_test):
    val, _ = digits_val_test
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        Mean().predict_proba(val)
    fitted = Mean().fit(val)
    other = Predictions(torch.zeros(2, 2, 2), None, ("a", "c"), "classification", "test")
    with pytest.raises(
        IncompatibleModelsError, match=r"fitted on members \['mlp', 'logreg', 'forest'\] but got \['a', 'c'\]"
    ):
        fitted.predict_proba(other)
    with pytest.raises(UnknownNameError, match="unknown combiner 'avg'; valid names: geometric_mean, greedy_selection"):
        make_combiner("avg")
    with pytest.raises(ConfigError, match="combiner 'weighted': bad parameters {'shrinkge': 0.1}"):
        make_combiner("weighted", shrinkge=0.1)
    with pytest.raises(ConfigError, match="shrinkage must be in"):
        make_combiner("weighted", shrinkage=2).fit(val)
    with pytest.raises(ConfigError, match="got 2 weights for 3 members"):
        make_combiner("soft_vote", weights=[1, 2]).fit(val)
    with pytest.raises(InvalidInputError, match="have no labels to fit on"):
        Mean().fit(Predictions(val.outputs, None, val.member_names, val.task, "val"))
    with pytest.raises(InvalidInputError, match="predictions of no members"):
        Predictions(torch.zeros(0, 3, 2), None, (), "classification", "val")
    with pytest.raises(InvalidInputError, match="produced 1 NaN"):
        Predictions(torch.tensor([[[math.nan, 0.0]]]), None, ("a",), "classification", "val")


def test_choose_combiner_scores_each_candidate_on_held_out_validation_folds(digits_val_test):
    val, _ = digits_val_test
    choice = choose_combiner(val, ["mean", "hard_vote", "stacking"], folds=4, seed=0)
    assert set(choice.scores) == {"mean", "hard_vote", "stacking"} and choice.metric == "nll"
    # hard votes put probability near 0 on the true class when the vote is wrong: never the NLL choice
    assert choice.name != "hard_vote"
    assert choice.scores[choice.name]["nll"] == min(s["nll"] for s in choice.scores.values())
    assert choice.name in choice.reason() and "validation split only" in choice.reason()
    # the held-out score of a fitted combiner is worse than its in-sample score on the same samples
    stacker = make_combiner("stacking").fit(val)
    in_sample = float(torch.nn.functional.nll_loss(stacker.fuse(val).log(), val.labels))
    assert choice.scores["stacking"]["nll"] > in_sample
    # the same seed gives the same scores; "accuracy" ranks by accuracy
    assert choose_combiner(val, ["mean", "hard_vote", "stacking"], folds=4, seed=0).scores == choice.scores
    by_accuracy = choose_combiner(val, ["mean", "hard_vote"], metric="accuracy", folds=4)
    assert by_accuracy.scores[by_accuracy.name]["accuracy"] == max(s["accuracy"] for s in by_accuracy.scores.values())


def test_choose_combiner_by_nll_passes_over_vote_shares_that_win_only_on_an_easy_split():
    # every member right on every sample, none sure: hard votes are one-hot (NLL near 0) and would win by NLL
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    logits = torch.randn(3, 40, 2, generator=generator) * 0.1
    logits[:, torch.arange(40), labels] += 1.0
    val = Predictions(logits, labels, ("a", "b", "c"), "classification", "val")
    choice = choose_combiner(val, ["hard_vote", "mean", "weighted"], folds=4)
    assert choice.scores["hard_vote"]["nll"] < min(choice.scores[n]["nll"] for n in ("mean", "weighted"))
    assert choice.name != "hard_vote" and choice.not_eligible == ("hard_vote",)
    assert "not eligible by NLL" in choice.reason() and "hard_vote" in choice.reason()
    # by accuracy, or with nothing else to choose, vote shares compete
    assert choose_combiner(val, ["hard_vote"], folds=4).name == "hard_vote"
    assert choose_combiner(val, ["hard_vote", "mean"], metric="accuracy", folds=4).not_eligible == ()
    assert Voting(voting="hard").estimates_probabilities is False
    assert Voting(voting="soft").estimates_probabilities and make_combiner("mean").estimates_probabilities


def test_choose_combiner_refuses_test_predictions_and_bad_settings(digits_val_test, regression_val_test):
    val, test = digits_val_test
    with pytest.raises(LeakageError):
        choose_combiner(test, ["mean"])
    with pytest.raises(ConfigError, match="metric for classification must be one of"):
        choose_combiner(val, ["mean"], metric="mse")
    with pytest.raises(ConfigError, match="folds >= 2"):
        choose_combiner(val, ["mean"], folds=1)
    unlabelled = Predictions(val.outputs, None, val.member_names, val.task, "val", val.classes)
    with pytest.raises(InvalidInputError, match="no labels"):
        choose_combiner(unlabelled, ["mean"])
    reg_val, _ = regression_val_test
    assert choose_combiner(reg_val, ["mean", "median", "weighted"], folds=3).metric == "mse"
