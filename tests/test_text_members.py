"""Texts get members too: a table whose only feature is free text trains the bag-of-words estimators (TF-IDF of
words and of characters with linear models, naive Bayes), which take strings, fuse, and save as skops files
that load back through the allowlist, while a vectorizer holding a callable stays refused."""

import csv
import html
import json
import shlex

import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from typer.testing import CliRunner

from modelfusion import CheckpointError, ConfigError, InvalidInputError
from modelfusion.auto import auto, load_fusion
from modelfusion.cli import app
from modelfusion.datasets import Dataset, load_data, load_dataset
from modelfusion.ensemble import make_combiner
from modelfusion.ensemble.fusion import save_fusion
from modelfusion.estimators import ESTIMATORS, estimators_for
from modelfusion.io import load_member, save_member
from modelfusion.members import SklearnMember
from modelfusion.predictions import collect_predictions
from modelfusion.texts import Texts
from modelfusion.training import MemberPlan, member_plans, recipe_for

TOPICS = {
    "sport": "goal match team coach league score player season".split(),
    "cooking": "recipe oven flour butter sauce garlic simmer dough".split(),
    "computing": "compiler kernel server cache thread python memory bug".split(),
}
FILLER = "the a was and it with this that we they on for about in very today really".split()


def _write_posts(path, count: int, seed: int) -> None:
    """Posts of 8 filler words, 1 word of their topic (2 in half the posts) and, half the time, 1 word of
    another topic: learnable (the Bayes rate is far above chance, 1/3) but not separable."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["post", "topic"])
        for i in range(count):
            topic = names[i % 3]
            words = [*rng.choice(FILLER, 8), *rng.choice(TOPICS[topic], 1 + int(rng.random() < 0.5))]
            if rng.random() < 0.5:
                words.append(rng.choice(TOPICS[names[(i + 1 + int(rng.integers(2))) % 3]]))
            rng.shuffle(words)
            writer.writerow([" ".join(words), topic])


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "posts.csv"
    _write_posts(path, 360, seed=0)
    return path


@pytest.fixture(scope="module")
def data(posts):
    return load_data(posts, target="topic")


@pytest.fixture(scope="module")
def members(data):
    return [plan.train(data) for plan in member_plans(data)]


def _accuracy(proba: torch.Tensor, y: torch.Tensor) -> float:
    return float((proba.argmax(1) == y).double().mean())


def test_texts_get_the_bag_of_words_estimators_and_no_network(data):
    assert data.kind == "text"
    plans = member_plans(data)
    assert [p.name for p in plans] == ["tfidf_linear", "char_tfidf_linear", "tfidf_nb"]
    assert all(isinstance(p, MemberPlan) and p.recipe is None and p.estimator is not None for p in plans)
    assert all(ESTIMATORS[p.name].takes_text for p in plans)
    assert estimators_for("regression", texts=True) == ["tfidf_linear", "char_tfidf_linear"]  # no naive Bayes
    assert "logreg" in estimators_for("classification", texts=False)
    assert "tfidf_linear" not in estimators_for("classification", texts=False)
    with pytest.raises(ConfigError, match="no network recipe trains on them"):
        member_plans(data, recipe="mlp")
    with pytest.raises(ConfigError, match="no network recipe for text"):
        recipe_for(data)
    assert [p.name for p in member_plans(data, estimators=["tfidf_nb"])] == ["tfidf_nb"]


def test_an_estimator_for_the_other_kind_of_input_is_refused_in_one_line(data):
    with pytest.raises(ConfigError, match="'logreg' takes numbers and this data holds texts; choose among tfidf"):
        member_plans(data, estimators=["logreg"])
    with pytest.raises(ConfigError, match="'tfidf_linear' takes texts and this data holds numbers; choose among"):
        member_plans(load_dataset("wine"), estimators=["tfidf_linear"])


def test_each_text_member_takes_strings_and_beats_chance(data, members):
    for member in members:
        assert isinstance(member, SklearnMember) and member.classes == (0, 1, 2)  # class indices, as every member
        logits = member.predict(data.test.X)
        assert logits.shape == (len(data.test), 3)
        # a list of strings is the same as Texts, and the logits are log(predict_proba)
        assert torch.equal(member.predict(list(data.test.X)), logits)
        proba = member.estimator.predict_proba(list(data.test.X))
        np.testing.assert_allclose(torch.softmax(logits.double(), 1).numpy(), proba, atol=1e-6)
        assert _accuracy(logits, data.test.y) > 0.6, member.name  # chance: 1/3
    outputs = collect_predictions(members, data.val.X, data.val.y, "val", batch_size=7, progress=False).outputs
    assert outputs.shape == (3, len(data.val), 3)
    assert torch.allclose(outputs[0], members[0].predict(data.val.X))  # batched as one call gives


def test_a_member_given_the_other_kind_of_input_says_so_in_one_line(data, members):
    digits = load_dataset("digits")
    with pytest.raises(InvalidInputError, match=r"'tfidf_linear' takes texts, got numbers of shape \[5, 64\]"):
        collect_predictions(members[:1], digits.test.X[:5], progress=False)
    linear = SklearnMember(LogisticRegression().fit(digits.train.X.numpy(), digits.train.y.numpy()), name="digits")
    assert not linear.takes_text and members[0].takes_text
    with pytest.raises(InvalidInputError, match="'digits' takes numbers, got texts"):
        collect_predictions([linear], data.test.X, progress=False)


def test_regression_on_texts_trains_ridge_pipelines():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4, 120)
    texts = np.array([" ".join(["good"] * int(c) + list(rng.choice(FILLER, 5))) for c in counts])
    data = Dataset.from_arrays(texts, counts.astype(np.float64) + rng.normal(0, 0.1, 120), task="regression")
    members = [plan.train(data) for plan in member_plans(data)]
    assert [m.name for m in members] == ["tfidf_linear", "char_tfidf_linear"]
    for member in members:
        predicted = member.predict(data.test.X)
        assert predicted.shape == (len(data.test),)
        assert np.corrcoef(predicted.numpy(), data.test.y.numpy())[0, 1] > 0.8, member.name


def test_text_members_and_their_fusion_save_and_load_back_through_the_allowlist(data, members, tmp_path):
    for member in members:
        path = save_member(member, tmp_path / member.name)
        assert path.suffix == ".skops"
        again = load_member(path)  # the allowlist, no trusted types
        assert torch.equal(again.predict(data.test.X), member.predict(data.test.X))
    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)
    combiner = make_combiner("weighted").fit(val)
    folder = save_fusion(members, combiner, tmp_path / "fusion")
    loaded, loaded_combiner = load_fusion(folder)
    assert [m.name for m in loaded] == [m.name for m in members]
    test, test_again = (collect_predictions(m, data.test.X, progress=False) for m in (members, loaded))
    assert torch.equal(loaded_combiner.predict_proba(test_again), combiner.predict_proba(test))


@pytest.mark.parametrize(
    ("keyword", "function", "shown"),
    [
        ("tokenizer", shlex.split, "function reference shlex.split"),
        ("analyzer", shlex.split, "function reference shlex.split"),
        ("preprocessor", html.unescape, "function reference html.unescape"),
        ("tokenizer", str.split, "builtins.method_descriptor"),
    ],
)
def test_a_vectorizer_holding_a_callable_is_still_refused(tmp_path, keyword, function, shown):
    texts = ["a fine film", "a dull plot", "fine acting", "dull and long"]
    unused = {"token_pattern": None} if keyword == "tokenizer" else {}  # silences scikit-learn's warning
    vectorizer = TfidfVectorizer(**{keyword: function}, **unused)
    pipeline = Pipeline([("tfidf", vectorizer), ("model", LogisticRegression())]).fit(texts, [1, 0, 1, 0])
    path = tmp_path / "callable.skops"
    sio.dump(pipeline, path)
    with pytest.raises(CheckpointError, match=rf"callable.skops holds what a skops file may not \({shown}\)"):
        load_member(path)
    if shown.startswith("function reference"):  # (skops itself cannot rebuild a method descriptor)
        trusted = load_member(path, trust_code=True)  # the caller's word, as for pickles
        assert trusted.predict(Texts(texts)).shape == (4, 2)


def test_auto_on_texts_trains_fuses_and_exports_what_loads_back(data, tmp_path):
    out = tmp_path / "auto"
    result = auto(None, data, workers=1, out=out, report=False, progress=False, log=lambda line: None)
    names = [c.name for c in result.candidates]
    assert names[:3] == ["tfidf_linear", "char_tfidf_linear", "tfidf_nb"]
    assert {c.family for c in result.candidates} >= {"member", "output", "cascade"}
    skipped = {s.family: s.reason for s in result.skipped}
    assert set(skipped) == {"merge", "distill", "compress"}  # no torch network among the members
    assert "no network recipe for text" in skipped["distill"]
    chosen = result.results.chosen
    assert chosen.test["accuracy"] > 0.6  # chance: 1/3
    path = out / "model" if (out / "model").is_dir() else next(out.glob("model.*"))
    assert chosen.path == str(path)
    if path.is_dir():  # an output fusion: the members' skops files and the combiner
        members, combiner = load_fusion(path)
        proba = combiner.predict_proba(collect_predictions(members, data.test.X, progress=False))
    else:
        proba = torch.softmax(load_member(path).predict(data.test.X), 1)
    assert _accuracy(proba, data.test.y) == pytest.approx(chosen.test["accuracy"])


def test_the_auto_command_trains_text_members_from_a_csv(posts, tmp_path):
    out = tmp_path / "cli"
    args = ["auto", "--data", str(posts), "--target", "topic", "--out", str(out), "--workers", "1"]
    result = CliRunner().invoke(app, [*args, "--no-report", "--no-progress"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["members"] == ["tfidf_linear", "char_tfidf_linear", "tfidf_nb"]
    assert results["chosen"]["test"]["accuracy"] > 0.6
    failed = CliRunner().invoke(app, [*args, "--overwrite", "--recipe", "mlp"])
    assert failed.exit_code == 2 and "no network recipe trains on them" in failed.output
