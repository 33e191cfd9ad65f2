"""Your data, your models: recipes chosen by the data's shape, the default members of each kind, members trained
in parallel within a budget, the shared `--data` options of every command, and the preprocessing saved with a
model and applied again to new data by `predict --data`."""

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelfusion import ConfigError, DataError, MissingExtraError
from modelfusion.cli import app
from modelfusion.data_options import DataChoice
from modelfusion.datasets import Dataset, _raw, load_data, load_dataset, read_preparation
from modelfusion.estimators import ESTIMATORS, installed_boosters
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.predictions import Predictions
from modelfusion.training import (
    RECIPES,
    MemberPlan,
    TrainingRecipe,
    estimator_plan,
    member_plans,
    recipe_for,
    recipe_of,
    train_plans,
)

runner = CliRunner()


def _plan_names(plans):
    return [(p.name, p.recipe.name if p.recipe else None, p.seed) for p in plans]


@pytest.fixture(scope="module")
def signals(tmp_path_factory):
    """mnist1d saved to an .npz under another name, its official test set fixed as the test split."""
    raw = _raw("mnist1d")
    path = tmp_path_factory.mktemp("signals") / "signals.npz"
    np.savez(path, X=raw.X, y=raw.y, X_test=raw.X_test, y_test=raw.y_test)
    return path


def test_mnist1d_under_another_name_gets_the_cnn_recipe_and_matches_the_embedded_run(signals):
    mine, embedded = load_data(signals), load_dataset("mnist1d")
    assert mine.name == "signals" and mine.kind == "sequence"
    assert recipe_for(mine).name == "mnist1d-cnn" == recipe_for(embedded).name
    assert _plan_names(member_plans(mine, cnns=5)) == _plan_names(member_plans(embedded, cnns=5))
    # the same split, the same numbers, so the same CNN: two epochs of its recipe give the same weights
    short = RECIPES["mnist1d-cnn"]
    ours, theirs = short.train(mine, seed=3, epochs=2), short.train(embedded, seed=3, epochs=2)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_recipes_follow_the_shape_of_the_data_never_its_name(tmp_path):
    raw = _raw("digits")
    np.savez(tmp_path / "glyphs.npz", X=raw.X.reshape(-1, 8, 8), y=raw.y)
    glyphs = load_data(tmp_path / "glyphs.npz")
    assert glyphs.kind == "image" and recipe_for(glyphs).name == "digits-cnn"
    assert recipe_for(glyphs, "mlp").name == "digits-mlp"
    X = np.random.default_rng(0).normal(size=(300, 12))
    table = Dataset.from_arrays(X, (X[:, 0] > 0).astype(int), name="digits")  # a table named like an image set
    assert table.kind == "tabular" and recipe_for(table).name == "tabular-mlp"
    with pytest.raises(ConfigError, match="no CNN recipe for tabular"):
        recipe_for(table, "cnn")
    regression = Dataset.from_arrays(X, X[:, 0] * 2.5 + 0.1, task="regression")
    assert recipe_for(regression).name == "regression-mlp"
    # a CNN recipe named for other data is refused in one line
    with pytest.raises(ConfigError, match=r"needs images \[C, H, W\]; 'digits' is tabular"):
        member_plans(table, recipe="digits-cnn")


def test_the_tabular_mlp_is_a_strong_one_and_tables_get_boosted_trees():
    recipe = RECIPES["tabular-mlp"]
    assert recipe.architecture["norm"] == "batch" and recipe.architecture["dropout"] > 0
    assert recipe.cosine and recipe.patience is not None
    X = np.random.default_rng(0).normal(size=(200, 6))
    table = Dataset.from_arrays(X, (X[:, 0] + X[:, 1] > 0).astype(int))
    plans = member_plans(table, mlps=2)
    names = [p.name for p in plans]
    assert names[:5] == ["mlp_0", "mlp_1", "logreg", "random_forest", "hist_gradient_boosting"]
    assert names[5:] == installed_boosters()  # the optional boosters that are installed, and only those
    network = recipe.build(table, seed=0)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in network.modules())
    regression = Dataset.from_arrays(X, X[:, 0] * 3.0, task="regression")
    assert [p.name for p in member_plans(regression, mlps=1)] == [
        "mlp_0",
        "ridge",
        "random_forest",
        "hist_gradient_boosting",
        *installed_boosters(),
    ]
    # images and sequences keep the demo's members: no trees beyond the forest
    assert [p.name for p in member_plans(load_dataset("digits"))] == [
        "mlp_0",
        "mlp_1",
        "mlp_2",
        "cnn",
        "logreg",
        "random_forest",
    ]


