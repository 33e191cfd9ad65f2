"""The input guard: OOD scores, InputGuard on real members, label issues, serving with a guard, the CLI."""

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from modelfusion.cli import app
from modelfusion.datasets import Split, load_dataset
from modelfusion.ensemble import EnsembleModule, make_combiner
from modelfusion.errors import (
    CheckpointError,
    ConfigError,
    IncompatibleModelsError,
    InvalidInputError,
    NotFittedError,
    UnknownNameError,
)
from modelfusion.guard import (
    SCORES,
    GuardedModel,
    InputGuard,
    clean,
    confident_learning,
    feature_shuffled,
    find_label_issues,
    inject_label_noise,
    input_outliers,
)
from modelfusion.io import save_member
from modelfusion.predictions import Predictions, collect_predictions
from modelfusion.training import RECIPES


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def members(digits):
    recipe = RECIPES["digits-mlp"]
    return [recipe.member(recipe.train(digits, seed=i), digits, name=f"mlp{i}") for i in range(3)]


@pytest.fixture(scope="module")
def guard(digits, members):
    return InputGuard(members).fit(digits.train, digits.val)


def _auroc(inlier, shifted) -> float:
    return roc_auc_score(np.r_[np.zeros(len(inlier)), np.ones(len(shifted))], np.r_[inlier, shifted])


# -- scores ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCORES.names())
def test_every_score_gives_one_finite_number_per_sample(name):
    spec = SCORES[name]
    logits = torch.randn(3, 7, 4)
    if spec.needs == "logits":
        out = spec.score(logits, {})
    elif spec.needs in ("features", "inputs"):
        feats = [torch.randn(50, 5, dtype=torch.float64)]
        state = spec.fit(feats, torch.arange(50) % 4)
        assert spec.check(state, [5]) and not spec.check(state, [6])  # a state fits sources of its width only
        out = spec.score([feats[0][:7]], state)
    else:
        validation = {"energy": torch.randn(50, dtype=torch.float64), "mahalanobis": torch.rand(50).double()}
        out = spec.score({"energy": torch.randn(7), "mahalanobis": torch.rand(7) * 3}, spec.fit(validation))
    assert out.shape[0] == 7 and out.dtype == torch.float64 and bool(torch.isfinite(out).all())
    if spec.needs != "scores":  # a score of its own comes from a paper; `combined` only combines them
        assert "arxiv.org" in spec.reference and spec.reference.split(",")[0] in (spec.score.__doc__ or "")


def test_output_scores_match_their_definitions():
    confident = torch.tensor([[[20.0, 0.0, 0.0]]]).expand(2, 1, 3)  # two members, agreeing and sure
    split = torch.tensor([[[20.0, 0.0, 0.0]], [[0.0, 20.0, 0.0]]])  # two members, sure of different classes
    assert SCORES["max_softmax"].score(confident, {}).item() == pytest.approx(0, abs=1e-6)
    assert SCORES["max_softmax"].score(split, {}).item() == pytest.approx(0.5, abs=1e-6)
    assert SCORES["mutual_information"].score(confident, {}).item() == pytest.approx(0, abs=1e-6)
    assert SCORES["mutual_information"].score(split, {}).item() == pytest.approx(math.log(2), abs=1e-6)
    assert SCORES["entropy"].score(torch.zeros(1, 1, 4), {}).item() == pytest.approx(math.log(4))
    # energy of the mean logit: -logsumexp(0, 0, 0, 0) = -log 4, and the two split members cancel to 10, 10, 0
    assert SCORES["energy"].score(torch.zeros(2, 1, 4), {}).item() == pytest.approx(-math.log(4))
    assert SCORES["energy"].score(split, {}).item() == pytest.approx(-torch.logsumexp(torch.tensor([10.0, 10, 0]), 0))


