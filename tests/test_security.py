"""Hostile checkpoints: each one is refused with one clear line, runs no code and writes no file.

Every payload here is live: the tests at the bottom show that the unsafe loaders (pickle, torch.export.load,
torch.jit.load) run it, so a loader that let one through would fail these tests.
"""

import hashlib
import io
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import joblib
import pytest
import skops.io as sio
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from typer.testing import CliRunner

from modelfusion import ModelFusionError
from modelfusion.cli import app
from modelfusion.io import load_member, load_model
from modelfusion.models import mlp

from . import hostile_files
from .limits import HANG_GUARD_S

KWARGS = {"in_features": 4, "num_outputs": 3, "hidden": [5]}


class Payload:
    """Unpickling it creates the file `marker` (through builtins.open): proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class SaveOnLoad(torch.nn.Module):
    """A TorchScript module whose `__setstate__`, run by torch.jit.load, writes a file with aten::save."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.weight = torch.zeros(4, 3)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.marker, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        torch.ops.aten.save(state[1], state[0])
        self.marker = state[0]
        self.weight = state[1]
        self.training = state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class SaveOnForward(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.ops.aten.save(x, self.marker)
        return x[:, :3]


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in mlp(**KWARGS).state_dict().items()}


def _member_file(folder: Path, name: str, description) -> Path:
    path = folder / name
    header = description if isinstance(description, str) else json.dumps(description)
    save_file(_state(), str(path), metadata={"modelfusion": header})
    return path