def test_an_estimator_whose_extra_is_missing_is_named_with_its_extra():
    missing = [name for name in ("lightgbm", "xgboost", "catboost") if not ESTIMATORS[name].installed()]
    if not missing:
        pytest.skip("every optional booster is installed here")
    with pytest.raises(MissingExtraError, match=rf"pip install 'modelfusion\[{missing[0]}\]'"):
        estimator_plan(missing[0], "classification")
    result = runner.invoke(app, ["demo", "--dataset", "wine", "--estimator", missing[0], "--out", "x"])
    assert result.exit_code == 2 and f"modelfusion[{missing[0]}]" in result.output
    with pytest.raises(Exception, match="unknown estimator 'boosty'"):
        estimator_plan("boosty", "classification")


def test_text_data_trains_bag_of_words_estimators_and_no_network():
    texts = Dataset.from_arrays(np.array([f"word {i} and more words" for i in range(30)]), np.arange(30) % 2)
    assert texts.kind == "text"
    assert [p.name for p in member_plans(texts)] == ["tfidf_linear", "char_tfidf_linear", "tfidf_nb"]
    with pytest.raises(ConfigError, match="transformers folders"):
        member_plans(texts, recipe="mlp")
    with pytest.raises(ConfigError, match="no network recipe for text"):
        recipe_for(texts)


def test_the_recipe_of_a_model_is_found_by_its_architecture(signals):
    data = load_data(signals)
    cnn = RECIPES["mnist1d-cnn"]
    assert recipe_of("cnn1d", cnn.factory_kwargs(data), data).name == "mnist1d-cnn"
    assert recipe_of("mlp", RECIPES["mnist1d-mlp"].factory_kwargs(data), data).name == "mnist1d-mlp"
    assert recipe_of("mlp", {"in_features": 40, "num_outputs": 10, "hidden": [7]}, data).name == "mnist1d-mlp"
    assert recipe_of("torchvision.resnet18", {}, data).name == "mnist1d-cnn"  # by the data's shape
    X = np.random.default_rng(0).normal(size=(120, 5))
    table = Dataset.from_arrays(X, (X[:, 0] > 0).astype(int))
    assert recipe_of("mlp", RECIPES["digits-mlp"].factory_kwargs(table), table).name == "digits-mlp"


def _small_plans(data):
    quick = RECIPES["digits-mlp"]
    return [
        MemberPlan("mlp_a", quick, seed=1),
        estimator_plan("logreg", "classification"),
        MemberPlan("mlp_b", quick, seed=2),
    ]


def test_members_trained_in_parallel_processes_are_the_ones_trained_here():
    data = load_dataset("wine")
    lines = []
    here = train_plans(_small_plans(data), data, workers=1, epochs=3, log=lines.append)
    there = train_plans(_small_plans(data), data, workers=2, epochs=3, log=lines.append)
    assert [m.name for m in there] == ["mlp_a", "logreg", "mlp_b"]
    assert isinstance(there[0], TorchMember) and isinstance(there[1], SklearnMember)
    for ours, theirs in zip(here, there, strict=True):
        assert torch.allclose(ours.predict(data.test.X), theirs.predict(data.test.X), atol=1e-5)
    assert sum("(process)" in line for line in lines) == 3


