"""Every class of bad input a user can cause is one clear line (exit code 2 on the CLI), never a traceback
and never silently accepted. docs/security.md lists each class with the test here that covers it."""

import copy
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from modelfusion import CheckpointError, ConfigError, IncompatibleModelsError, InvalidInputError, TrainingDivergedError
from modelfusion.cli import app
from modelfusion.datasets import load_dataset
from modelfusion.distill import ModelTeacher, distill
from modelfusion.io import load_member, save_member
from modelfusion.members import TorchMember
from modelfusion.merge import METHODS, merge_state_dicts
from modelfusion.models import mlp
from modelfusion.predictions import Predictions

from .conftest import MLP_KWARGS, MLP_SPEC


def _error_line(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def member_file(tmp_path, trained_mlp):
    member = TorchMember(trained_mlp, name="mlp", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)
    return save_member(member, tmp_path / "mlp.safetensors")


def _predictions_file(path: Path, labels: torch.Tensor, meta: dict | str | None = None) -> Path:
    outputs = torch.randn(2, len(labels), 3)
    description = meta if meta is not None else {"member_names": ["a", "b"], "task": "classification", "split": "val"}
    header = description if isinstance(description, str) else json.dumps(description)
    save_file({"outputs": outputs, "labels": labels}, str(path), metadata={"modelfusion.predictions": header})
    return path


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0, 1, 3]), r"class labels must lie in 0\.\.2 .*from 0 to 3"),
        (torch.tensor([0, -1, 2]), r"class labels must lie in 0\.\.2 .*from -1 to 2"),
        (torch.tensor([0.0, 1.0, 2.0]), "class labels must be integer column indices"),
        (torch.tensor([[0], [1], [2]]), "labels must be one per sample"),
    ],
)
def test_predictions_with_bad_labels(tmp_path, labels, match):
    path = _predictions_file(tmp_path / "p.safetensors", labels)
    with pytest.raises(CheckpointError, match=match):
        Predictions.load(path)
    assert "p.safetensors" in _error_line(["evaluate", str(path)])


@pytest.mark.parametrize(
    "meta, match",
    [
        ('{"member_names": ["a", "b"], "task": ', "description is not JSON"),
        ("[1, 2]", "is a list, not an object"),
        ({"member_names": ["a", "b"], "task": "ranking", "split": "val"}, "field 'task' is invalid"),
        ({"member_names": "ab", "task": "classification", "split": "val"}, "field 'member_names' is invalid"),
        ({"member_names": ["a", "a"], "task": "classification", "split": "val"}, "appear more than once"),
        ({"task": "classification", "split": "val"}, "field 'member_names' is invalid"),
    ],
)
def test_predictions_with_corrupt_metadata(tmp_path, meta, match):
    path = _predictions_file(tmp_path / "p.safetensors", torch.tensor([0, 1, 2]), meta)
    with pytest.raises(CheckpointError, match=match):
        Predictions.load(path)


@pytest.mark.parametrize(
    "header, match",
    [
        ('{"factory": "mlp", "task": ', "description is not JSON"),
        ('{"factory": "mlp", "task": "ranking"}', "field 'task' is invalid"),
        ('{"factory": ["mlp"]}', "field 'factory' is invalid"),
        ('{"factory": "mlp", "num_outputs": "ten"}', "field 'num_outputs' is invalid"),
        ('{"factory": "mlp", "factory_kwargs": {"in_features": "64"}}', "factory 'mlp'"),
    ],
)
def test_checkpoint_with_corrupt_metadata(tmp_path, trained_mlp, header, match):
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in trained_mlp.state_dict().items()}, str(path), {"modelfusion": header})
    with pytest.raises(CheckpointError, match=match):
        load_member(path)