def test_combined_is_the_largest_validation_percentile_of_its_scores():
    state = SCORES["combined"].fit({"a": torch.tensor([4.0, 1, 3, 2]), "b": torch.tensor([10.0, 20, 30, 40])})
    assert torch.equal(state["a"], torch.tensor([1.0, 2, 3, 4], dtype=torch.float64))
    # a: 2.5 is above half of its validation values, 0 above none, 9 above all, 4 above 3 and ties 1 (counted
    # half); b: 35 above 3 of 4, 5 above none
    values = {"a": torch.tensor([2.5, 0, 9, 4]), "b": torch.tensor([35.0, 5, 5, 5])}
    combined = SCORES["combined"].score(values, state)
    assert combined.dtype == torch.float64 and combined.tolist() == [0.75, 0.0, 1.0, 0.875]
    # a score constant on validation reads one half there, so a threshold set on validation stays below 1
    constant = SCORES["combined"].fit({"mi": torch.zeros(5)})
    assert SCORES["combined"].score({"mi": torch.tensor([0.0, 0.1])}, constant).tolist() == [0.5, 1.0]


def test_knn_is_the_distance_to_the_kth_nearest_normalized_training_sample():
    bank = torch.eye(3, dtype=torch.float64).repeat(400, 1)  # 1,200 samples on three directions: k = 1
    state = SCORES["knn"].fit([bank * 7], torch.zeros(1200, dtype=torch.long))  # lengths do not count
    probe = torch.tensor([[2.0, 0, 0], [1.0, 1.0, 0], [-1.0, 0, 0]], dtype=torch.float64)
    d = SCORES["knn"].score([probe], state)
    torch.testing.assert_close(d, torch.tensor([0.0, (2 - 2**0.5) ** 0.5, 2**0.5], dtype=torch.float64))
    assert state["0.bank"].dtype == torch.float32 and len(state["0.bank"]) == 1200


def test_mahalanobis_grows_away_from_the_class_means():
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(400, 3, generator=generator, dtype=torch.float64)
    labels = torch.arange(400) % 2
    feats[labels == 1] += 5
    state = SCORES["mahalanobis"].fit([feats], labels)
    probe = torch.tensor([[0.0, 0, 0], [5.0, 5, 5], [2.5, 2.5, 2.5], [20.0, -20, 0]], dtype=torch.float64)
    d = SCORES["mahalanobis"].score([probe], state)
    assert d[0] < 0.5 and d[1] < 0.5 and d[0] < d[2] < d[3]


# -- InputGuard --------------------------------------------------------------------------------------------
def test_guard_combines_every_score_by_default_and_sets_its_threshold_on_validation(digits, guard):
    assert set(guard.val_auroc_) == set(SCORES.names()) and guard.score_ == "combined"
    val_rejected = np.mean(guard.score(digits.val.X) > guard.threshold_)
    assert 0.02 <= val_rejected <= 0.05
    assert guard.input_shape_ == (64,)
    # the largest of each score's percentile among the validation samples' values of that score
    percentiles = []
    for n in SCORES.names():
        if n != "combined":
            reference, test = np.sort(guard.score(digits.val.X, name=n)), guard.score(digits.test.X, name=n)
            ranks = np.searchsorted(reference, test, side="left") + np.searchsorted(reference, test, side="right")
            percentiles.append(ranks / (2 * len(reference)))
    np.testing.assert_allclose(guard.score(digits.test.X), np.max(percentiles, axis=0))


def test_a_one_member_guard_still_rejects_its_share_of_validation(digits, members):
    # one member's mutual information is zero everywhere: it must not pin the threshold at the top
    guard = InputGuard(members[:1]).fit(digits.train, digits.val)
    assert guard.threshold_ < 1
    assert 0.02 <= np.mean(guard.score(digits.val.X) > guard.threshold_) <= 0.05
    shuffled = feature_shuffled(digits.test.X, seed=0)
    assert np.mean(guard.score(shuffled) > guard.threshold_) > 0.5


def test_no_score_is_chosen_on_proxy_outliers_which_are_reported_for_each_score(digits, members, guard):
    with pytest.raises(ConfigError, match="'auto' is no longer offered"):
        InputGuard(members, ood_score="auto").fit(digits.train, digits.val)
    assert all(set(aurocs) == {"feature-shuffled", "uniform", "noise"} for aurocs in guard.proxy_auroc_.values())
    assert all(guard.val_auroc_[n] == min(guard.proxy_auroc_[n].values()) for n in guard.val_auroc_)
    # why none is chosen there: energy ranks feature-shuffled digits well and noisy ones badly (the members
    # grow surer on noise), so a choice on the shuffled ones, as the former auto made, inverts on others
    assert guard.proxy_auroc_["energy"]["feature-shuffled"] > 0.9 > guard.proxy_auroc_["energy"]["noise"]


