import pytest
import torch

from modelfusion import IncompatibleModelsError, InvalidInputError, NotFittedError
from modelfusion.ensemble import EnsembleModule, combiners_for, load_combiner, make_combiner, save_combiner
from modelfusion.io.factory import build_model
from modelfusion.members import TorchMember
from modelfusion.predictions import Predictions, collect_predictions
from modelfusion.training import train_model

from .conftest import MLP_KWARGS, MLP_SPEC


@pytest.fixture(scope="module")
def mlp_members(digits):
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = train_model(build_model(MLP_SPEC, MLP_KWARGS), digits.train, digits.val, epochs=3, seed=seed)
        members.append(TorchMember(model, name=f"mlp{seed}", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS))
    return members


@pytest.fixture(scope="module")
def mlp_preds(mlp_members, digits):
    val = collect_predictions(mlp_members, digits.val.X, digits.val.y, "val", progress=False)
    test = collect_predictions(mlp_members, digits.test.X, digits.test.y, "test", progress=False)
    return val, test


@pytest.mark.parametrize("name", combiners_for("classification"))
def test_module_output_equals_the_combiner(name, mlp_members, mlp_preds, digits):
    val, test = mlp_preds
    combiner = make_combiner(name).fit(val)
    module = EnsembleModule(mlp_members, combiner).eval()
    with torch.no_grad():
        fused = torch.softmax(module(digits.test.X), dim=1)
    torch.testing.assert_close(fused, combiner.predict_proba(test), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["weighted", "stacking", "temperature", "hard_vote", "mean_logit"])