def test_data_of_the_wrong_width_names_the_member(member_file, tmp_path):
    line = _error_line(
        ["predict", str(member_file), "--dataset", "breast_cancer", "--out", str(tmp_path / "p.safetensors")]
    )
    assert "member 'mlp' cannot run on inputs of shape" in line and "trained on this dataset" in line
    line = _error_line(["ensemble", str(member_file), "--dataset", "wine", "--out", str(tmp_path / "e")])
    assert "member 'mlp' cannot run on inputs" in line
    line = _error_line(
        ["align", str(member_file), str(member_file), "--dataset", "wine", "--out", str(tmp_path / "a.safetensors")]
    )
    assert "wine" in line or "shape" in line


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999", "4294967296"])
def test_seeds_out_of_range(member_file, tmp_path, seed):
    line = _error_line(["predict", str(member_file), "--seed", seed, "--out", str(tmp_path / "p.safetensors")])
    assert "seed must be a whole number from 0 to 4294967295" in line
    with pytest.raises(ConfigError, match="seed must be"):
        load_dataset("digits", seed=int(seed))


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("--batch-size", "0", "batch_size must be a whole number of at least 1"),
        ("--batch-size", "-5", "batch_size must be a whole number of at least 1"),
        ("--epochs", "0", "epochs must be a whole number of at least 1"),
        ("--lr", "-0.1", "lr must be above 0"),
        ("--lr", "nan", "lr must be a finite number"),
    ],
)
def test_distill_numbers_out_of_range(member_file, tmp_path, option, value, match):
    student = ["--student", MLP_SPEC, "--student-kwargs", json.dumps({**MLP_KWARGS, "hidden": [8]})]
    args = ["distill", "--teacher", str(member_file), *student, option, value, "--out", str(tmp_path / "s.safetensors")]
    assert match in _error_line([*args, "--no-progress"])
    assert not (tmp_path / "s.safetensors").exists()


class _TeacherGoingBad(ModelTeacher):
    """A teacher whose outputs turn to NaN after `good` calls: training diverges in a later epoch."""

    def __init__(self, model, good: int) -> None:
        super().__init__(model)
        self.good, self.calls = good, 0

    def logits(self, X, index=None):
        self.calls += 1
        out = super().logits(X, index)
        return out if self.calls <= self.good else out * float("nan")