def test_input_scores_see_scaled_inputs_on_which_the_members_grow_surer(digits, guard):
    X = digits.test.X
    scaled = X * 3
    assert _auroc(guard.score(X, name="energy"), guard.score(scaled, name="energy")) < 0.5  # inverted
    for name in ("input_mahalanobis", "combined"):
        assert _auroc(guard.score(X, name=name), guard.score(scaled, name=name)) > 0.95


def test_guard_tells_shifted_inputs_from_test_inputs(digits, guard):
    X = digits.test.X
    inverted = digits.train.X.min(0).values + digits.train.X.max(0).values - X
    noisy = X + torch.randn(X.shape, generator=torch.Generator().manual_seed(1))
    assert _auroc(guard.score(X, name="mahalanobis"), guard.score(noisy, name="mahalanobis")) > 0.95
    assert _auroc(guard.score(X, name="mutual_information"), guard.score(inverted, name="mutual_information")) > 0.95
    # the default catches both kinds of shift, where each of those two scores alone misses one of them
    assert _auroc(guard.score(X), guard.score(noisy)) > 0.95 and _auroc(guard.score(X), guard.score(inverted)) > 0.95
    verdicts = guard.check(noisy)
    assert verdicts.ok.mean() < 0.5 < guard.check(X).ok.mean()


def test_rows_beyond_float32_or_with_unmeasurable_scores_are_rejected(digits, guard):
    X = digits.test.X[:3].double()
    X[1, 0] = 1e300  # finite in float64, inf once the guard casts to float32: rejected as non-finite
    X[2, :] = 3e38  # finite in float32, but the members' outputs overflow: no score may read NaN
    verdicts = guard.check(X)
    assert list(verdicts.rejected) == [1, 2] and math.isinf(verdicts.scores[1])
    for name in guard.val_auroc_:
        assert not np.isnan(guard.score(X, name=name)).any(), name
    with pytest.raises(InvalidInputError, match="no samples"):
        guard.check(digits.test.X[:0])


def test_members_whose_outputs_overflow_on_validation_are_one_clear_error(digits):
    overflowing = torch.nn.Linear(64, 10)
    with torch.no_grad():
        overflowing.weight.fill_(1e38)
    with pytest.raises(InvalidInputError, match="not finite on .* validation samples"):
        InputGuard([overflowing]).fit(digits.train, digits.val)


def test_check_gives_each_rejected_row_its_reason(digits, guard):
    X = digits.test.X[:4].clone()
    X[1, 5] = float("nan")
    X[2, 7] = 1e6
    X[3] = -X[3] * 8
    verdicts = guard.check(X)
    assert verdicts.ok[0] and not verdicts.ok[1:].any()
    assert verdicts.reasons[0] == ""
    assert "non-finite values (features 5)" in verdicts.reasons[1] and math.isinf(verdicts.scores[1])
    assert "outside the training range (features 7)" in verdicts.reasons[2]
    assert list(verdicts.rejected) == [1, 2, 3]
    assert verdicts.summary().startswith("3 of 4 rejected")


def test_wrong_width_dtype_or_order_is_one_clear_error(digits, members, guard):
    with pytest.raises(InvalidInputError, match=r"shape \(5, 63\).*\[N, 64\]"):
        guard.check(digits.test.X[:5, :63])
    with pytest.raises(InvalidInputError, match="dtype torch.int64"):
        guard.score(torch.ones(5, 64, dtype=torch.int64))
    with pytest.raises(NotFittedError):
        InputGuard(members).check(digits.test.X)
    with pytest.raises(UnknownNameError, match="mahalanobis"):
        InputGuard(members, ood_score="nope").fit(digits.train, digits.val)
    with pytest.raises(ConfigError, match="members"):
        InputGuard(None, ood_score="energy").fit(digits.train, digits.val)
    with pytest.raises(ConfigError, match="fpr"):
        InputGuard(members, fpr=1.5).fit(digits.train, digits.val)
    bad = Split("train", digits.train.X.clone(), digits.train.y)
    bad.X[3, 0] = float("inf")
    with pytest.raises(InvalidInputError, match="1 rows with NaN or inf"):
        InputGuard().fit(bad, digits.val)


