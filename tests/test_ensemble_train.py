import dataclasses

import numpy as np
import pytest
import torch

from modelfusion import ConfigError
from modelfusion.datasets import load_dataset
from modelfusion.ensemble import MeanOfModels, make_combiner, train_members
from modelfusion.io import load_member, save_member
from modelfusion.predictions import collect_predictions
from modelfusion.training import RECIPES, recipe_for, score_classifier


@pytest.fixture(scope="module")
def quick_recipe(digits):
    """The digits MLP recipe cut to 3 epochs: enough to tell members apart, fast enough for every method."""
    return dataclasses.replace(recipe_for(digits, "mlp"), epochs=3)


def _weights(member):
    return torch.cat([p.detach().flatten() for p in member.module.state_dict().values() if p.is_floating_point()])


def test_recipe_for_picks_each_kinds_recipe(digits):
    assert recipe_for(digits).name == "digits-cnn"
    assert recipe_for(digits, "mlp").name == "digits-mlp"
    assert recipe_for(load_dataset("mnist1d")).name == "mnist1d-cnn"
    assert recipe_for(load_dataset("wine")).name == "tabular-mlp"
    assert recipe_for(load_dataset("diabetes")).name == "regression-mlp"
    with pytest.raises(ConfigError, match=r"no CNN recipe for tabular data \('wine'\)"):
        recipe_for(load_dataset("wine"), "cnn")
    with pytest.raises(ConfigError, match=r"needs sequences \[C, L\]; 'digits' is image data"):
        RECIPES["mnist1d-cnn"].factory_kwargs(digits)


# Each method trains six members twice (about 20 CPU-seconds): bagging in the quick suite, the rest in `make test`.
@pytest.mark.parametrize(
    "method", ["bagging", *(pytest.param(m, marks=pytest.mark.slow) for m in ("seeds", "kfold", "snapshot", "swa"))]
)
def test_every_method_trains_distinct_reproducible_members(method, quick_recipe, digits, tmp_path):
    params = {"cycle_epochs": 2} if method == "snapshot" else {}
    torch.manual_seed(123)
    first = train_members(quick_recipe, digits, method=method, n=3, seed=4, **params)
    state = torch.random.get_rng_state()
    again = train_members(quick_recipe, digits, method=method, n=3, seed=4, **params)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is left alone
    assert [m.name for m in first.members] == [f"digits-mlp_{method}_{i}" for i in range(3)]
    for a, b in zip(first.members, again.members, strict=True):
        assert torch.equal(_weights(a), _weights(b))
    assert not torch.equal(_weights(first.members[0]), _weights(first.members[1]))
    for member in first.members:
        assert score_classifier(member.module, digits.test)["accuracy"] > 0.7  # chance: 0.1

    # members go through the rest of the pipeline: saved with their factory and read back without flags
    path = save_member(first.members[0], tmp_path / "member")
    reloaded = load_member(path)
    assert torch.equal(reloaded.predict(digits.test.X), first.members[0].predict(digits.test.X))


def test_kfold_out_of_fold_outputs_come_from_the_member_that_never_saw_the_sample(quick_recipe, digits):
    trained = train_members(quick_recipe, digits, method="kfold", n=4, seed=0)
    oof = trained.oof
    assert oof.split == "train" and oof.outputs.shape == (1, len(digits.train), 10)
    assert torch.equal(oof.labels, digits.train.y)
    # each training sample's out-of-fold row equals exactly one member's output: the one that held it out
    per_member = torch.stack([m.predict(digits.train.X) for m in trained.members])  # [4, N, C]
    matches = (per_member - oof.outputs).abs().amax(dim=-1) < 1e-5  # [4, N]
    assert torch.equal(matches.sum(0), torch.ones(len(digits.train), dtype=torch.long))
    held_out_sizes = matches.sum(1)
    assert held_out_sizes.sum() == len(digits.train) and held_out_sizes.min() >= len(digits.train) // 4 - 1
    # and a member scores worse on the samples it held out than on those it trained on
    member_accuracy = (per_member.argmax(-1) == digits.train.y).float()
    assert (member_accuracy[matches].mean() < member_accuracy[~matches].mean()).item()


