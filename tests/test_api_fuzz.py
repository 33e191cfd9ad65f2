"""Property-based fuzzing of the public Python API: each public function, called with some of its arguments
replaced by values of the wrong type or out of range, returns or raises a `ModelFusionError` (one line), never
`TypeError`, `AttributeError` or another library's error. The arguments not replaced are valid and small, so
that a call whose replaced values happen to be valid runs to the end quickly."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfusion import ArgumentError, ModelFusionError
from modelfusion.datasets import Split
from modelfusion.distill import ModelTeacher, distill
from modelfusion.ensemble import load_fusion_member, make_combiner, save_fusion
from modelfusion.evaluate import evaluate
from modelfusion.guard import InputGuard
from modelfusion.io import load_member, save_member
from modelfusion.members import TorchMember
from modelfusion.merge import merge, merge_state_dicts
from modelfusion.models import mlp
from modelfusion.predictions import Predictions, collect_predictions

from .test_fuzz import FAST_EXAMPLES, SLOW_EXAMPLES

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KWARGS = {"in_features": 4, "num_outputs": 3, "hidden": [5]}
# Values of the wrong type (or out of range) for any argument: nothing a public function should take silently
# or choke on. Whole numbers stay small: a huge but valid count (epochs=10**18) is a request to run for ever, not
# a mistake a check could refuse; huge numbers that are wrong (negative, past 64 bits) are drawn on their own.
JUNK = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-1000, max_value=1000)
    | st.sampled_from([-(2**63), -(10**30), 2**64])
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=8)
    | st.lists(st.integers() | st.text(max_size=3), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
    | st.builds(object)
)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> dict[str, tuple[Callable, dict]]:
    """Each public function -> (the function, valid keyword arguments for a small call)."""
    folder = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    X, y = torch.randn(12, 4), torch.arange(12) % 3
    split = Split("val", X, y)
    member = TorchMember(mlp(**KWARGS), name="m", factory="modelfusion.models:mlp", factory_kwargs=KWARGS)
    checkpoint = save_member(member, folder / "m.safetensors")
    preds = collect_predictions([member, load_member(checkpoint, name="n")], X, y, "val", progress=False)
    preds.save(folder / "preds.safetensors")
    fusion = save_fusion([member, load_member(checkpoint, name="n")], make_combiner("mean").fit(preds), folder / "f")
    guard = InputGuard([member]).fit(Split("train", torch.randn(40, 4), torch.arange(40) % 3), split)
    guard.save(folder / "guard.safetensors")
    config = folder / "merge.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {checkpoint}\n  - model: {checkpoint}\n")
    state = member.module.state_dict()

    def fit_mean(**kwargs):
        return make_combiner("mean").fit(**kwargs)

    def predictions(**kwargs):
        return Predictions(**kwargs)

    return {
        "load_member": (load_member, {"path": checkpoint, "batch_size": 8, "classes": None, "name": None}),
        "save_member": (save_member, {"member": member, "path": "saved.safetensors", "overwrite": True}),
        "Predictions.load": (Predictions.load, {"path": folder / "preds.safetensors"}),
        "load_fusion_member": (load_fusion_member, {"path": fusion, "name": "fused"}),
        "Predictions": (
            predictions,
            {"outputs": preds.outputs, "labels": y, "member_names": ("a", "b"), "task": "classification", "split": "v"},
        ),
        "collect_predictions": (
            collect_predictions,
            {"members": [member], "X": X, "y": y, "split": "val", "batch_size": 4, "progress": False},
        ),
        "Combiner.fit": (fit_mean, {"preds": preds}),
        "evaluate": (evaluate, {"preds": preds, "n_resamples": 10, "confidence": 0.9, "seed": 0}),
        "merge": (merge, {"config": config, "out_dir": "merged", "overwrite": True, "progress": False}),
        "merge_state_dicts": (merge_state_dicts, {"models": [state, state], "method": "linear"}),
        "InputGuard.load": (InputGuard.load, {"path": folder / "guard.safetensors", "members": [member]}),
        "distill": (
            distill,
            {
                "student": mlp(**KWARGS),
                "teacher": ModelTeacher(member.module),
                "train": split,
                "val": split,
                "epochs": 1,
                "batch_size": 8,
                "progress": False,
            },
        ),
    }


def _call_with_junk(api, target: str, folder: Path, replaced: dict) -> None:
    function, valid = api[target]
    kwargs = {**valid, **{name: value for name, value in replaced.items() if name in valid}}
    before = Path.cwd()
    os.chdir(folder)  # a junk text given as a path lands here, never beside the project
    try:
        function(**kwargs)
    except ModelFusionError as err:
        assert "\n" not in str(err), str(err)
    finally:
        os.chdir(before)


def _fuzz_api(examples: int):
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    def test(api, tmp_path, data):
        target = data.draw(st.sampled_from(sorted(api)), label="function")
        names = data.draw(st.lists(st.sampled_from(sorted(api[target][1])), min_size=1, unique=True), label="wrong")
        replaced = {name: data.draw(JUNK, label=name) for name in names}
        _call_with_junk(api, target, tmp_path, replaced)

    return test


test_public_functions_refuse_wrong_arguments_in_one_line = _fuzz_api(FAST_EXAMPLES * 5)
test_public_functions_refuse_wrong_arguments_in_one_line_slow = pytest.mark.slow(_fuzz_api(SLOW_EXAMPLES // 5))


@pytest.mark.parametrize(
    "target, replaced, match",
    [
        ("load_member", {"path": None}, "argument 'path' must be a path (text or os.PathLike), got NoneType None"),
        ("load_member", {"path": b"/x"}, "argument 'path' must be a path (text or os.PathLike), got bytes b'/x'"),
        ("load_member", {"batch_size": 0}, "argument 'batch_size' must be at least 1, got 0"),
        ("load_member", {"batch_size": -1}, "argument 'batch_size' must be at least 1, got -1"),
        ("load_member", {"batch_size": "8"}, "argument 'batch_size' must be a whole number, got str '8'"),
        ("load_member", {"classes": 5}, "argument 'classes' must be a Sequence or None, got int 5"),
        ("save_member", {"overwrite": "no"}, "argument 'overwrite' must be true or false, got str 'no'"),
        ("Predictions.load", {"path": None}, "Predictions.load: argument 'path'"),
        ("load_fusion_member", {"path": 5}, "load_fusion_member: argument 'path' must be a path"),
        ("Predictions", {"outputs": [[[0.1, 0.9]]]}, "Predictions: outputs must be a torch.Tensor, got list"),
        ("Predictions", {"member_names": "ab"}, "member_names must be a list of names (text), got str 'ab'"),
        ("Combiner.fit", {"preds": None}, "Combiner.fit: argument 'preds' must be a Predictions"),
        ("merge", {"config": 123}, "argument 'config' must be a MergeConfig or a path (text or os.PathLike), got int"),
        ("save_member", {"path": ""}, "argument 'path' is empty; name a file or folder, got ''"),
        ("save_member", {"path": "a\x00b"}, "argument 'path' holds a NUL character"),
        ("merge", {"out_dir": None}, "argument 'out_dir' must be a path (text or os.PathLike), got NoneType"),
        (
            "merge",
            {"config": {"merge_method": "linear", "bogus": 1}},
            "argument 'config' as a MergeConfig: field 'bogus'",
        ),
        ("merge_state_dicts", {"models": [{"w": [1.0]}, {"w": [2.0]}]}, "merge_state_dicts: argument 'models'"),
        ("evaluate", {"preds": None}, "evaluate: argument 'preds' must be a Predictions"),
        (
            "collect_predictions",
            {"X": "text"},
            "argument 'X' must be a torch.Tensor or a np.ndarray or a Texts or a list[str], got str",
        ),
        ("InputGuard.load", {"path": None}, "InputGuard.load: argument 'path'"),
        ("distill", {"student": None}, "distill: argument 'student' must be a nn.Module, got NoneType"),
    ],
)
def test_wrong_arguments_found_by_the_hostile_run(api, tmp_path, target, replaced, match):
    """Issue 28's cases: each leaked a TypeError, AttributeError or ValueError, or was accepted."""
    function, valid = api[target]
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ArgumentError) as raised:
            function(**{**valid, **replaced})
    finally:
        os.chdir(before)
    assert match in str(raised.value)


def test_classes_that_do_not_fit_the_outputs_are_refused(api):
    _, valid = api["load_member"]
    member = load_member(valid["path"], classes=[1, 2])
    with pytest.raises(ModelFusionError, match=r"gives outputs of shape \(12, 3\) for its 2 classes"):
        member.predict(torch.randn(12, 4))