def test_diverging_distillation_names_the_epoch_and_keeps_the_last_good_checkpoint(digits, trained_mlp, tmp_path):
    torch.manual_seed(0)
    student = mlp(**{**MLP_KWARGS, "hidden": [8]})
    batches = -(-len(digits.train) // 64)
    teacher = _TeacherGoingBad(trained_mlp, good=1 + batches)  # the fingerprint's call, then one good epoch
    with pytest.raises(
        TrainingDivergedError,
        match=r"diverged in epoch 2: the loss became nan; the checkpoint in .* "
        r"holds epoch 1, the last good one",
    ):
        distill(student, teacher, digits.train, digits.val, epochs=3, checkpoint_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / "distill_checkpoint.pt", weights_only=True)["epoch"] == 1


def test_diverging_distillation_on_the_cli(member_file, tmp_path):
    student = ["--student", MLP_SPEC, "--student-kwargs", json.dumps({**MLP_KWARGS, "hidden": [8]})]
    out = tmp_path / "s.safetensors"
    line = _error_line(["distill", "--teacher", str(member_file), *student, "--lr", "1e38", "--out", str(out)])
    assert "diverged in epoch 1" in line and "nothing was written" in line and not out.exists()


@pytest.mark.parametrize(
    "change, field",
    [({"lr": 0.01}, "lr"), ({"seed": 1}, "seed"), ("student", "student"), ("teacher", "teacher")],
)
def test_resume_refuses_a_checkpoint_of_other_settings(digits, trained_mlp, tmp_path, change, field):
    def run(lr=1e-3, seed=0, hidden=8, teacher=trained_mlp, resume=False, epochs=2):
        torch.manual_seed(0)
        student = mlp(**{**MLP_KWARGS, "hidden": [hidden]})
        return distill(
            student,
            ModelTeacher(teacher),
            digits.train,
            digits.val,
            lr=lr,
            seed=seed,
            epochs=epochs,
            checkpoint_dir=tmp_path,
            resume=resume,
            progress=False,
        )

    run(epochs=2)
    other_teacher = mlp(**MLP_KWARGS)
    kwargs = (
        {"student": {"hidden": 16}, "teacher": {"teacher": other_teacher}}[change]
        if isinstance(change, str)
        else change
    )
    with pytest.raises(CheckpointError, match=f"cannot resume from .*other settings: {field} "):
        run(resume=True, epochs=2, **kwargs)
    with pytest.raises(Exception, match="holds an earlier run; pass --resume"):
        run(epochs=2)


@pytest.fixture
def merge_project(tmp_path):
    for i in range(2):
        torch.manual_seed(i)
        save_file({"w": torch.randn(4, 3), "empty": torch.zeros(0, 3)}, str(tmp_path / f"m{i}.safetensors"))
    return tmp_path


@pytest.mark.parametrize(
    "config, match",
    [
        (
            "models:\n  - model: m0.safetensors\n    parameters: {weight: '13'}\n  - model: m1.safetensors\n    "
            "parameters: {weight: 1}\n",
            "parameter 'weight' of 'linear' must be a number, got str '13'",
        ),
        (
            "models:\n  - model: m0.safetensors\n    parameters: {weight: .nan}\n  - model: m1.safetensors\n    "
            "parameters: {weight: 1}\n",
            "must be a finite number, got nan",
        ),
        (
            "models:\n  - model: m0.safetensors\n    parameters: {weight: 1.0e+400}\n  - model: m1.safetensors\n    "
            "parameters: {weight: 1}\n",
            "must be a finite number, got inf",
        ),
        (
            "models:\n  - model: m0.safetensors\n  - model: m1.safetensors\nparameters: {normalise: true}\n",
            "merge method 'linear' has no parameter 'normalise'; it takes weight, normalize",
        ),
        (
            "models:\n  - model: m0.safetensors\n  - model: m1.safetensors\nparameters: {weight: {a: 1}}\n",
            "a condition is a mapping with 'value'",
        ),
    ],
)
def test_bad_merge_parameters(merge_project, config, match):
    path = merge_project / "merge.yaml"
    path.write_text("merge_method: linear\n" + config)
    line = _error_line(["merge", str(path), str(merge_project / "out")])
    assert match in line and "merge.yaml" in line
    assert not (merge_project / "out").exists()


def test_slerp_t_must_be_a_number(merge_project):
    path = merge_project / "slerp.yaml"
    path.write_text(
        "merge_method: slerp\nbase_model: m0.safetensors\nmodels:\n  - model: m1.safetensors\nparameters: {t: half}\n"
    )
    line = _error_line(["merge", str(path), "out"])
    assert "parameter 't' of 'slerp' (the position from the base (0) to the other model (1)) must be a number" in line
    assert line.endswith("got str 'half'")


@pytest.mark.parametrize("method", ["linear", "ties", "slerp", "task_arithmetic", "dare_linear"])
def test_zero_size_tensors_merge(merge_project, method):
    config = merge_project / f"{method}.yaml"
    base = "" if method == "linear" else "base_model: m0.safetensors\n"
    params = {"linear": "", "slerp": "parameters: {t: 0.3}\n"}.get(method, "parameters: {density: 0.5}\n")
    config.write_text(
        f"merge_method: {method}\n{base}models:\n  - model: m0.safetensors\n  - model: m1.safetensors\n{params}"
    )
    result = CliRunner().invoke(app, ["merge", str(config), str(merge_project / method)])
    assert result.exit_code == 0, result.output
    merged = load_file(str(merge_project / method / "model.safetensors"))
    assert merged["empty"].shape == (0, 3) and merged["w"].shape == (4, 3)


def test_shard_index_pointing_outside_its_folder(merge_project):
    model = merge_project / "sharded"
    model.mkdir()
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../m0.safetensors"}}))
    config = merge_project / "merge.yaml"
    config.write_text("merge_method: linear\nmodels:\n  - model: sharded\n  - model: m1.safetensors\n")
    assert "names shards outside its folder" in _error_line(["merge", str(config), str(merge_project / "out")])


def test_a_base_models_config_linked_outside_its_folder_is_not_copied(merge_project):
    secret = merge_project / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    for name in ("base", "tuned"):
        (merge_project / name).mkdir()
        save_file({"w": torch.randn(4, 3)}, str(merge_project / name / "model.safetensors"))
    (merge_project / "base" / "config.json").symlink_to(secret)
    (merge_project / "base" / "tokenizer.json").write_text("{}")
    config = merge_project / "merge.yaml"
    config.write_text("merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: tuned\n")
    result = CliRunner().invoke(app, ["merge", str(config), str(merge_project / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (merge_project / "out").iterdir()) == ["model.safetensors", "tokenizer.json"]


def test_duplicate_member_names(tmp_path, trained_mlp, digits):
    paths = []
    for i in range(3):  # three different models that were all saved under one name
        module = copy.deepcopy(trained_mlp)
        with torch.no_grad():
            module[0].bias.add_(0.01 * i)
        member = TorchMember(module, name="same", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)
        paths.append(save_member(member, tmp_path / f"copy{i}.safetensors"))
    result = CliRunner().invoke(app, ["predict", *map(str, paths), "--out", str(tmp_path / "p.safetensors")])
    assert result.exit_code == 0, result.output
    assert "note: members share the names ['same']; each is named after its file" in result.output
    assert Predictions.load(tmp_path / "p.safetensors").member_names == ("copy0", "copy1", "copy2")
    with pytest.raises(InvalidInputError, match=r"\['x'\] appear more than once"):
        Predictions(torch.zeros(2, 3, 4), None, ("x", "x"), "classification", "val")


def test_an_unreadable_file_is_not_reported_missing(member_file, monkeypatch):
    import modelfusion._files as module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(module.os, "open", refuse)
    with pytest.raises(CheckpointError, match="cannot open the checkpoint .Permission denied.; check its permissions"):
        load_member(member_file)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_for_real(member_file):
    member_file.chmod(0)
    assert "Permission denied" in _error_line(["evaluate", str(member_file)])


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".skops", ".torchscript"])
def test_a_zip_whose_end_record_claims_several_disks(tmp_path, trained_mlp, suffix):
    """Found by the fuzzer: zipfile.is_zipfile itself raises on such a file."""
    path = tmp_path / f"spanning{suffix}"
    torch.save(trained_mlp.state_dict(), path)
    data = path.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 2)  # a zip64 locator: "2 disks"
    path.write_bytes(data[:end] + locator + data[end:])
    with pytest.raises(CheckpointError, match="cannot read it as a zip archive"):
        load_member(path, factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)