def test_a_stacker_fitted_on_out_of_fold_outputs_predicts_the_bag_on_test(quick_recipe, digits):
    trained = train_members(quick_recipe, digits, method="kfold", n=3, seed=0)
    bag = trained.bag()
    assert isinstance(bag.module, MeanOfModels) and bag.name == trained.oof.member_names[0]
    stacker = make_combiner("stacking").fit(trained.oof)
    test = collect_predictions([bag], digits.test.X, digits.test.y, "test", progress=False)
    accuracy = (stacker.predict(test) == digits.test.y).float().mean().item()
    assert accuracy > 0.85
    # the bag is the mean of its members' probabilities
    probabilities = torch.stack([torch.softmax(m.predict(digits.test.X), -1) for m in trained.members]).mean(0)
    np.testing.assert_allclose(torch.softmax(bag.predict(digits.test.X), -1), probabilities, atol=1e-5)


def test_bad_parameters_are_one_clear_error(quick_recipe, digits):
    with pytest.raises(ConfigError, match="kfold needs n >= 2"):
        train_members(quick_recipe, digits, method="kfold", n=1)
    with pytest.raises(ConfigError, match="method 'seeds' got bad parameters \\['cycle_epochs'\\]"):
        train_members(quick_recipe, digits, method="seeds", n=2, cycle_epochs=3)
    # zero is refused, not read as "the default"
    with pytest.raises(ConfigError, match="cycle_epochs"):
        train_members(quick_recipe, digits, method="snapshot", n=2, cycle_epochs=0)
    with pytest.raises(ConfigError, match="swa_lr"):
        train_members(quick_recipe, digits, method="swa", n=1, swa_lr=0.0)
    with pytest.raises(Exception, match="unknown training-time ensemble method 'boosting'"):
        train_members(quick_recipe, digits, method="boosting")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "dataset", "seeds", "target"),
    [
        ("mnist1d-cnn", "mnist1d", (0, 1), 0.93),
        ("mnist1d-mlp", "mnist1d", (0,), 0.66),
        ("digits-cnn", "digits", (0, 1, 2), 0.985),
    ],
)
def test_recipes_reach_the_published_accuracy(name, dataset, seeds, target):
    accuracies = []
    for seed in seeds:
        data = load_dataset(dataset, seed=seed)
        model = RECIPES[name].train(data, seed=seed)
        accuracies.append(score_classifier(model, data.test)["accuracy"])
    assert np.mean(accuracies) >= target, accuracies


def test_train_model_with_mixup_is_seeded_and_refused_for_regression(digits):
    from modelfusion.models import mlp
    from modelfusion.training import train_model

    def trained(mixup, seed=0):
        torch.manual_seed(0)
        return train_model(mlp(64, 10, hidden=[32]), digits.train, digits.val, epochs=2, seed=seed, mixup=mixup)

    plain, mixed, again = trained(0.0), trained(0.4), trained(0.4)
    assert all(torch.equal(a, b) for a, b in zip(mixed.state_dict().values(), again.state_dict().values(), strict=True))
    assert not torch.equal(plain.state_dict()["0.weight"], mixed.state_dict()["0.weight"])
    assert not torch.equal(trained(0.4, seed=1).state_dict()["0.weight"], mixed.state_dict()["0.weight"])
    assert score_classifier(mixed, digits.test)["accuracy"] > 0.5  # 2 epochs; chance is 0.1
    diabetes = load_dataset("diabetes")
    with pytest.raises(ConfigError, match="mixup mixes labels of a classification task"):
        train_model(mlp(10, 1), diabetes.train, diabetes.val, task="regression", epochs=1, mixup=0.4)
