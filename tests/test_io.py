import json

import joblib
import numpy as np
import pytest
import skops.io as sio
import torch
from safetensors.torch import save_file
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from typer.testing import CliRunner

from modelfusion import CheckpointError
from modelfusion.cli import app
from modelfusion.io import load_member, load_model, save_member
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.predictions import Predictions

from .conftest import MLP_KWARGS, MLP_SPEC


def _same_outputs(member, model, X):
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(member.predict(X), model(X))


def test_safetensors_with_factory_given_as_string_or_callable(tmp_path, trained_mlp, digits):
    path = tmp_path / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in trained_mlp.state_dict().items()}, str(path))
    from modelfusion.models import mlp

    for factory in (MLP_SPEC, mlp):
        member = load_member(path, factory=factory, factory_kwargs=MLP_KWARGS)
        assert member.name == "mlp"
        _same_outputs(member, trained_mlp, digits.test.X)


def test_save_member_records_factory_so_reload_needs_no_flags(tmp_path, trained_mlp, digits):
    member = TorchMember(trained_mlp, name="first")
    path = save_member(member, tmp_path / "first", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)
    assert path.suffix == ".safetensors" and not list(tmp_path.glob(".*tmp"))
    loaded = load_member(path)
    assert (loaded.name, loaded.task, loaded.classes) == ("first", "classification", tuple(range(10)))
    _same_outputs(loaded, trained_mlp, digits.test.X)