def test_a_file_name_with_a_newline_stays_on_one_line(merge_project):
    """Found by the fuzzer: a path from a config was printed across two lines."""
    config = merge_project / "merge.yaml"
    config.write_text('merge_method: linear\nmodels:\n  - model: "evil\\nname"\n  - model: m1.safetensors\n')
    assert "evil\\nname: no such file or folder" in _error_line(["merge", str(config), str(merge_project / "out")])


@pytest.mark.parametrize(
    "config, match",
    [
        (
            "merge_method: ties\nbase_model: m0.safetensors\nmodels:\n  - model: m1.safetensors\n"
            "    parameters: {density: 2}\n",
            "parameter 'density' of 'ties' (the share of task-vector entries kept) must be at most 1, got 2",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: m0.safetensors\n  - model: m1.safetensors\nshard_size: -5\n",
            "write a positive size",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: m0.safetensors\n  - model: m1.safetensors\n"
            "random_seed: 99999999999999999999999\n",
            "random_seed",
        ),
    ],
)
def test_merge_values_out_of_range(merge_project, config, match):
    path = merge_project / "merge.yaml"
    path.write_text(config)
    assert match in _error_line(["merge", str(path), str(merge_project / "out")])


_TWO = "models:\n  - model: m0.safetensors\n  - model: m1.safetensors\n"
_SLERP = "merge_method: slerp\nbase_model: m0.safetensors\nmodels:\n  - model: m1.safetensors\n"