def _rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """A copy of the zip `source` with the members whose names end in a key of `replace` swapped."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = next((v for k, v in replace.items() if name.endswith(k)), None)
            new.writestr(name, old.read(name) if data is None else data)
    return target


def _exported(folder: Path) -> Path:
    path = folder / "real.pt2"
    program = torch.export.export(torch.nn.Linear(4, 3).eval(), (torch.zeros(2, 4),))
    torch.export.save(program, str(path))
    return path


def _torch_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def _zip_bomb(path: Path, inner: str) -> Path:
    """A zip whose one deflated member unpacks 256 MiB of zeros from a few hundred KB on disk."""
    chunk = bytes(2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(inner, "w") as member:
        for _ in range(256):
            member.write(chunk)
    return path


HOSTILE: dict[str, Callable[[Path, Path], Path]] = {}


def hostile(name: str):
    def register(build):
        HOSTILE[name] = build
        return build

    return register


# -- pickles under every name a checkpoint goes by --------------------------------------------------------
for _suffix in (".pkl", ".pickle", ".pt", ".pth", ".bin"):

    @hostile(f"raw pickle{_suffix}")
    def _raw(folder, marker, suffix=_suffix):
        path = folder / f"raw{suffix}"
        path.write_bytes(pickle.dumps(Payload(marker)))
        return path


@hostile("joblib pickle")
def _joblib(folder, marker):
    path = folder / "model.joblib"
    joblib.dump(Payload(marker), path)
    return path


for _suffix in (".pt", ".pth", ".bin"):

    @hostile(f"torch zip with a pickled payload{_suffix}")
    def _torch_zip(folder, marker, suffix=_suffix):
        path = folder / f"zip{suffix}"
        path.write_bytes(_torch_pickle(marker))
        return path


@hostile("payload beside a state dict")
def _nested(folder, marker):
    path = folder / "nested.pt"
    torch.save({"state_dict": _state(), "extra": Payload(marker)}, path)
    return path


@hostile("real state-dict archive, data.pkl swapped")
def _swapped(folder, marker):
    real = folder / "real.pt"
    torch.save(_state(), real)
    return _rewrite_zip(real, folder / "swapped.pt", {"data.pkl": pickle.dumps(Payload(marker), protocol=2)})


# -- programs: TorchScript and torch.export ---------------------------------------------------------------
@hostile("TorchScript, data.pkl payload")
def _script_data(folder, marker):
    real = folder / "real_script.pt"
    torch.jit.script(torch.nn.Linear(4, 3)).save(str(real))
    return _rewrite_zip(real, folder / "script_data.pt", {"data.pkl": pickle.dumps(Payload(marker), protocol=2)})


@hostile("TorchScript, constants.pkl payload")
def _script_constants(folder, marker):
    real = folder / "real_script.ts"
    torch.jit.script(torch.nn.Linear(4, 3)).save(str(real))
    return _rewrite_zip(real, folder / "constants.ts", {"constants.pkl": pickle.dumps(Payload(marker), protocol=2)})


@hostile("TorchScript writing a file while loading")
def _script_setstate(folder, marker):
    path = folder / "setstate.pt"
    torch.jit.script(SaveOnLoad(str(folder / "unused"))).save(str(path))
    # The module was scripted with another path so that saving it wrote nothing; point it at the marker now.
    archive = zipfile.ZipFile(path)
    data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    archive.close()
    return _rewrite_zip(path, folder / "setstate_marker.pt", {"data.pkl": data.replace(b"unused", b"PWNED!")})


@hostile("TorchScript writing a file when run")
def _script_forward(folder, marker):
    path = folder / "forward.torchscript"
    torch.jit.script(SaveOnForward(str(marker))).save(str(path))
    return path


@hostile("torch.export, pickled weight")
def _export_weight(folder, marker):
    real = _exported(folder)
    archive = zipfile.ZipFile(real)
    name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(archive.read(name))
    archive.close()
    config["config"]["weight"]["use_pickle"] = True
    replace = {"weights/weight_0": _torch_pickle(marker), "model_weights_config.json": json.dumps(config).encode()}
    return _rewrite_zip(real, folder / "weight.pt2", replace)


@hostile("torch.export, pickled sample inputs")
def _export_sample(folder, marker):
    return _rewrite_zip(_exported(folder), folder / "sample.pt2", {"sample_inputs/model.pt": _torch_pickle(marker)})


# -- skops ---------------------------------------------------------------------------------------------
@hostile("skops naming os.system")
def _skops_system(folder, marker):
    path = folder / "system.skops"
    sio.dump(FunctionTransformer(os.system), path)
    return path


@hostile("skops with a class of ours")
def _skops_class(folder, marker):
    path = folder / "custom.skops"
    sio.dump(make_pipeline(FunctionTransformer(shutil.rmtree), LogisticRegression()), path)
    return path


# -- zip bombs -------------------------------------------------------------------------------------------
for _suffix, _inner in ((".pt", "archive/data.pkl"), (".pt2", "archive/models/model.json"), (".skops", "schema.json")):

    @hostile(f"zip bomb{_suffix}")
    def _bomb(folder, marker, suffix=_suffix, inner=_inner):
        return _zip_bomb(folder / f"bomb{suffix}", inner)


# -- safetensors headers that name code or dictate allocations --------------------------------------------
@hostile("header naming load_model with trust")
def _names_loader(folder, marker):
    pickled = folder / "elsewhere.pkl"
    pickled.write_bytes(pickle.dumps(Payload(marker)))
    kwargs = {"path": str(pickled), "trust_code": True, "trust_pickle": True}
    return _member_file(
        folder, "loader.safetensors", {"factory": "modelfusion.io.loading:load_model", "factory_kwargs": kwargs}
    )


@hostile("header naming write_json")
def _names_writer(folder, marker):
    kwargs = {"path": str(marker), "data": {}}
    return _member_file(
        folder, "writer.safetensors", {"factory": "modelfusion._atomic:write_json", "factory_kwargs": kwargs}
    )


@hostile("header naming os.system")
def _names_system(folder, marker):
    kwargs = {"command": f"touch {marker}"}
    return _member_file(folder, "system.safetensors", {"factory": "os:system", "factory_kwargs": kwargs})


@hostile("header naming builtins.eval")
def _names_eval(folder, marker):
    kwargs = {"source": f"open({str(marker)!r}, 'w')"}
    return _member_file(folder, "eval.safetensors", {"factory": "builtins:eval", "factory_kwargs": kwargs})


@hostile("registered factory, a mapping argument")
def _mapping_argument(folder, marker):
    kwargs = {**KWARGS, "hidden": {"__class__": "os.system"}}
    return _member_file(folder, "mapping.safetensors", {"factory": "mlp", "factory_kwargs": kwargs})


@hostile("registered factory, a billion hidden units")
def _allocation_bomb(folder, marker):
    kwargs = {**KWARGS, "hidden": [10**9]}
    return _member_file(folder, "huge.safetensors", {"factory": "mlp", "factory_kwargs": kwargs})


@hostile("registered factory, an unknown argument")
def _unknown_argument(folder, marker):
    kwargs = {**KWARGS, "dropout": 0.1, "callback": "os:system"}
    return _member_file(folder, "unknown.safetensors", {"factory": "mlp", "factory_kwargs": kwargs})


@hostile("registered factory, arguments not an object")
def _list_arguments(folder, marker):
    return _member_file(folder, "list.safetensors", {"factory": "mlp", "factory_kwargs": [4, 3]})


@hostile("spliced backbone naming os.system")
def _spliced_system(folder, marker):
    kwargs = {"backbone": "os:system", "backbone_kwargs": {"command": f"touch {marker}"}, "at": "0"}
    kwargs |= {"num_outputs": 3, "in_features": 4}
    return _member_file(folder, "spliced.safetensors", {"factory": "spliced", "factory_kwargs": kwargs})


@hostile("spliced backbone naming write_json")
def _spliced_writer(folder, marker):
    kwargs = {"backbone": "modelfusion._atomic:write_json", "backbone_kwargs": {"path": str(marker), "data": 1}}
    kwargs |= {"at": "0", "num_outputs": 3, "in_features": 4}
    return _member_file(folder, "spliced_w.safetensors", {"factory": "spliced", "factory_kwargs": kwargs})


@hostile("factory that is not a name")
def _factory_number(folder, marker):
    return _member_file(folder, "number.safetensors", {"factory": 12, "factory_kwargs": {}})


@hostile("header JSON that is not JSON")
def _broken_json(folder, marker):
    return _member_file(folder, "broken.safetensors", '{"factory": "mlp", ')


@hostile("header JSON nested 100,000 deep")
def _deep_json(folder, marker):
    return _member_file(folder, "deep.safetensors", "[" * 100_000 + "]" * 100_000)


@hostile("header length past the end of the file")
def _header_length(folder, marker):
    path = folder / "length.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    return path


@hostile("a link named .safetensors to a pickle")
def _link(folder, marker):
    pickled = folder / "target.pkl"
    pickled.write_bytes(pickle.dumps(Payload(marker)))
    link = folder / "link.safetensors"
    link.symlink_to(pickled)
    return link


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def corpus_folder(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    return folder


def test_the_corpus_has_at_least_30_hostile_files():
    assert len(HOSTILE) >= 30


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_refused_in_one_line_runs_nothing_and_writes_nothing(name, corpus_folder, tmp_path):
    marker = tmp_path / "PWNED"
    path = HOSTILE[name](corpus_folder, marker)
    before = _snapshot(tmp_path)
    with pytest.raises(ModelFusionError) as refused:
        load_member(path)
    message = str(refused.value)
    assert "\n" not in message and str(path.name) in message
    assert not marker.exists() and not (corpus_folder / "PWNED!").exists()
    assert _snapshot(tmp_path) == before


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize(
    "name",
    ["torch zip with a pickled payload.pt", "torch.export, pickled weight", "header naming load_model with trust"],
)
def test_the_cli_refuses_them_with_exit_code_2_and_no_output(name, corpus_folder, tmp_path):
    marker = tmp_path / "PWNED"
    path = HOSTILE[name](corpus_folder, marker)
    out = tmp_path / "preds.safetensors"
    result = CliRunner().invoke(app, ["predict", str(path), "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not marker.exists() and not out.exists()


# -- the payloads are live: unsafe loaders run them ------------------------------------------------------
def test_the_pickle_payload_runs_when_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("name", ["torch.export, pickled weight", "torch.export, pickled sample inputs"])
def test_torch_export_load_runs_the_archives_pickles(name, corpus_folder, tmp_path):
    marker = tmp_path / "PWNED"
    path = HOSTILE[name](corpus_folder, marker)
    with pytest.raises(Exception):  # noqa: B017 - the file is no valid program, but the payload ran first
        torch.export.load(str(path))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_jit_load_runs_the_files_code(corpus_folder, tmp_path):
    path = HOSTILE["TorchScript writing a file while loading"](corpus_folder, tmp_path / "PWNED")
    torch.jit.load(str(path))
    assert (corpus_folder / "PWNED!").exists()
    loaded = load_model(path, trust_code=True)  # trusted on purpose: the caller's explicit choice
    assert loaded.format == "torchscript"


# -- other files a run reads: merge configs, ensemble folders, combiner files ---------------------------
@pytest.mark.parametrize(
    "text, match",
    [
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcde", "bcdef", strict=True))
            + "merge_method: linear\n",
            r"expands to [\d,]+ values through aliases",
        ),
        ("merge_method: linear\nmodels: &m [*m]\n", "refers to itself through an alias"),
        ("merge_method: linear\n# " + "x" * 2**21 + "\n", "a merge config is at most"),
        ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", "not valid YAML"),
        ('merge_method: linear\nmodels:\n  - model: "m0\\0.safetensors"\n', "cannot hold a NUL character"),
    ],
)
def test_hostile_merge_configs(tmp_path, text, match):
    from modelfusion.merge import load_config

    path = tmp_path / "merge.yaml"
    path.write_text(text)
    with pytest.raises(ModelFusionError, match=match):
        load_config(path)


def test_an_ensemble_folder_may_name_only_files_inside_it(tmp_path, trained_mlp, digits):
    from modelfusion.ensemble import EnsembleModule, make_combiner
    from modelfusion.members import TorchMember
    from modelfusion.predictions import collect_predictions

    def ensemble(names):
        kwargs = {"in_features": 64, "num_outputs": 10, "hidden": [32]}
        members = [TorchMember(trained_mlp, name=n, factory="mlp", factory_kwargs=kwargs) for n in names]
        val = collect_predictions(members, digits.val.X, digits.val.y, "val", progress=False)
        return EnsembleModule(members, make_combiner("mean").fit(val))

    folder = ensemble(["a", "b"]).save(tmp_path / "ensemble")
    manifest = json.loads((folder / "ensemble.json").read_text())
    manifest["members"][0]["file"] = "../../outside.safetensors"
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFusionError, match="names files outside its folder"):
        EnsembleModule.load(folder)

    # names are data: they never become paths, and they come back as they were
    hostile = ["../escaped", "/etc/passwd", "a\nb"]
    second = ensemble(hostile).save(tmp_path / "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble", "second"]
    assert all(p.parent == second / "members" for p in (second / "members").iterdir())
    assert EnsembleModule.load(second).member_names == tuple(hostile)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"name": "nope"}, "unknown combiner 'nope'"),
        ({"params": {"callback": {"json": "os:system"}}}, "takes no arguments \\['callback'\\]"),
        ({"params": {"normalize": {"json": "yes"}}}, "argument 'normalize' should be bool, got str"),
        ({"fitted": {"__class__": {"json": "x"}}}, "is not a fitted attribute"),
        ({"fitted": {"member_names_": {"json": 3}}}, "member_names_ must be a non-empty list"),
        ({"fitted": {"weights_": {"tensor": "elsewhere"}}}, "refers to a tensor 'elsewhere' the file lacks"),
    ],
)
def test_a_combiner_file_may_name_only_a_registered_combiner_and_its_own_state(tmp_path, change, match):
    from safetensors import safe_open

    from modelfusion.ensemble import load_combiner, make_combiner, save_combiner
    from modelfusion.predictions import Predictions

    preds = Predictions(torch.randn(2, 30, 3), torch.arange(30) % 3, ("a", "b"), "classification", "val")
    path = save_combiner(make_combiner("weighted").fit(preds), tmp_path / "weighted.safetensors")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        description = json.loads(f.metadata()["modelfusion.combiner"])
    for key, value in change.items():
        description[key] = {**description[key], **value} if isinstance(value, dict) else value
    save_file(tensors, str(path), metadata={"modelfusion.combiner": json.dumps(description)})
    with pytest.raises(ModelFusionError, match=match):
        load_combiner(path)


def test_an_onnx_file_whose_tensors_live_elsewhere_is_refused_before_any_runtime_reads(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(12, dtype=np.float32).tobytes())
    weight = numpy_helper.from_array(np.zeros((4, 3), dtype=np.float32), name="W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=str(secret))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["output"])],
        "reads_a_file",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 3])],
        [weight],
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    with pytest.raises(ModelFusionError, match="keeps tensors in external files"):
        load_member(path)


# -- issue 23: a skops estimator that writes a file when it predicts ----------------------------------------
@pytest.fixture(scope="module")
def skops_members(tmp_path_factory, digits):
    """A valid skops member (`good.skops`) and a stacking combiner over it (`stacking.safetensors`)."""
    from modelfusion.ensemble import make_combiner, save_combiner
    from modelfusion.io import save_member
    from modelfusion.members import SklearnMember
    from modelfusion.predictions import collect_predictions

    folder = tmp_path_factory.mktemp("skops_members")
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    good = SklearnMember(LogisticRegression(max_iter=300).fit(X, y), name="good")
    save_member(good, folder / "good.skops")
    val = collect_predictions([good], digits.val.X, digits.val.y, "val", progress=False)
    save_combiner(make_combiner("stacking", cv=3).fit(val), folder / "stacking.safetensors")
    return folder


def _with_meta_learner(combiner: Path, skops_file: Path, out: Path) -> Path:
    """A copy of a stacking combiner file whose meta-learner is the estimator in `skops_file`."""
    from safetensors import safe_open

    with safe_open(str(combiner), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        description = json.loads(f.metadata()["modelfusion.combiner"])
    key = description["fitted"]["meta_learner_"]["skops"]
    tensors[key] = torch.frombuffer(bytearray(skops_file.read_bytes()), dtype=torch.uint8)
    description["fitted"]["linear_head_"] = {"json": None}  # so that the meta-learner itself would predict
    save_file(tensors, str(out), metadata={"modelfusion.combiner": json.dumps(description)})
    return out


SKOPS_COMMANDS = {
    "predict": ["predict", "evil.skops", "--out", "p.safetensors"],
    "ensemble": ["ensemble", "evil.skops", "good.skops", "--method", "mean", "--out", "ens"],
    "cascade": ["cascade", "good.skops", "evil.skops"],
    "guard fit": ["guard", "fit", "evil.skops", "--out", "guard.safetensors"],
    "auto": ["auto", "evil.skops", "good.skops", "--out", "auto", "--no-report", "--no-progress"],
    "distill --teacher": ["distill", "--teacher", "evil.skops", "--student", "mlp", "--epochs", "1", "--no-progress"],
    "distill --combiner": [
        "distill",
        "--teacher",
        "good.skops",
        "--combiner",
        "evil_stacking.safetensors",
        "--student",
        "mlp",
        "--epochs",
        "1",
        "--no-progress",
    ],
}


@pytest.mark.parametrize("command", sorted(SKOPS_COMMANDS))
def test_a_skops_file_writer_is_refused_by_every_command_and_the_victim_is_untouched(
    command, skops_members, tmp_path, monkeypatch
):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's notes\n")
    shutil.copy(skops_members / "good.skops", tmp_path / "good.skops")
    evil = hostile_files.skops_file_writer(tmp_path / "evil.skops", victim)
    _with_meta_learner(skops_members / "stacking.safetensors", evil, tmp_path / "evil_stacking.safetensors")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(app, SKOPS_COMMANDS[command])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "holds what a skops file may not" in lines[0], result.output
    assert "FunctionTransformer" in lines[0] and "function reference" in lines[0]
    assert victim.read_text() == "the user's notes\n"
    assert _snapshot(tmp_path) == before


def test_the_skops_payload_is_live_when_trusted(tmp_path, digits):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's notes\n")

    evil = hostile_files.skops_file_writer(tmp_path / "evil.skops", victim)
    member = load_member(evil, trust_code=True)  # the caller's explicit choice
    with pytest.raises(TypeError):  # the GzipFile is no array, but it was opened for writing first
        member.predict(digits.test.X[:2])
    assert victim.read_bytes() == b""


def test_callables_anywhere_in_a_skops_tree_are_refused_and_trust_type_names_them(tmp_path, digits):
    import numpy as np

    X, y = digits.train.X.numpy()[:200], digits.train.y.numpy()[:200]
    cases = {
        "function_transformer": make_pipeline(FunctionTransformer(np.tanh), LogisticRegression(max_iter=50)),
        "metric_callable": __import__("sklearn.neighbors", fromlist=["x"]).KNeighborsClassifier(
            3, metric=lambda a, b: float(np.abs(a - b).sum())
        ),
    }
    for name, estimator in cases.items():
        path = tmp_path / f"{name}.skops"
        sio.dump(estimator.fit(X, y), path)
        with pytest.raises(ModelFusionError, match="holds what a skops file may not"):
            load_member(path)
    loaded = load_member(
        tmp_path / "function_transformer.skops",
        trusted_types=["sklearn.preprocessing._function_transformer.FunctionTransformer", "numpy.tanh"],
    )
    assert loaded.predict(digits.test.X[:3]).shape == (3, 10)


@pytest.mark.parametrize(
    "estimator",
    [
        "sklearn.linear_model:LogisticRegression",
        "sklearn.ensemble:RandomForestClassifier",
        "sklearn.ensemble:HistGradientBoostingClassifier",
        "sklearn.ensemble:GradientBoostingClassifier",
        "sklearn.svm:SVC",
        "sklearn.neighbors:KNeighborsClassifier",
        "sklearn.naive_bayes:GaussianNB",
        "sklearn.neural_network:MLPClassifier",
        "sklearn.tree:DecisionTreeClassifier",
    ],
)
def test_the_allowlist_loads_common_estimators_and_pipelines_of_them(estimator, tmp_path, digits):
    import importlib
    import warnings

    import numpy as np
    from sklearn.preprocessing import StandardScaler

    module, name = estimator.split(":")
    cls = getattr(importlib.import_module(module), name)
    defaults = cls().get_params()
    params = {"probability": True} if name == "SVC" else {}
    params.update({k: v for k, v in {"max_iter": 20, "n_estimators": 5}.items() if k in defaults})
    model = make_pipeline(StandardScaler(), cls(**params))
    X, y = digits.train.X.numpy()[:300], digits.train.y.numpy()[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the short fits
        model.fit(X, y)
    sio.dump(model, tmp_path / "model.skops")
    member = load_member(tmp_path / "model.skops")
    expected = np.log(np.clip(model.predict_proba(digits.test.X[:5].numpy()), 1e-12, None))
    assert np.allclose(member.predict(digits.test.X[:5]).numpy(), expected, atol=1e-5)


# -- issue 23: files that would fill memory or hang a command ----------------------------------------------
@pytest.mark.parametrize("name", sorted(hostile_files.ONNX_BOMBS))
def test_onnx_graphs_that_would_fill_memory_or_loop_are_refused_naming_the_operator(name, tmp_path):
    build, operator = hostile_files.ONNX_BOMBS[name]
    path = tmp_path / "bomb.onnx"
    path.write_bytes(build())
    with pytest.raises(ModelFusionError, match=f"operator {operator} ") as refused:
        load_member(path)
    assert "\n" not in str(refused.value) and "refused" in str(refused.value)


def test_a_graph_the_caller_trusts_may_loop_and_valid_graphs_run_in_chunks(tmp_path, digits):
    from modelfusion.io import onnx as onnx_io

    path = tmp_path / "loop.onnx"
    path.write_bytes(hostile_files.onnx_loop(turns=3))
    with pytest.raises(ModelFusionError, match="operator Loop"):
        load_member(path)
    looped = load_member(path, trust_code=True)
    X = digits.test.X[:50]
    expected = X @ torch.full((64, 10), 0.01)
    assert torch.allclose(looped.predict(X), expected, atol=1e-5)
    wide = tmp_path / "wide.onnx"
    wide.write_bytes(hostile_files.onnx_broadcast(width=1000))  # 64,000 numbers per sample: allowed
    member = load_member(wide)
    assert member.module.values_per_sample == 64_000
    original = onnx_io.MAX_VALUES_PER_RUN
    try:
        onnx_io.MAX_VALUES_PER_RUN = 64_000 * 7  # chunks of 7 samples
        chunked = member.predict(X)
    finally:
        onnx_io.MAX_VALUES_PER_RUN = original
    assert torch.allclose(chunked, member.predict(X))


@pytest.mark.parametrize("build", [hostile_files.spliced_bomb, hostile_files.compressed_bomb])
def test_factory_arguments_that_would_build_far_more_than_the_file_holds_are_refused(build, tmp_path):
    bomb = build(tmp_path)
    valid = next(p for p in tmp_path.iterdir() if "valid" in p.name)
    assert load_member(valid).predict(torch.zeros(2, 64)).shape[0] == 2
    with pytest.raises(ModelFusionError, match=r"would allocate [\d,]+ bytes for [\d,]+ bytes of weights"):
        load_member(bomb)


def _special_readers(folder: Path) -> dict:
    from modelfusion.ensemble import EnsembleModule, load_combiner
    from modelfusion.guard import InputGuard
    from modelfusion.merge import load_config
    from modelfusion.predictions import Predictions
    from modelfusion.results import load_results

    return {
        **{f"member{suffix}": (f"m{suffix}", load_member) for suffix in (".safetensors", ".pt", ".onnx", ".skops")},
        "predictions": ("p.safetensors", Predictions.load),
        "combiner": ("c.safetensors", load_combiner),
        "guard": ("g.safetensors", InputGuard.load),
        "merge config": ("merge.yaml", load_config),
        "results.json": ("results.json", load_results),
        "ensemble.json": ("ensemble/ensemble.json", lambda path: EnsembleModule.load(path.parent)),
    }


@pytest.mark.parametrize("kind", hostile_files.SPECIAL_KINDS)
@pytest.mark.parametrize("reader", sorted(_special_readers(Path("."))))
def test_readers_refuse_special_files_without_opening_them(kind, reader, tmp_path):
    name, read = _special_readers(tmp_path)[reader]
    path = hostile_files.special_file(tmp_path, kind, name)
    error = hostile_files.finishes(lambda: read(path))
    assert isinstance(error, ModelFusionError), error
    assert "not a regular file" in str(error)


@pytest.mark.parametrize("kind", hostile_files.SPECIAL_KINDS)
def test_the_cli_refuses_special_files_in_one_line(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile_files.special_file(tmp_path, kind, "m.safetensors")
    hostile_files.special_file(tmp_path, kind, "x.npy")
    for argv in (["predict", "m.safetensors"], ["evaluate", "m.safetensors"], ["guard", "check", "m.safetensors"]):
        result = hostile_files.finishes(lambda argv=argv: _raise_result(CliRunner().invoke(app, argv)))
        assert isinstance(result, AssertionError) and "not a regular file" in str(result), result


def _raise_result(result) -> None:
    """Turn a CLI result into an exception carrying its one error line (for `finishes`)."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    raise AssertionError(lines[0])