@pytest.mark.slow
def test_a_member_that_would_not_finish_within_the_budget_is_skipped_and_logged():
    data = load_dataset("wine")
    slow = MemberPlan("slow", TrainingRecipe("slow", "mlp", {"hidden": [256, 256]}, epochs=10**6), seed=0)
    plans = [slow, estimator_plan("logreg", "classification")]
    lines = []
    # one process: the estimator, quick, trains before the network, whatever the order of the plans
    members = train_plans(plans, data, workers=1, deadline_s=90, log=lines.append)  # starting processes included
    assert [m.name for m in members] == ["logreg"]
    assert lines[0].startswith("  trained logreg in")
    assert any(line.startswith("  slow: skipped, still training") for line in lines)
    with pytest.raises(ConfigError, match="no member finished training within"):
        train_plans([slow], data, workers=1, deadline_s=0.5, log=lines.append)
    with pytest.raises(ConfigError, match="left no time to train members"):
        train_plans([slow], data, deadline_s=-3)


def test_a_training_error_in_a_process_is_raised_here():
    data = load_dataset("wine")
    diverging = MemberPlan("wild", TrainingRecipe("wild", "mlp", {"hidden": [8]}, lr=1e12))
    with pytest.raises(Exception, match="training diverged|wild"):
        train_plans([diverging, estimator_plan("logreg", "classification")], data, workers=2, epochs=3, log=print)


# -- the shared data options ----------------------------------------------------------------------------------
def _write_table(path, n=300, seed=0, labels=True, target="y"):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "b", "colour", *([target] if labels else [])])
        for i in range(n):
            a, b = rng.normal(), rng.normal()
            colour = rng.choice(["red", "green", "blue"])
            row = ["" if i % 13 == 0 else f"{a:.5f}", f"{b:.5f}", colour]
            label = "up" if a + 0.5 * b + (colour == "red") > 0.3 else "down"
            writer.writerow(row + ([label] if labels else []))
    return path


def test_data_choice_is_one_or_the_other_and_target_needs_a_file():
    with pytest.raises(ConfigError, match="give --dataset wine or --data x.csv, not both"):
        DataChoice(dataset="wine", data="x.csv")
    with pytest.raises(ConfigError, match="--target describes a --data file"):
        DataChoice(dataset="wine", target="y")
    assert DataChoice().load().name == "digits"
    with pytest.warns(DeprecationWarning, match="--dataset wine"):
        assert DataChoice(data="wine").load().name == "wine"  # merge-search's old --data NAME


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["auto"],
        ["predict", "m.safetensors"],
        ["ensemble", "m.safetensors"],
        ["distill", "--student", "mlp"],
        ["cascade", "m.safetensors"],
        ["compress", "m.safetensors", "--method", "int8", "--out", "c"],
        ["guard", "fit"],
        ["guard", "check", "g.safetensors"],
        ["guard", "clean", "--out", "c.json"],
        ["align", "a.safetensors", "b.safetensors", "--out", "a.safetensors"],
        ["splice", "m.safetensors", "--at", "1", "--num-outputs", "2", "--out", "s.safetensors"],
        ["finetune", "m.safetensors", "--out", "f.safetensors"],
        ["merge-search", "c.yaml", "--out", "c.yaml"],
    ],
)
def test_every_command_that_takes_a_dataset_takes_data_and_refuses_both_in_one_line(command):
    help_text = runner.invoke(app, [*command, "--help"]).output
    assert "--data " in help_text and "--dataset" in help_text and "--target" in help_text
    result = runner.invoke(app, [*command, "--dataset", "wine", "--data", "t.csv"])
    assert result.exit_code == 2
    assert result.output.startswith("error: give --dataset wine or --data t.csv, not both")
    assert len(result.output.strip().splitlines()) == 1