@pytest.mark.parametrize(
    "config, match",
    [
        (
            _SLERP + "parameters: {t: 1.7}\n",
            "(the position from the base (0) to the other model (1)) must be at most 1",
        ),
        (_SLERP + "parameters: {t: -0.5}\n", "must be at least 0, got -0.5"),
        (_SLERP.replace("slerp", "nearswap") + "parameters: {t: -1}\n", "'t' of 'nearswap' (the distance under"),
        ("merge_method: multislerp\n" + _TWO + "parameters: {eps: -1}\n", "'eps' of 'multislerp' must be above 0"),
        (
            "merge_method: karcher\n" + _TWO + "parameters: {max_iter: 0}\n",
            "'max_iter' of 'karcher' must be at least 1",
        ),
        ("merge_method: karcher\n" + _TWO + "parameters: {max_iter: 2.5}\n", "must be a whole number, got float 2.5"),
        ("merge_method: linear\n" + _TWO + "parameters: {normalize: 1}\n", "must be true or false, got int 1"),
        ("merge_method: linear\n" + _TWO + "random_seed: '5'\n", "random_seed: Input should be a valid integer"),
        ("merge_method: linear\n" + _TWO + "models:\n  - model: m0.safetensors\n", "the key 'models' appears twice"),
        (
            "merge_method: linear\nmodels:\n  - model: m0.safetensors\n    parameters: {weight: 1.0e+308}\n"
            "  - model: m1.safetensors\n    parameters: {weight: 1.0e+308}\n",
            "parameter 'weight' of 'linear' must be at most 3.40282e+38, got 1e+308",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: m0.safetensors\n    parameters: {weight: 3.0e+38}\n"
            "  - model: m1.safetensors\n    parameters: {weight: 3.0e+38}\nparameters: {normalize: false}\n",
            "the merged tensor 'w' holds NaN or inf: its inputs are finite, so the merge's arithmetic overflowed",
        ),
        (
            "merge_method: ties\nbase_model: m0.safetensors\n" + _TWO + "parameters: {density: 0.5, lambda: 1.0e+39}\n",
            "parameter 'lambda' of 'ties' must be at most 3.40282e+38",
        ),
        ("merge_method: linear\nmodels:\n  - model: ~nosuchuser/x\n  - model: m1.safetensors\n", "'~nosuchuser' is"),
        (
            "merge_method: linear\nmodels:\n  - model: m0.safetensors\n  - model: nan.safetensors\n",
            "nan.safetensors holds NaN",
        ),
        ("merge_method: linear\nmodels:\n  - model: shards\n  - model: shards\n", "'w' is in two shards"),
    ],
)
def test_merge_values_and_inputs_out_of_range_are_refused(merge_project, config, match):
    """Issue 28: each of these merged with exit 0 (or ended in a traceback); now one line, and no output."""
    save_file(
        {"w": torch.full((4, 3), float("nan")), "empty": torch.zeros(0, 3)}, str(merge_project / "nan.safetensors")
    )
    shards = merge_project / "shards"
    shards.mkdir()
    save_file({"w": torch.ones(4, 3)}, str(shards / "model-00001-of-00002.safetensors"))
    save_file({"w": torch.zeros(4, 3), "empty": torch.zeros(0, 3)}, str(shards / "model-00002-of-00002.safetensors"))
    index = {"w": "model-00001-of-00002.safetensors", "empty": "model-00002-of-00002.safetensors"}
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    path = merge_project / "merge.yaml"
    path.write_text(config)
    assert match in _error_line(["merge", str(path), str(merge_project / "out")])
    assert not (merge_project / "out").exists()
    assert not [p for p in merge_project.iterdir() if p.name.startswith(".")]