def test_a_saved_guard_scores_the_same_and_refuses_other_members(tmp_path, digits, members, guard):
    path = guard.save(tmp_path / "g.safetensors")
    loaded = InputGuard.load(path, members=members)
    assert loaded.score_ == guard.score_ and loaded.threshold_ == guard.threshold_
    np.testing.assert_allclose(loaded.score(digits.test.X), guard.score(digits.test.X))
    assert (loaded.check(digits.test.X).ok == guard.check(digits.test.X).ok).all()
    with pytest.raises(IncompatibleModelsError, match="same members"):
        InputGuard.load(path, members=members[:2])
    with pytest.raises(IncompatibleModelsError):
        InputGuard.load(path)


def test_a_guard_file_with_tampered_percentile_references_is_refused(tmp_path, members, guard):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = guard.save(tmp_path / "g.safetensors")
    with safe_open(path, "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    for key, value, problem in [
        ("state.combined.energy", tensors["state.combined.energy"].flip(0), "sorted float64"),
        ("state.combined.energy", tensors["state.combined.energy"].float(), "sorted float64"),
        ("state.combined.exec", torch.zeros(3, dtype=torch.float64), "'exec', which is not a score to combine"),
        ("state.combined.combined", torch.zeros(3, dtype=torch.float64), "not a score to combine"),
        ("state.knn.0.bank", tensors["state.knn.0.bank"][:, :5].contiguous(), "knn statistics are missing"),
        ("state.input_mahalanobis.0.means", torch.zeros(10, 3, dtype=torch.float64), "input_mahalanobis statistics"),
    ]:
        save_file({**tensors, key: value}, tmp_path / "bad.safetensors", metadata=metadata)
        with pytest.raises(CheckpointError, match=problem):
            InputGuard.load(tmp_path / "bad.safetensors", members=members)
    description = json.loads(metadata["modelfusion.guard"])
    # a threshold too big for a float; an input shape the members cannot take (with ranges that match it)
    for changes, tensor_changes, error in [
        ({"threshold": 10**400}, {}, CheckpointError),
        ({"input_shape": [32]}, {"low": tensors["low"][:32], "high": tensors["high"][:32]}, IncompatibleModelsError),
    ]:
        tampered = {**metadata, "modelfusion.guard": json.dumps({**description, **changes})}
        save_file({**tensors, **tensor_changes}, tmp_path / "bad.safetensors", metadata=tampered)
        with pytest.raises(error) as caught:
            InputGuard.load(tmp_path / "bad.safetensors", members=members)
        assert "\n" not in str(caught.value)


def test_a_guard_without_members_screens_the_inputs_alone(tmp_path, digits):
    guard = InputGuard(seed=3).fit(digits.train)  # validation: a fifth of train, held out
    # the inputs are the features here: input_mahalanobis would be mahalanobis again
    assert guard.score_ == "combined" and set(guard.val_auroc_) == {"mahalanobis", "knn", "combined"}
    noisy = digits.test.X + torch.randn(digits.test.X.shape, generator=torch.Generator().manual_seed(0))
    assert _auroc(guard.score(digits.test.X), guard.score(noisy)) > 0.95
    loaded = InputGuard.load(guard.save(tmp_path / "g.safetensors"))
    np.testing.assert_allclose(loaded.score(noisy), guard.score(noisy))


def test_feature_shuffled_keeps_each_column_and_breaks_rows():
    X = torch.arange(40.0).reshape(10, 4)
    shuffled = feature_shuffled(X, seed=0)
    assert torch.equal(shuffled.sort(0).values, X)
    assert not torch.equal(shuffled, X)


# -- serving -----------------------------------------------------------------------------------------------
def test_ensemble_module_rejects_or_abstains_with_a_guard(digits, members, guard):
    val = collect_predictions(members, digits.val.X, digits.val.y, "val", progress=False)
    combiner = make_combiner("mean").fit(val)
    X = digits.test.X[:6].clone()
    X[2, 0] = float("nan")
    strict = EnsembleModule(members, combiner, guard=guard).eval()
    with pytest.raises(InvalidInputError, match="rejected 1 of 6 rows: row 2: non-finite"):
        strict(X)
    abstaining = EnsembleModule(members, combiner, guard=guard, on_reject="abstain").eval()
    out = abstaining(X)
    assert out[2].isnan().all() and not out[[0, 1, 3, 4, 5]].isnan().any()
    torch.testing.assert_close(out[:2], EnsembleModule(members, combiner).eval()(X[:2]))
    served = GuardedModel(members[0].module, guard, on_reject="abstain")
    assert served(X)[2].isnan().all()
    with pytest.raises(ConfigError, match="on_reject"):
        GuardedModel(members[0].module, guard, on_reject="ignore")