def test_save_load_and_export(name, tmp_path, mlp_members, mlp_preds, digits):
    val, _ = mlp_preds
    module = EnsembleModule(mlp_members, make_combiner(name).fit(val)).eval()
    with torch.no_grad():
        expected = module(digits.test.X)
    path = module.save(tmp_path / "served")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no temporary folder left
    loaded = EnsembleModule.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(digits.test.X), expected)
    program = torch.export.export(module, (digits.test.X[:8],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.testing.assert_close(program.module()(digits.test.X), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["weighted", "greedy_selection"])
def test_a_fusion_that_fell_back_serves_its_member(name, mlp_members, mlp_preds, digits):
    """One-hot weights are weights: the module serves (and exports as) the member the combiner fell back to."""
    val, _ = mlp_preds
    # Validation outputs under the members' names: mlp0 always right but underconfident (logit 0.5 on the
    # label), mlp1 and mlp2 confident and wrong on every fifth sample. The NLL fit leans on mlp1 and mlp2, so
    # the fusion is 80% accurate and the fallback picks mlp0 (100%).
    labels = val.labels
    wrong = torch.where(torch.arange(len(labels)) % 5 == 0, (labels + 1) % 10, labels)
    outputs = torch.stack([0.5 * _one_hot(labels), 5.0 * _one_hot(wrong), 5.0 * _one_hot(wrong)])
    crafted = Predictions(outputs, labels, val.member_names, "classification", "val", val.classes)
    combiner = make_combiner(name).fit(crafted)
    assert combiner.choice_ == "mlp0" and combiner.weights_.tolist() == [1.0, 0.0, 0.0]
    module = EnsembleModule(mlp_members, combiner).eval()
    with torch.no_grad():
        expected = torch.log_softmax(mlp_members[0].module(digits.test.X), dim=1)
        torch.testing.assert_close(module(digits.test.X), expected, atol=1e-5, rtol=1e-5)
    program = torch.export.export(module, (digits.test.X[:8],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.testing.assert_close(program.module()(digits.test.X), expected, atol=1e-5, rtol=1e-5)


def _one_hot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 10).float()


def test_combiner_file_round_trip(tmp_path, mlp_preds):
    val, test = mlp_preds
    for name in combiners_for("classification"):
        combiner = make_combiner(name).fit(val)
        loaded = load_combiner(save_combiner(combiner, tmp_path / f"{name}.safetensors"))
        assert torch.equal(loaded.fuse(test), combiner.fuse(test)), name
        assert loaded.get_params() == combiner.get_params()
        assert loaded.fitted_state().keys() == combiner.fitted_state().keys(), name  # choice_, overconfident_, ...


def test_vectorized_forward_equals_the_loop(mlp_members, mlp_preds, digits):
    combiner = make_combiner("mean").fit(mlp_preds[0])
    loop = EnsembleModule(mlp_members, combiner, vectorize=False).eval()
    vmapped = EnsembleModule(mlp_members, combiner, vectorize=True).eval()
    assert vmapped.vectorize and not loop.vectorize
    with torch.no_grad():
        torch.testing.assert_close(vmapped.member_outputs(digits.test.X), loop.member_outputs(digits.test.X))


def test_regression_module(tmp_path, digits):
    from modelfusion.datasets import load_dataset

    data = load_dataset("diabetes")
    kwargs = {"in_features": 10, "num_outputs": 1, "hidden": [16], "target_mean": 150.0, "target_std": 75.0}
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        model = train_model(build_model(MLP_SPEC, kwargs), data.train, data.val, task="regression", epochs=5, seed=seed)
        members.append(TorchMember(model, name=f"r{seed}", task="regression", factory=MLP_SPEC, factory_kwargs=kwargs))
    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)
    test = collect_predictions(members, data.test.X, data.test.y, "test", progress=False)
    combiner = make_combiner("weighted").fit(val)
    module = EnsembleModule(members, combiner).eval()
    with torch.no_grad():
        torch.testing.assert_close(module(data.test.X), combiner.predict(test))
        torch.testing.assert_close(
            EnsembleModule.load(module.save(tmp_path / "r"))(data.test.X), combiner.predict(test)
        )


def test_module_errors(mlp_members, mlp_preds, digits_members, tmp_path):
    val, _ = mlp_preds
    with pytest.raises(NotFittedError, match="fit it before"):
        EnsembleModule(mlp_members, make_combiner("mean"))
    combiner = make_combiner("mean").fit(val)
    with pytest.raises(IncompatibleModelsError, match="got 2 members but the combiner was fitted on 3"):
        EnsembleModule(mlp_members[:2], combiner)
    with pytest.raises(InvalidInputError, match="torch members only, got SklearnMember"):
        EnsembleModule([*mlp_members[:2], digits_members[1]], combiner)
    bare = EnsembleModule([m.module for m in mlp_members], combiner)
    with pytest.raises(InvalidInputError, match=r"cannot save members \['mlp0', 'mlp1', 'mlp2'\]"):
        bare.save(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    mixed = [mlp_members[0], mlp_members[1], build_model(MLP_SPEC, {**MLP_KWARGS, "hidden": [16]})]
    with pytest.raises(IncompatibleModelsError, match="vectorize=True needs members of one architecture"):
        EnsembleModule(mixed, combiner, vectorize=True)


@pytest.mark.parametrize("method", ["int8", "prune-structured"])
def test_an_ensemble_compresses_member_by_member_and_reloads(method, tmp_path, mlp_members, mlp_preds, digits):
    from modelfusion.compress import compress

    module = EnsembleModule(mlp_members, make_combiner("weighted").fit(mlp_preds[0])).eval()
    result = compress(
        module, method=method, X=digits.train.X, **({"amount": 0.25} if method.startswith("prune") else {})
    )
    fp32_bytes = sum(t.nbytes for m in mlp_members for t in m.module.state_dict().values())
    assert result.size_bytes < (0.3 if method == "int8" else 0.8) * fp32_bytes
    assert len(result.members) == 3 and result.model.combiner is module.combiner
    with torch.no_grad():  # members of 3 epochs have thin margins: compare accuracy, not agreement
        accuracy = [(m(digits.test.X).argmax(1) == digits.test.y).float().mean() for m in (module, result.model)]
    assert accuracy[1] >= accuracy[0] - (0.02 if method == "int8" else 0.1)
    loaded = EnsembleModule.load(result.save(tmp_path / "small"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(digits.test.X), result.model(digits.test.X))