def test_predict_applies_the_saved_preprocessing_to_new_data(tmp_path):
    from modelfusion.io import save_member

    data = load_data(_write_table(tmp_path / "train.csv"), target="y", seed=0)
    plan = estimator_plan("hist_gradient_boosting", "classification")
    member = plan.train(data)
    save_member(member, tmp_path / "run" / "members" / "hgb")
    data.preparation().save(tmp_path / "run" / "preprocessing.json")
    assert read_preparation(tmp_path / "run" / "preprocessing.json").class_names == ("down", "up")

    new = _write_table(tmp_path / "new.csv", n=50, seed=9, labels=False)
    checkpoint = next((tmp_path / "run" / "members").iterdir())
    result = runner.invoke(
        app, ["predict", str(checkpoint), "--data", str(new), "--out", str(tmp_path / "p.safetensors")]
    )
    assert result.exit_code == 0, result.output
    assert "every row predicted" in result.output
    preds = Predictions.load(tmp_path / "p.safetensors")
    assert preds.num_samples == 50 and preds.labels is None and preds.split == "new"
    X, _ = read_preparation(tmp_path / "run" / "preprocessing.json").prepare(new)
    assert torch.allclose(preds.outputs[0], member.predict(X))
    # the same rows with their labels: scored against the classes in the training order
    labelled = _write_table(tmp_path / "labelled.csv", n=50, seed=9)
    result = runner.invoke(
        app, ["predict", str(checkpoint), "--data", str(labelled), "--out", str(tmp_path / "q.safetensors")]
    )
    assert result.exit_code == 0, result.output
    with_labels = Predictions.load(tmp_path / "q.safetensors")
    assert torch.equal(with_labels.outputs, preds.outputs) and with_labels.labels is not None
    # a split of the training file instead, and the refusals
    result = runner.invoke(
        app,
        ["predict", str(checkpoint), "--data", str(tmp_path / "train.csv"), "--target", "y", "--split", "val",
         "--out", str(tmp_path / "v.safetensors")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Predictions.load(tmp_path / "v.safetensors").num_samples == len(data.val)
    result = runner.invoke(
        app, ["predict", str(checkpoint), "--preprocessing", "p.json", "--out", str(tmp_path / "w.safetensors")]
    )
    assert result.exit_code == 2 and "--preprocessing prepares a --data file" in result.output


def test_a_damaged_preprocessing_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "preprocessing.json"
    for document in ("[]", "{}", json.dumps({"format": "modelfusion.preparation/1", "task": "x"})):
        path.write_text(document)
        with pytest.raises(DataError, match=str(path)):
            read_preparation(path)
    good = {"format": "modelfusion.preparation/1", "task": "classification", "class_names": ["a", "b"]}
    path.write_text(json.dumps({**good, "preprocessing": {"kind": "standardize", "shape": [-1]}}))
    with pytest.raises(DataError, match="field"):
        read_preparation(path)


@pytest.mark.slow
def test_auto_runs_end_to_end_on_a_csv_and_on_an_npz_and_predicts_new_rows(tmp_path):
    table = _write_table(tmp_path / "table.csv", n=400)
    out = tmp_path / "auto_csv"
    result = runner.invoke(
        app,
        ["auto", "--data", str(table), "--target", "y", "--out", str(out), "--budget", "10m", "--no-progress",
         "--no-report"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["dataset"]["name"] == "table"
    assert {"hist_gradient_boosting", "mlp_0"} <= set(results["config"]["members"])
    assert (out / "preprocessing.json").is_file()
    model = next(p for p in out.iterdir() if p.name.startswith("model"))
    new = _write_table(tmp_path / "new.csv", n=40, seed=5, labels=False)
    # a member file or, when auto chose an ensemble, its folder: either one predicts as one member
    args = ["predict", str(model), "--data", str(new), "--out", str(tmp_path / "p.safetensors")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Predictions.load(tmp_path / "p.safetensors").num_samples == 40

    X = np.random.default_rng(1).normal(size=(300, 8))
    np.savez(tmp_path / "mine.npz", X=X, y=(X[:, 0] - X[:, 1] > 0).astype(int))
    result = runner.invoke(
        app,
        ["auto", "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path / "auto_npz"), "--budget", "10m",
         "--no-progress", "--no-report"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "auto_npz" / "results.json").read_text())["chosen"]["name"]
