"""The CLI over modelfusion.features and the align command: splice, finetune, cascade, each against its Python
equivalent on real models and files."""

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from modelfusion.cli import app
from modelfusion.compress import compress
from modelfusion.features import Cascade, spliced_member
from modelfusion.io import load_member, save_member
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.predictions import collect_predictions
from modelfusion.results import load_results

from .conftest import MLP_KWARGS, MLP_SPEC


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def _error(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


@pytest.fixture
def backbone(tmp_path, trained_mlp):
    member = TorchMember(trained_mlp, name="mlp", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)
    return save_member(member, tmp_path / "mlp.safetensors")


def test_splice_then_finetune_gives_files_that_load_back_as_the_api_makes_them(backbone, tmp_path, digits):
    spliced = tmp_path / "spliced.safetensors"
    printed = _run(["splice", str(backbone), "--at", "1", "--num-outputs", "10", "--out", str(spliced), "--seed", "3"])
    assert "a new 10-output head (330 parameters)" in printed
    loaded, original = load_member(spliced), load_member(backbone)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        expected = spliced_member(original, 10, at="1", example_input=digits.train.X[:2])
    assert loaded.factory == "spliced" and loaded.factory_kwargs["backbone_kwargs"] == MLP_KWARGS
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in expected.module.state_dict().items())

    tuned = tmp_path / "tuned.safetensors"
    args = ["finetune", str(spliced), "--schedule", "probe_then_finetune", "--epochs", "4", "--lr", "0.01"]
    printed = _run([*args, "--per-class", "5", "--out", str(tuned)])
    assert "fine-tuned on 50 samples" in printed and "linear probe" in printed and "test accuracy" in printed
    after = load_member(tuned)
    before = load_member(spliced)
    assert not torch.equal(after.module.head[1].weight, before.module.head[1].weight)
    assert after.predict(digits.test.X).shape == (len(digits.test), 10)


def test_splice_and_finetune_refuse_what_cannot_work(backbone, tmp_path, digits):
    out = str(tmp_path / "s.safetensors")
    assert "no module named '7'; its modules are: 0, 1, 2" in _error(
        ["splice", str(backbone), "--at", "7", "--num-outputs", "3", "--out", out]
    )
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    skops = save_member(SklearnMember(LogisticRegression(max_iter=200).fit(X, y)), tmp_path / "logreg.skops")
    assert "not a torch model" in _error(["splice", str(skops), "--at", "1", "--num-outputs", "3", "--out", out])
    _run(["splice", str(backbone), "--at", "1", "--num-outputs", "3", "--out", out])
    line = _error(["finetune", out, "--out", str(tmp_path / "t.safetensors")])
    assert "has 3 outputs but digits has 10 classes; splice it with --num-outputs 10" in line
    assert "the samples per class must be a whole number of at least 1" in _error(
        ["finetune", str(backbone), "--per-class", "0", "--head", "2", "--out", str(tmp_path / "t.safetensors")]
    )


def test_cascade_command_matches_the_api_and_writes_its_report(backbone, tmp_path, digits):
    few = digits.train.per_class(2, seed=0)  # a cheap, weaker first stage: 2 samples per class
    X, y = few.X.numpy(), few.y.numpy()
    logreg = save_member(SklearnMember(LogisticRegression(max_iter=500).fit(X, y), name="lr"), tmp_path / "lr.skops")
    report = tmp_path / "cascade.json"
    printed = _run(["cascade", str(logreg), str(backbone), "--costs", "1,20", "--json", str(report)])
    written = load_results(report)
    members = [load_member(logreg), load_member(backbone)]
    val = collect_predictions(members, digits.val.X, digits.val.y, "val", progress=False)
    fitted = Cascade(costs=[1, 20]).fit(val)
    run = fitted.predict(members, digits.test.X)
    cascade = written.candidate("cascade lr -> mlp")
    assert written.chosen.name == cascade.name and written.verdict.best_member == "mlp"
    assert cascade.details["thresholds"] == fitted.thresholds_ and cascade.test["accuracy"] == run.accuracy(
        digits.test.y
    )
    assert cascade.cost.per_sample == pytest.approx(run.mean_cost) and written.candidate("mlp").cost.per_sample == 20
    assert sum(cascade.details["decided_by_stage"]) == pytest.approx(1.0)
    assert 0 < fitted.thresholds_[0] < 1 and 0 < cascade.details["decided_by_stage"][1] < 1
    assert [point.model_dump() for point in written.curves.cascade[cascade.name]] == fitted.curve(val)
    assert "stage 0: lr (cost 1), threshold" in printed and "stage 1: mlp (cost 20), last" in printed
    assert "give a target accuracy or a cost budget, not both" in _error(
        ["cascade", str(logreg), str(backbone), "--target-accuracy", "0.9", "--budget", "3"]
    )
    assert "--costs must be comma-separated numbers" in _error(["cascade", str(logreg), str(backbone), "--costs", "a"])


