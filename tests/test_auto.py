"""modelfusion auto: every family tried on real members, the choice made on validation only, the chosen model
exported and read back, results the report reads, and the command's errors."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from modelfusion import CheckpointError, ConfigError
from modelfusion.auto import FAMILIES, Candidate, auto, load_fusion, save_fusion
from modelfusion.cli import app
from modelfusion.datasets import load_dataset
from modelfusion.ensemble import EnsembleModule, is_fusion_folder, load_fusion_member, make_combiner, save_combiner
from modelfusion.io import load_member, save_member
from modelfusion.io.factory import build_model
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.predictions import Predictions, collect_predictions
from modelfusion.results import load_results
from modelfusion.training import train_model

from .conftest import MLP_KWARGS, MLP_SPEC


@pytest.fixture(scope="module")
def members(digits):
    """Two MLPs of one architecture trained apart, and a logistic regression."""
    mlps = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = train_model(build_model(MLP_SPEC, MLP_KWARGS), digits.train, digits.val, epochs=8, seed=seed)
        mlps.append(TorchMember(model, name=f"mlp{seed}", factory="mlp", factory_kwargs=MLP_KWARGS))
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    return [*mlps, SklearnMember(LogisticRegression(max_iter=500).fit(X, y), name="logreg")]


@pytest.fixture(scope="module")
def run(members, digits, tmp_path_factory):
    """Every family on the members (distillation and recovery train for their recipes' epochs: slow)."""
    out = tmp_path_factory.mktemp("auto") / "run"
    return auto(members, digits, out=out, progress=False, log=lambda line: None), out


@pytest.mark.slow
def test_every_family_reaches_the_leaderboard_and_the_choice_is_made_on_validation(run, digits):
    result, out = run
    families = {row.family for row in result.results.leaderboard}
    assert families == {"member", "output", "merge", "distill", "cascade", "compress"}
    exportable = [c for c in result.candidates if c.export is not None]
    best_val = max(c.val["accuracy"] for c in exportable)
    assert result.chosen.val["accuracy"] == best_val
    assert result.best_member.family == "member"
    assert result.best_member.val["accuracy"] == max(
        c.val["accuracy"] for c in result.candidates if c.family == "member"
    )
    ranked = [row.val["accuracy"] for row in result.results.leaderboard]
    assert ranked == sorted(ranked, reverse=True)
    for row in result.results.leaderboard:
        low, high = row.test["accuracy_ci"]
        assert low <= row.test["accuracy"] <= high
        assert row.cost.latency_batch_1_us > 0 and row.cost.forward_passes >= 1
    # the combiners were fitted on validation: their validation scores are cross-validated, not in-sample
    stacking = next(c for c in result.candidates if c.name == "stacking")
    in_sample = float((stacking.val_proba.argmax(1) == digits.val.y.numpy()).mean())
    assert stacking.val["accuracy"] <= in_sample and "cross-validated" in stacking.description


def test_the_test_labels_never_decide(members, digits):
    shuffled = torch.from_numpy(np.random.default_rng(0).permutation(digits.test.y.numpy()))
    corrupted = dataclasses.replace(digits, test=dataclasses.replace(digits.test, y=shuffled))
    families = ["output", "merge", "cascade"]
    honest = auto(members, digits, families=families, progress=False, log=lambda line: None)
    blind = auto(members, corrupted, families=families, progress=False, log=lambda line: None)
    assert blind.chosen.name == honest.chosen.name
    assert [c.name for c in blind.candidates] == [c.name for c in honest.candidates]
    assert [r.name for r in blind.results.leaderboard] == [r.name for r in honest.results.leaderboard]
    assert blind.chosen.test["accuracy"] < 0.3 < honest.chosen.test["accuracy"]


@pytest.mark.slow
def test_the_chosen_model_is_exported_and_reads_back_with_the_same_predictions(run, digits):
    result, out = run
    path = result.chosen.path
    assert path.startswith(str(out / "model"))
    if result.chosen.family == "output":  # a logistic regression among the members: members + combiner
        members, combiner = load_fusion(path)
        test = collect_predictions(members, digits.test.X, digits.test.y, "test", progress=False)
        np.testing.assert_allclose(combiner.predict_proba(test).double().numpy(), result.chosen.test_proba, atol=1e-5)
    else:
        loaded = load_member(path)
        got = torch.softmax(loaded.predict(digits.test.X).double(), dim=1).numpy()
        np.testing.assert_allclose(got, result.chosen.test_proba, atol=1e-5)
    written = load_results(out / "results.json")
    assert written == result.results  # written and read by the same schema
    assert written.chosen.name == result.chosen.name and len(written.leaderboard) == len(result.candidates)
    curves = written.curves
    assert (
        curves.interpolation
        and curves.cascade
        and set(curves.reliability) == {c.name for c in (result.best_member, result.chosen)}
    )
    assert (out / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_each_candidate_exports_in_its_natural_form(run, digits, tmp_path):
    result, _ = run
    for family in ("merge", "distill", "compress"):
        candidate = next(c for c in result.candidates if c.family == family)
        loaded = load_member(candidate.export(tmp_path / family))
        got = torch.softmax(loaded.predict(digits.test.X).double(), dim=1).numpy()
        np.testing.assert_allclose(got, candidate.test_proba, atol=1e-5)
    fusion = next(c for c in result.candidates if c.name == "weighted")
    folder = fusion.export(tmp_path / "fusion")  # a logistic regression is no torch member: members + combiner
    members, combiner = load_fusion(folder)
    assert [m.name for m in members] == ["mlp0", "mlp1", "logreg"]
    test = collect_predictions(members, digits.test.X, digits.test.y, "test", progress=False)
    np.testing.assert_allclose(combiner.predict_proba(test).double().numpy(), fusion.test_proba, atol=1e-5)


def test_a_family_registered_outside_the_package_runs_after_what_it_requires(members, digits):
    """Adding a family is one function in one file: it declares what it needs, gets only that, and returns its
    own result; it runs after the families it requires (whatever order they are asked in), and is skipped,
    with the reason, when one of them did not run."""
    from modelfusion.auto import FAMILIES, FamilyResult, family
    from modelfusion.results import Cost

    seen = []

    @family("sharpened", requires=("output",))
    def sharpened(inputs):
        seen.append(sorted(inputs.found))
        fusion = inputs.found["output"].fusion
        proba = {s: fusion.predict_proba(getattr(inputs, s)).double().pow(2).numpy() for s in ("val", "test")}
        proba = {s: p / p.sum(1, keepdims=True) for s, p in proba.items()}
        accuracy = float((proba["val"].argmax(1) == digits.val.y.numpy()).mean())
        candidate = Candidate(
            name=f"sharpened {fusion.name}",
            family="sharpened",
            val={"accuracy": accuracy, "nll": 1.0},
            cost=Cost(forward_passes=len(fusion.members_used())),
            val_proba=proba["val"],
            test_proba=proba["test"],
        )
        return FamilyResult([candidate], notes=("sharpened: probabilities squared, no export",))

    try:
        lines = []
        result = auto(members, digits, families=["sharpened", "output"], progress=False, log=lines.append)
        assert seen == [["member", "output"]] and lines[0].startswith("output:") and lines[1].startswith("sharpened:")
        row = next(c for c in result.results.leaderboard if c.family == "sharpened")
        assert row.test["accuracy_ci"] and row.p_vs_best_member is not None and result.chosen.family != "sharpened"
        assert "sharpened: probabilities squared, no export" in result.results.notes
        result = auto(members, digits, families=["sharpened"], progress=False, log=lines.append)
        assert [(s.family, s.reason) for s in result.skipped] == [
            ("sharpened", "it needs the results of output, which did not run")
        ]
    finally:
        FAMILIES.unregister("sharpened")


def test_a_fusion_folder_naming_files_outside_itself_is_refused(members, digits, tmp_path):
    val = collect_predictions(members, digits.val.X, digits.val.y, "val", progress=False)
    combiner = make_combiner("mean").fit(val)
    folder = save_fusion(members, combiner, tmp_path / "fusion")
    combiner.member_names_ = ("../mlp0", "mlp1", "logreg")
    save_combiner(combiner, folder / "combiner.safetensors", overwrite=True)
    with pytest.raises(CheckpointError, match="holds 0 files for member '../mlp0'"):  # its safe stem: no file
        load_fusion(folder)
    (folder / "combiner.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        load_fusion(folder)


def test_a_saved_fusion_predicts_as_one_member_from_the_cli_and_python(members, digits, tmp_path):
    """auto's export of an ensemble (members + combiner) is one member for `predict`: its outputs are the log of
    the combiner's probabilities, beside any other checkpoint given."""
    val = collect_predictions(members, digits.val.X, digits.val.y, "val", progress=False)
    combiner = make_combiner("weighted").fit(val)
    folder = save_fusion(members, combiner, tmp_path / "run" / "model")
    save_member(members[2], tmp_path / "logreg")
    out = tmp_path / "p.safetensors"
    done = CliRunner().invoke(
        app, ["predict", str(folder), str(tmp_path / "logreg.skops"), "--dataset", "digits", "--out", str(out)]
    )
    assert done.exit_code == 0, done.output
    preds = Predictions.load(out)
    assert preds.member_names == ("model", "logreg") and preds.split == "test"
    test = collect_predictions(members, digits.test.X, digits.test.y, "test", progress=False)
    expected = combiner.predict_proba(test)
    torch.testing.assert_close(preds.outputs[0].softmax(1), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(preds.outputs[1], test.outputs[2])
    # nothing is written inside the folder it reads: a new members/logreg.safetensors would make it unreadable
    inside = folder / "members" / "logreg.safetensors"
    done = CliRunner().invoke(app, ["predict", str(folder), "--dataset", "digits", "--out", str(inside)])
    assert done.exit_code == 2 and "is part of an input of this run" in done.output and not inside.exists()
    fused = load_fusion_member(folder, name="fused")
    assert (fused.name, fused.task, fused.classes) == ("fused", "classification", tuple(range(10)))
    assert is_fusion_folder(folder) and not is_fusion_folder(tmp_path / "logreg.skops")
    # torch members only: auto exports an EnsembleModule folder, which predicts as one member the same way
    networks = members[:2]
    combiner = make_combiner("mean").fit(collect_predictions(networks, digits.val.X, digits.val.y, "val"))
    module_folder = EnsembleModule(networks, combiner).save(tmp_path / "networks")
    assert is_fusion_folder(module_folder)
    expected = combiner.predict_proba(collect_predictions(networks, digits.test.X, progress=False))
    outputs = load_fusion_member(module_folder).predict(digits.test.X)
    torch.testing.assert_close(outputs.softmax(1), expected, rtol=0, atol=1e-6)


def test_merging_is_skipped_with_its_reason_and_a_spent_budget_skips_the_rest(digits, members):
    lines = []
    mixed = [members[0], members[2]]
    result = auto(mixed, digits, families=["merge", "distill"], budget_s=0.0, progress=False, log=lines.append)
    assert [s.family for s in result.skipped] == ["merge", "distill"]
    assert all("time budget" in s.reason for s in result.skipped)
    result = auto(mixed, digits, families=["merge"], progress=False, log=lines.append)
    assert [(s.family, s.reason) for s in result.skipped] == [
        ("merge", "members differ in architecture (no two torch members share one)")
    ]
    assert any(line.startswith("merge: skipped, members differ in architecture") for line in lines)


def test_distillation_is_given_what_is_left_of_the_budget(digits, members, monkeypatch):
    import modelfusion.distill

    limits, real = [], modelfusion.distill.distill

    def recorded(*args, time_limit_s=None, **kwargs):
        limits.append(time_limit_s)
        return real(*args, **{**kwargs, "epochs": 1, "patience": None}, time_limit_s=time_limit_s)

    monkeypatch.setattr(modelfusion.distill, "distill", recorded)
    auto(members, digits, families=["output", "distill"], budget_s=3600.0, progress=False, log=lambda line: None)
    auto(members, digits, families=["output", "distill"], progress=False, log=lambda line: None)
    assert len(limits) == 2 and 3000 < limits[0] < 3600 and limits[1] is None


def test_bad_requests_are_one_line_errors(members, tmp_path):
    with pytest.raises(ConfigError, match="auto handles classification; diabetes is regression"):
        auto(None, load_dataset("diabetes"), progress=False)
    with pytest.raises(ConfigError, match="unknown families \\['soup'\\]"):
        auto(members, load_dataset("digits"), families=["soup"], progress=False)
    assert set(FAMILIES) == {"output", "merge", "distill", "cascade", "compress"}
    runner = CliRunner()
    member = save_member(members[0], tmp_path / "mlp0.safetensors")
    for argv, message in (
        (["auto", str(member), "--budget", "soon", "--out", str(tmp_path / "x")], "--budget 'soon': give seconds"),
        (["auto", str(member), "--dataset", "diabetes", "--out", str(tmp_path / "r")], "handles classification"),
        (["auto", str(member), "--dataset", "mnist1d", "--out", str(tmp_path / "m")], "cannot run on inputs of shape"),
        (["auto", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x")], "no such file"),
    ):
        printed = runner.invoke(app, argv)
        assert printed.exit_code == 2, printed.output
        lines = printed.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], printed.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    printed = runner.invoke(app, ["auto", str(member), "--out", str(tmp_path / "taken")])
    assert printed.exit_code == 2 and "pass --overwrite" in printed.output
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert not any((tmp_path / name).exists() for name in ("r", "m", "x"))


@pytest.mark.slow
def test_the_command_trains_members_for_a_dataset_alone_and_writes_everything(tmp_path):
    out = tmp_path / "auto"
    printed = CliRunner().invoke(app, ["auto", "--dataset", "wine", "--out", str(out), "--no-progress"])
    assert printed.exit_code == 0, printed.output
    assert "McNemar's exact test" in printed.output or "the best member" in printed.output
    results = json.loads((out / "results.json").read_text())
    assert len({row["family"] for row in results["leaderboard"]}) >= 4
    assert (out / "report.html").exists() and results["chosen"]["path"].startswith(str(out / "model"))