# -- issue 23: a name from a file never becomes a path -----------------------------------------------------
TRAVERSAL_NAMES = {
    "absolute": "{outside}/victim",
    "traversal": "../../outside/victim",
    "NUL": "vic\x00tim",
    "newline": "vic\ntim",
    "very long": "v" * 256,  # the longest a header may hold: with the suffix, too long for a file name
    "reserved": "CON",
    "dot-dot": "..",
    "empty": "",
}


@pytest.mark.parametrize("kind", sorted(TRAVERSAL_NAMES))
def test_compress_writes_a_member_named_by_its_file_inside_its_output(kind, tmp_path, trained_mlp, monkeypatch):
    from modelfusion.io import save_member
    from modelfusion.members import TorchMember

    from .conftest import MLP_KWARGS

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "marker.txt").write_text("the user's file\n")
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    name = TRAVERSAL_NAMES[kind].replace("{outside}", str(outside))
    member = TorchMember(trained_mlp, name="m", factory="mlp", factory_kwargs=MLP_KWARGS)
    path = save_member(member, work / "m.safetensors")
    _, header = _tensors_and_header(path)
    header["name"] = name
    save_file(_tensors_and_header(path)[0], str(path), metadata={"modelfusion": json.dumps(header)})
    result = CliRunner().invoke(app, ["compress", "m.safetensors", "--method", "fp16", "--out", "c"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in outside.iterdir()) == ["marker.txt"]
    assert (outside / "marker.txt").read_text() == "the user's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "work"]
    assert sorted(p.name for p in work.iterdir()) == ["c", "m.safetensors"]
    written = [p for p in (work / "c").iterdir() if p.name != "results.json"]
    assert len(written) == 1 and written[0].suffix == ".safetensors" and not written[0].name.startswith(".")
    assert load_member(written[0]).name == f"{name or 'm'}_fp16"  # an empty name falls back to the stem


def _tensors_and_header(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["modelfusion"])


def test_a_fusion_folder_keeps_hostile_member_names_as_data(tmp_path, trained_mlp, digits_members, digits):
    import copy

    from modelfusion.ensemble import make_combiner
    from modelfusion.ensemble.fusion import load_fusion, save_fusion
    from modelfusion.members import TorchMember
    from modelfusion.predictions import collect_predictions

    from .conftest import MLP_KWARGS

    names = ["../../x", "/abs/y", "CON"]
    members = [TorchMember(trained_mlp, name=names[0], factory="mlp", factory_kwargs=MLP_KWARGS)]
    for member, name in zip(digits_members[1:], names[1:], strict=True):
        members.append(copy.copy(member))
        members[-1].name = name
    val = collect_predictions(members, digits.val.X, digits.val.y, "val", progress=False)
    folder = save_fusion(members, make_combiner("mean").fit(val), tmp_path / "fusion")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fusion"]
    loaded, _ = load_fusion(folder)
    assert [m.name for m in loaded] == names


# -- issue 23: text from files reaches the terminal as text ------------------------------------------------
HOSTILE_TEXT = [
    "a[/]b",
    "[bold red]x[/bold red]",
    "c\x1b]0;PWNED\x07\x1b[2J\x1b[31md",
    "e\re\u202ef",
    "[link=file:///etc]g",
]


def test_names_with_markup_and_control_codes_are_shown_escaped(tmp_path, trained_mlp, monkeypatch):
    from modelfusion.io import save_member
    from modelfusion.members import TorchMember
    from modelfusion.predictions import Predictions

    from .conftest import MLP_KWARGS

    monkeypatch.chdir(tmp_path)
    files = []
    for i, name in enumerate(HOSTILE_TEXT[:3]):
        member = TorchMember(trained_mlp, name=name, factory="mlp", factory_kwargs=MLP_KWARGS)
        files.append(str(save_member(member, tmp_path / f"m{i}.safetensors")))
    runs = [
        ["predict", *files, "--out", "p[/]x.safetensors"],
        ["evaluate", "p[/]x.safetensors"],
        ["ensemble", *files, "--method", "mean", "--out", "e[/]ns"],
        ["cascade", *files],
    ]
    for argv in runs:
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
        assert "\x1b" not in result.output and "\r" not in result.output and "\x07" not in result.output
        assert "a[/]b" in result.output or argv[0] == "predict", result.output
        assert "c\\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31md" in result.output or argv[0] == "predict", result.output
    assert "q[/]x.safetensors" in CliRunner().invoke(app, ["predict", files[0], "--out", "q[/]x.safetensors"]).output
    preds = Predictions.load(tmp_path / "p[/]x.safetensors")
    relabelled = Predictions(
        preds.outputs, preds.labels, preds.member_names, preds.task, "val\x1b[2J[/]", preds.classes
    )
    relabelled.save(tmp_path / "split.safetensors")
    result = CliRunner().invoke(app, ["evaluate", "split.safetensors"])
    assert result.exit_code == 0 and "val\\x1b[2J[/] split" in result.output, result.output


def test_errors_and_notes_with_markup_and_control_codes_stay_one_escaped_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in HOSTILE_TEXT:
        result = CliRunner().invoke(app, ["evaluate", f"{name}.safetensors"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert not any(c in result.output for c in "\x1b\r\x07\u202e"), result.output


def test_a_command_whose_stdout_is_closed_still_does_its_work(tmp_path):
    import subprocess
    import sys

    from modelfusion.predictions import Predictions

    preds = Predictions(torch.randn(2, 40, 3), torch.arange(40) % 3, ("a", "b"), "classification", "test")
    preds.save(tmp_path / "p.safetensors")
    command = f"{sys.executable} -m modelfusion.cli evaluate p.safetensors --json r.json >&-"
    done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["config"]["evaluation"]["split"] == "test"