def test_align_command_reports_the_api_midpoint_accuracies(tmp_path, digits):
    from modelfusion.align import align, midpoint_accuracy
    from modelfusion.models import mlp
    from modelfusion.training import train_model

    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = train_model(mlp(**MLP_KWARGS), digits.train, digits.val, epochs=3, seed=seed)
        member = TorchMember(model, name=f"m{seed}", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)
        files.append(save_member(member, tmp_path / f"m{seed}.safetensors"))
    printed = _run(["align", str(files[0]), str(files[1]), "--out", str(tmp_path / "aligned.safetensors")])
    models = [load_member(f).module for f in files]
    result = align(models, X=digits.train.X[:1024])
    naive, aligned = midpoint_accuracy(*models, digits.val), midpoint_accuracy(*result.models, digits.val)
    assert f"naive {naive:.3f}, aligned {aligned:.3f}" in printed


def test_compress_command_writes_the_model_and_its_before_after_report(backbone, tmp_path, digits):
    out = tmp_path / "small"
    printed = _run(["compress", str(backbone), "--method", "int4", "--group-size", "16", "--out", str(out)])
    assert "mlp, int4 *" in printed and "uncompressed" in printed and "latency at batch 256" in printed
    results = load_results(out / "results.json")
    before, after = results.candidate("mlp"), results.candidate("mlp, int4")
    assert after.cost.bytes < 0.2 * before.cost.bytes and results.config["params"] == {"group_size": 16}
    loaded = load_member(out / "mlp_int4.safetensors")
    expected = compress(load_member(backbone), method="int4", group_size=16).model(digits.test.X).detach()
    torch.testing.assert_close(loaded.predict(digits.test.X), expected)
    assert after.test["accuracy"] == pytest.approx(
        float((expected.argmax(1) == digits.test.y).float().mean()), abs=1e-6
    )
    assert results.chosen.name == after.name and results.verdict.baseline == "uncompressed model"
    assert "exists and is not empty; pass --overwrite" in _error(
        ["compress", str(backbone), "--method", "int4", "--out", str(out)]
    )
    assert "unknown compression method 'int3'" in _error(
        ["compress", str(backbone), "--method", "int3", "--out", str(tmp_path / "x")]
    )
    assert not (tmp_path / "x").exists()


def test_compress_prunes_units_recovers_and_compresses_an_ensemble_folder(backbone, tmp_path, digits):
    from modelfusion.ensemble import EnsembleModule, make_combiner
    from modelfusion.predictions import collect_predictions

    out = tmp_path / "pruned"
    printed = _run(
        ["compress", str(backbone), "--method", "prune-structured", "--amount", "0.5", "--recover-epochs", "2"]
        + ["--out", str(out)]
    )
    assert "after 2 recovery epochs" in printed and "than the uncompressed model, mlp" in printed
    results = load_results(out / "results.json")
    after = results.candidate("mlp, prune-structured")
    assert results.config["recover_epochs"] == 2 and 0 <= results.verdict.p_value <= 1
    assert after.cost.parameters < 0.6 * results.candidate("mlp").cost.parameters
    low, high = after.test["accuracy_ci"]
    assert low <= after.test["accuracy"] <= high and after.test["accuracy"] > 0.7
    assert load_member(out / "mlp_prune-structured.safetensors").module[0].out_features < 32

    member = load_member(backbone)
    val = collect_predictions([member], digits.val.X, digits.val.y, "val", progress=False)
    folder = EnsembleModule([member], make_combiner("mean").fit(val)).save(tmp_path / "ensemble")
    _run(["compress", str(folder), "--method", "int8", "--out", str(tmp_path / "small")])
    loaded = EnsembleModule.load(tmp_path / "small" / "ensemble_int8")
    assert torch.isfinite(loaded(digits.test.X)).all()
    results = load_results(tmp_path / "small" / "results.json")
    assert results.candidate("ensemble, int8").cost.bytes < 0.3 * results.candidate("ensemble").cost.bytes


def test_commands_given_another_datasets_inputs_fail_in_one_line_before_any_work(backbone, tmp_path, digits):
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    logreg = save_member(SklearnMember(LogisticRegression(max_iter=200).fit(X, y), name="lr"), tmp_path / "lr.skops")
    other = ["--dataset", "mnist1d"]
    assert "failed on the example input (" in _error(
        ["compress", str(backbone), "--method", "int4", *other, "--out", str(tmp_path / "c")]
    )
    assert "failed on the example input" in _error(
        ["finetune", str(backbone), *other, "--out", str(tmp_path / "t.safetensors")]
    )
    assert "cannot run on inputs of shape" in _error(["cascade", str(logreg), str(backbone), *other])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.skops", "mlp.safetensors"]