# -- label issues ------------------------------------------------------------------------------------------
def test_confident_learning_flags_what_cleanlab_flags_on_the_same_probabilities():
    # golden masks of cleanlab 2.9's find_label_issues (defaults), written by bench/cleanlab_golden.py: noisy
    # labels at 10% and 20%, probabilities with ties, a class with one sample and a class with none
    golden = np.load(Path(__file__).parent / "golden" / "cleanlab" / "label_issues.npz")
    cases = sorted({key.rsplit(".", 1)[0] for key in golden})
    assert len(cases) == 8
    for case in cases:
        ours = confident_learning(golden[f"{case}.probs"], golden[f"{case}.labels"])
        assert np.array_equal(ours, golden[f"{case}.cleanlab"]), case


def test_confident_learning_flags_confidently_contradicted_labels():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 100)
    probs = np.full((300, 3), 0.05)
    probs[np.arange(300), truth] = 0.9
    probs += rng.uniform(0, 0.02, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    labels = truth.copy()
    flipped = rng.choice(300, 30, replace=False)
    labels[flipped] = (labels[flipped] + 1) % 3
    assert set(np.flatnonzero(confident_learning(probs, labels))) == set(flipped)
    assert not confident_learning(probs, truth).any()


def test_inject_label_noise_flips_the_stated_share(digits):
    noisy, flipped = inject_label_noise(digits.train, 0.2, seed=4)
    assert len(flipped) == round(0.2 * len(digits.train))
    changed = np.flatnonzero(noisy.y.numpy() != digits.train.y.numpy())
    assert list(changed) == list(flipped)
    assert torch.equal(inject_label_noise(digits.train, 0.2, seed=4)[0].y, noisy.y)
    with pytest.raises(ConfigError):
        inject_label_noise(digits.train, 1.5)


def test_find_label_issues_recovers_injected_noise_and_clean_refits(digits):
    noisy, flipped = inject_label_noise(digits.train, 0.2, seed=0)
    data = dataclasses.replace(digits, train=noisy)
    issues = find_label_issues(data, recipe="digits-mlp", folds=3, seed=0)
    hits = len(np.intersect1d(issues.label_issues, flipped))
    assert hits / len(issues.label_issues) > 0.8 and hits / len(flipped) > 0.7
    assert set(issues.indices) == set(issues.label_issues) | set(issues.outliers)
    assert issues.oof.split == "train" and issues.oof.num_samples == len(noisy)
    again = find_label_issues(data, predictions=issues.oof)  # the same probabilities give the same issues
    assert np.array_equal(again.label_issues, issues.label_issues) and again.members is None
    with pytest.warns(DeprecationWarning, match="use recipe= .* or predictions="):  # the old spelling, either kind
        old = find_label_issues(data, members=issues.oof)
    assert np.array_equal(old.label_issues, issues.label_issues)
    dropped = clean(data, issues, recipe="digits-mlp", folds=3, seed=0, strategy="drop")
    assert len(dropped.data.train) == len(noisy) - len(issues.indices) and dropped.strategy == "drop"
    assert set(dropped.accuracy) == {"val", "test"} and dropped.accuracy["val"]["after"] > 0.9
    relabeled = clean(data, issues, recipe="digits-mlp", folds=3, seed=0, strategy="relabel")
    assert len(relabeled.data.train) == len(noisy) - len(issues.outliers)
    kept = np.setdiff1d(np.arange(len(noisy)), issues.outliers)
    truth = digits.train.y.numpy()[kept]
    # relabelling puts back most flipped labels: the relabelled split is closer to the truth than the noisy one
    assert (relabeled.data.train.y.numpy() != truth).sum() < 0.5 * (noisy.y.numpy()[kept] != truth).sum()
    with pytest.warns(DeprecationWarning, match="members= in find_label_issues and clean is deprecated"):
        chosen = clean(data, issues, members="digits-mlp", folds=3, seed=0)  # "auto": the better on validation
    assert set(chosen.candidates) == {"drop", "relabel"}
    assert chosen.candidates[chosen.strategy] == max(chosen.candidates.values())
    with pytest.raises(ConfigError, match="strategy must be one of drop, relabel, auto"):
        clean(data, issues, recipe="digits-mlp", strategy="burn")


def test_input_outliers_finds_planted_far_points(digits):
    X = digits.train.X.clone()
    X[[5, 50]] = 40.0
    assert {5, 50} <= set(np.flatnonzero(input_outliers(X)))
    assert input_outliers(X).mean() < 0.1


def test_find_label_issues_refuses_what_it_cannot_read(digits):
    with pytest.raises(InvalidInputError, match="regression"):
        find_label_issues(load_dataset("diabetes"))
    with pytest.raises(ConfigError, match="folds"):
        find_label_issues(digits, folds=1)
    with pytest.raises(ConfigError, match="argument .recipe. must be a TrainingRecipe or a str or None, got float"):
        find_label_issues(digits, recipe=3.5)
    with pytest.raises(ConfigError, match="argument .predictions. must be a Predictions or None, got function"):
        find_label_issues(digits, predictions=find_label_issues)
    out_of_fold = Predictions(
        outputs=torch.full((1, len(digits.train), 10), 0.1),
        labels=digits.train.y,
        member_names=["m"],
        task="classification",
        split="train",
    )
    with pytest.raises(ConfigError, match="not both"):
        find_label_issues(digits, recipe="digits-mlp", predictions=out_of_fold)


# -- CLI ---------------------------------------------------------------------------------------------------
def test_guard_cli_fit_check_clean(tmp_path, monkeypatch, digits, members):
    monkeypatch.chdir(tmp_path)
    paths = [str(save_member(m, tmp_path / f"{m.name}.safetensors")) for m in members]
    runner = CliRunner()
    fit = runner.invoke(app, ["guard", "fit", *paths, "--out", "g.safetensors"])
    assert fit.exit_code == 0, fit.output
    assert "score" in fit.output and "g.safetensors" in fit.output
    assert re.search(r"rejects \d+\.\d% of validation, asked 5\.0%", " ".join(fit.output.split())), fit.output
    again = runner.invoke(app, ["guard", "fit", *paths, "--out", "g.safetensors"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    X = digits.test.X[:5].numpy().copy()
    X[1, 2] = np.nan
    np.save(tmp_path / "x.npy", X)
    check = runner.invoke(app, ["guard", "check", "g.safetensors", *paths, "--inputs", "x.npy", "--json", "v.json"])
    assert check.exit_code == 0, check.output
    assert "row 1: non-finite values (features 2)" in check.output
    verdicts = json.loads((tmp_path / "v.json").read_text())
    assert verdicts["ok"][1] is False and verdicts["scores"][1] is None
    np.save(tmp_path / "empty.npy", X[:0])
    for argv, message in (
        (["guard", "check", "g.safetensors", *paths, "--inputs", "empty.npy"], "no samples"),
        (["guard", "check", "g.safetensors", paths[0], "--inputs", "x.npy"], "same members"),
        (["guard", "check", "g.safetensors", *paths, "--dataset", "mnist1d"], "shape"),
        (["guard", "check", "g.safetensors", *paths, "--inputs", "v.json"], ".npy"),
        (["guard", "fit", *paths, "--out", "h.safetensors", "--score", "nope"], "unknown"),
        (["guard", "clean", "--out", "c.txt"], ".json"),
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, argv
    (tmp_path / "pickle.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    )
    result = runner.invoke(app, ["guard", "check", "g.safetensors", *paths, "--inputs", "pickle.npy"])
    assert result.exit_code == 2, result.output
    cleaned = runner.invoke(
        app, ["guard", "clean", "--out", "c.json", "--recipe", "digits-mlp", "--folds", "2", "--noise", "0.1"]
    )
    assert cleaned.exit_code == 0, cleaned.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["injected"]["found"] > 0.5 * len(report["injected"]["flipped"])