def test_factory_outside_modelfusion_must_be_named_by_the_caller(tmp_path, trained_mlp):
    path = tmp_path / "m.safetensors"
    meta = {"modelfusion": json.dumps({"factory": "os:system", "factory_kwargs": {"command": "echo hi"}})}
    save_file({k: v.contiguous() for k, v in trained_mlp.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="names the model factory 'os:system'.*pass factory="):
        load_member(path)


def test_pt_state_dicts_plain_and_nested(tmp_path, trained_mlp, digits):
    plain, nested = tmp_path / "plain.pt", tmp_path / "nested.pth"
    torch.save(trained_mlp.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": trained_mlp.state_dict()}, nested)
    for path in (plain, nested):
        _same_outputs(load_member(path, factory=MLP_SPEC, factory_kwargs=MLP_KWARGS), trained_mlp, digits.test.X)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_and_torch_export_are_programs_loaded_only_when_trusted(tmp_path, trained_mlp, digits):
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(trained_mlp).save(str(scripted))
    exported = tmp_path / "exported.pt2"
    example = (digits.test.X[:4],)
    dims = {"input": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(trained_mlp.eval(), example, dynamic_shapes=dims), str(exported))
    for path, kind in ((scripted, "TorchScript"), (exported, "torch.export")):
        with pytest.raises(CheckpointError, match=f"is a {kind} program: loading it runs code.*trust_code=True"):
            load_member(path)
        _same_outputs(load_member(path, trust_code=True), trained_mlp, digits.test.X)


def test_skops_estimator_with_sklearn_internal_types(tmp_path, digits):
    forest = RandomForestClassifier(10, random_state=0).fit(digits.train.X.numpy(), digits.train.y.numpy())
    path = save_member(SklearnMember(forest, name="forest"), tmp_path / "forest")
    assert path.suffix == ".skops"
    assert "sklearn.tree._tree.Tree" in sio.get_untrusted_types(file=path)
    member = load_member(path)
    np.testing.assert_allclose(
        torch.softmax(member.predict(digits.test.X).double(), 1).numpy(),
        forest.predict_proba(digits.test.X.numpy()),
        atol=1e-9,
    )


def shout(X):
    return X * 2


def test_skops_refuses_unknown_types_unless_trusted(tmp_path, digits):
    pipe = make_pipeline(FunctionTransformer(shout), RandomForestClassifier(5, random_state=0))
    pipe.fit(digits.train.X.numpy(), digits.train.y.numpy())
    path = tmp_path / "pipe.skops"
    sio.dump(pipe, path)
    with pytest.raises(
        CheckpointError, match=r"FunctionTransformer, function reference tests\.test_io\.shout.*trusted_types"
    ):
        load_member(path)
    with pytest.raises(
        CheckpointError, match=r"\(sklearn\.preprocessing\._function_transformer\.FunctionTransformer\)"
    ):
        load_member(path, trusted_types=["tests.test_io.shout"])
    transformer = "sklearn.preprocessing._function_transformer.FunctionTransformer"
    assert isinstance(load_member(path, trusted_types=["tests.test_io.shout", transformer]), SklearnMember)
    assert isinstance(load_member(path, trust_code=True), SklearnMember)


def test_pickled_models_are_refused_unless_trusted(tmp_path, trained_mlp, digits):
    full = tmp_path / "full.pt"
    torch.save(trained_mlp, full)
    with pytest.raises(CheckpointError, match="pickled model .*GLOBAL.*trust_code=True.*safetensors"):
        load_member(full)
    _same_outputs(load_member(full, trust_code=True), trained_mlp, digits.test.X)

    forest = RandomForestClassifier(5, random_state=0).fit(digits.train.X.numpy(), digits.train.y.numpy())
    pickled = tmp_path / "forest.joblib"
    joblib.dump(forest, pickled)
    with pytest.raises(CheckpointError, match="is a pickle: loading it runs code"):
        load_member(pickled)
    assert isinstance(load_member(pickled, trust_code=True), SklearnMember)
    assert isinstance(load_member(pickled, trust_pickle=True), SklearnMember)  # the earlier public name

    out = tmp_path / "preds.safetensors"
    refused = CliRunner().invoke(app, ["predict", str(pickled), "--out", str(out)])
    assert refused.exit_code == 2 and "--trust-code" in refused.output and not out.exists()
    for flag in ("--trust-code", "--trust-pickle"):
        accepted = CliRunner().invoke(app, ["predict", str(pickled), "--out", str(out), flag, "--overwrite"])
        assert accepted.exit_code == 0, accepted.output
        assert Predictions.load(out).member_names == ("forest",)


def test_weights_only_file_without_factory(tmp_path, trained_mlp):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained_mlp.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="holds only weights; pass the model factory"):
        load_member(path)


@pytest.mark.parametrize(
    "factory, match",
    [
        ("no_such_package.models:mlp", "cannot import module 'no_such_package.models'"),
        ("modelfusion.models:nope", "has no callable 'nope'"),
        ("modelfusion.models.mlp", "neither a registered name .* nor of the form 'package.module:function'"),
    ],
)
def test_bad_factories(tmp_path, trained_mlp, factory, match):
    path = tmp_path / "w.pt"
    torch.save(trained_mlp.state_dict(), path)
    with pytest.raises(CheckpointError, match=match):
        load_member(path, factory=factory, factory_kwargs=MLP_KWARGS)


def test_mismatched_keys_and_shapes_are_listed_by_name(tmp_path, trained_mlp):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained_mlp.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"shape mismatches: 0\.weight \(file \(32, 64\), model \(48, 64\)\)"):
        load_member(path, factory=MLP_SPEC, factory_kwargs={**MLP_KWARGS, "hidden": [48]})
    with pytest.raises(CheckpointError, match=r"missing keys: 4\.weight, 4\.bias; shape mismatches: 2\.weight"):
        load_member(path, factory=MLP_SPEC, factory_kwargs={**MLP_KWARGS, "hidden": [32, 32]})
    with pytest.raises(CheckpointError, match=r"2\.weight \(file \(10, 32\), model \(3, 32\)\)"):
        load_member(path, factory=MLP_SPEC, factory_kwargs={**MLP_KWARGS, "num_outputs": 3})
    extra = {**trained_mlp.state_dict(), "extra.weight": torch.zeros(2)}
    save_file({k: v.contiguous() for k, v in extra.items()}, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.weight"):
        load_member(path, factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pt2", ".skops", ".torchscript"])
def test_corrupt_files_give_one_checkpoint_error(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=f"broken{suffix}: cannot read it as"):
        load_member(path, factory=MLP_SPEC, factory_kwargs=MLP_KWARGS, trust_code=True)


def test_truncated_safetensors(tmp_path, trained_mlp):
    path = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in trained_mlp.state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="may be corrupt"):
        load_member(path, factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)


def test_missing_unknown_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format '.h5'; supported: .safetensors"):
        load_model(tmp_path / "model.h5")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model(tmp_path)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"x")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "model.h5")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "unknown checkpoint format" in lines[0]
    assert "Traceback" not in result.output