def test_non_finite_merges_are_written_when_allowed(merge_project):
    save_file(
        {"w": torch.full((4, 3), float("inf")), "empty": torch.zeros(0, 3)}, str(merge_project / "inf.safetensors")
    )
    path = merge_project / "merge.yaml"
    path.write_text("merge_method: linear\nmodels:\n  - model: m0.safetensors\n  - model: inf.safetensors\n")
    result = CliRunner().invoke(app, ["merge", str(path), str(merge_project / "out"), "--allow-nonfinite"])
    assert result.exit_code == 0, result.output
    assert torch.isinf(load_file(str(merge_project / "out" / "model.safetensors"))["w"]).all()
    states = [load_file(str(merge_project / n)) for n in ("m0.safetensors", "inf.safetensors")]
    with pytest.raises(IncompatibleModelsError, match="model 1 holds NaN or inf"):
        merge_state_dicts(states, method="linear")
    assert torch.isinf(merge_state_dicts(states, method="linear", allow_nonfinite=True)["w"]).all()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_merge_method_declares_checkable_parameters(name):
    """The parameter model is built from each registered method's signature; its defaults pass its own check."""
    method = METHODS[name]
    defaults = {k: p.default for k, p in method.parameters.items() if p.default is not None}
    method.check(defaults, 2)
    for key in method.parameters:
        with pytest.raises(ConfigError, match=f"parameter {key.rstrip('_')!r} of {name!r}"):
            method.check({key: object()}, 2)


def test_a_folder_output_named_like_a_file(member_file, tmp_path):
    line = _error_line(["ensemble", str(member_file), "--out", str(tmp_path / "ensemble.safetensors")])
    assert "named like a .safetensors file but the output is a folder" in line


def test_validation_and_test_predictions_of_other_classes(tmp_path):
    from modelfusion.ensemble import fuse_and_evaluate

    val = Predictions(torch.randn(2, 6, 3), torch.arange(6) % 3, ("a", "b"), "classification", "val", (0, 1, 2))
    test = Predictions(torch.randn(2, 6, 3), torch.arange(6) % 3, ("a", "b"), "classification", "test", (2, 1, 0))
    with pytest.raises(IncompatibleModelsError, match="over classes \\(0, 1, 2\\) but test predictions"):
        fuse_and_evaluate(val, test, ["mean"])


def test_an_integer_too_long_to_convert_in_any_json_is_one_line(tmp_path, member_file):
    """Python refuses to convert integers of more than 4,300 digits (a plain ValueError): every JSON reader
    must still answer with its own one-line error."""
    from modelfusion.report import load_results

    huge = "9" * 5000
    header = json.dumps({"__metadata__": {"modelfusion": "{}"}})[:-1] + f', "x": {huge}}}'
    raw = header.encode()
    (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="not JSON") as caught:
        load_member(tmp_path / "big.safetensors")
    assert "\n" not in str(caught.value)
    tensors = load_file(member_file)
    save_file(tensors, tmp_path / "desc.safetensors", metadata={"modelfusion": '{"name": ' + huge + "}"})
    with pytest.raises(CheckpointError, match="not JSON"):
        load_member(tmp_path / "desc.safetensors")
    (tmp_path / "results.json").write_text('{"leaderboard": [' + huge + "]}")
    with pytest.raises(ConfigError, match="not a JSON file"):
        load_results(tmp_path / "results.json")


# -- issue 23: inputs that used to be accepted silently ------------------------------------------------------
def _split(split: str, seed: int, n: int = 60, labels=None) -> Predictions:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3 if labels is None else labels
    return Predictions(torch.randn(2, n, 3, generator=generator), labels, ("a", "b"), "classification", split)


@pytest.mark.parametrize("classes", [[0, 0, 1], [0.0, float("nan"), 2.0], [1, "1", 2], ["x", "y", "x"]])
def test_duplicate_or_nan_classes_in_a_file_are_refused(tmp_path, member_file, classes):
    tensors, header = load_file(member_file), json.loads(_header(member_file))
    header["classes"] = classes + list(range(10, 17))
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"modelfusion": json.dumps(header)})
    line = _error_line(["predict", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "out.safetensors")])
    assert "m.safetensors" in line and ("more than once" in line or "is not a label" in line)
    preds = _split("test", 0)
    path = tmp_path / "p.safetensors"
    save_file(
        {"outputs": preds.outputs, "labels": preds.labels},
        str(path),
        metadata={
            "modelfusion.predictions": json.dumps(
                {"member_names": ["a", "b"], "task": "classification", "split": "test", "classes": classes}
            )
        },
    )
    line = _error_line(["evaluate", str(path)])
    assert "more than once" in line or "is not a label" in line


def _header(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["modelfusion"]


def test_the_same_checkpoint_twice_is_refused(tmp_path, member_file, trained_mlp):
    (tmp_path / "link.safetensors").symlink_to(member_file)
    (tmp_path / "copy.safetensors").write_bytes(member_file.read_bytes())
    for other, how in (
        (member_file, "the same file"),
        (tmp_path / "link.safetensors", "the same file"),
        (tmp_path / "copy.safetensors", "identical copies"),
    ):
        predict = ["predict", "--out", str(tmp_path / "predictions.safetensors")]
        for command in (predict, ["ensemble", "--method", "mean", "--out", str(tmp_path / "ens")]):
            line = _error_line([command[0], str(member_file), str(other), *command[1:]])
            assert how in line and "given twice" in line
    assert not (tmp_path / "ens").exists() and not (tmp_path / "predictions.safetensors").exists()


@pytest.mark.parametrize("split", ["val", "val\u200b", "Validation", "ｖａｌ"])
def test_test_predictions_relabelled_as_validation_are_refused(tmp_path, split):
    out = ["--out", str(tmp_path / "ens")]
    test = _split("test", 0)
    test.save(tmp_path / "test.safetensors")
    relabelled = Predictions(test.outputs, test.labels, test.member_names, test.task, split, test.classes)
    relabelled.save(tmp_path / "val.safetensors")
    permutation = torch.randperm(test.num_samples, generator=torch.Generator().manual_seed(1))
    shuffled = Predictions(test.outputs[:, permutation], test.labels[permutation], ("a", "b"), "classification", split)
    shuffled.save(tmp_path / "shuffled.safetensors")
    for val in ("val.safetensors", "shuffled.safetensors"):
        line = _error_line(
            ["ensemble", "--val-preds", str(tmp_path / val), "--test-preds", str(tmp_path / "test.safetensors"), *out]
        )
        assert "are the same" in line and "whatever the splits are called" in line


@pytest.mark.parametrize("split", ["test\u200b", "ｔｅｓｔ", " TEST\u2060"])
def test_a_test_split_under_an_invisible_disguise_is_never_fitted_on(tmp_path, split):
    _split(split, 1).save(tmp_path / "val.safetensors")
    _split("test", 0).save(tmp_path / "test.safetensors")
    line = _error_line(
        [
            "ensemble",
            "--val-preds",
            str(tmp_path / "val.safetensors"),
            "--test-preds",
            str(tmp_path / "test.safetensors"),
            "--out",
            str(tmp_path / "ens"),
        ]
    )
    assert "combiners fitted on them would be scored on the labels they learned from" in line


def test_validation_of_one_class_or_no_samples_is_one_line(tmp_path):
    _split("test", 0).save(tmp_path / "test.safetensors")
    _split("val", 1, labels=torch.ones(60, dtype=torch.long)).save(tmp_path / "one.safetensors")
    empty = Predictions(torch.zeros(2, 0, 3), torch.zeros(0, dtype=torch.long), ("a", "b"), "classification", "val")
    empty.save(tmp_path / "empty.safetensors")
    test, out = str(tmp_path / "test.safetensors"), ["--out", str(tmp_path / "ens")]
    for method in ("all", "stacking", "weighted"):
        line = _error_line(
            [
                "ensemble",
                "--val-preds",
                str(tmp_path / "one.safetensors"),
                "--test-preds",
                test,
                "--method",
                method,
                *out,
            ]
        )
        assert "every one of the 60 validation labels is class 1" in line
        line = _error_line(
            [
                "ensemble",
                "--val-preds",
                str(tmp_path / "empty.safetensors"),
                "--test-preds",
                test,
                "--method",
                method,
                *out,
            ]
        )
        assert "no samples" in line
