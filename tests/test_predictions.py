import pytest
import torch
from torch import nn

from modelfusion import CheckpointError, IncompatibleModelsError, InvalidInputError
from modelfusion.members import TorchMember
from modelfusion.predictions import Predictions, collect_predictions


class Broken(nn.Module):
    """Returns NaN for every other sample, like a model whose weights blew up."""

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[::2] = float("nan")
        return out


def test_collect_runs_members_once_and_keeps_everything(digits_members, digits):
    preds = collect_predictions(digits_members, digits.val.X, digits.val.y, "val", batch_size=50, progress=False)
    assert preds.outputs.shape == (3, len(digits.val), 10) and preds.outputs.dtype == torch.float32
    assert preds.member_names == ("mlp", "logreg", "forest") and preds.split == "val"
    assert torch.equal(preds.labels, digits.val.y) and preds.classes == tuple(range(10))
    # Batching does not change the outputs.
    for k, member in enumerate(digits_members):
        torch.testing.assert_close(preds.outputs[k], member.predict(digits.val.X))
    probs = preds.probabilities()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, len(digits.val)))


def test_save_load_round_trip_is_exact(tmp_path, digits_members, digits):
    preds = collect_predictions(digits_members, digits.test.X, digits.test.y, "test", progress=False)
    path = preds.save(tmp_path / "sub" / "test.safetensors")
    loaded = Predictions.load(path)
    assert torch.equal(loaded.outputs, preds.outputs) and torch.equal(loaded.labels, preds.labels)
    assert (loaded.member_names, loaded.task, loaded.split, loaded.classes) == (
        preds.member_names,
        preds.task,
        preds.split,
        preds.classes,
    )
    assert [p.name for p in path.parent.iterdir()] == ["test.safetensors"]  # no temp file left


def test_regression_predictions_and_select():
    members = [TorchMember(nn.Linear(4, 1), name=f"r{i}", task="regression") for i in range(3)]
    preds = collect_predictions(members, torch.randn(9, 4), torch.randn(9), "val", progress=False)
    assert preds.outputs.shape == (3, 9) and preds.num_classes == 0
    picked = preds.select(["r2", "r0"])
    assert picked.member_names == ("r2", "r0") and torch.equal(picked.outputs[0], preds.outputs[2])
    with pytest.raises(InvalidInputError, match="probabilities exist only for classification"):
        preds.probabilities()
    with pytest.raises(InvalidInputError, match=r"no member named \['r9'\]"):
        preds.select(["r9"])


def test_nan_outputs_name_the_member(digits_members, digits):
    broken = TorchMember(Broken(), name="exploded", num_outputs=10)
    with pytest.raises(InvalidInputError, match="member 'exploded' produced .* NaN/inf values"):
        collect_predictions([*digits_members, broken], digits.val.X, progress=False)
    with pytest.raises(InvalidInputError, match="member 'm1' produced 1 NaN/inf"):
        Predictions(torch.tensor([[[0.0, 1.0]], [[float("inf"), 0.0]]]), None, ("m0", "m1"), "classification", "val")


def test_wrong_output_shape_names_the_member(digits):
    liar = TorchMember(nn.Linear(64, 7), name="liar", num_outputs=10)
    with pytest.raises(IncompatibleModelsError, match=r"member 'liar' gives outputs of shape \(360, 7\) for its 10"):
        collect_predictions([liar], digits.val.X, progress=False)


def test_bad_inputs(tmp_path, digits_members, digits):
    with pytest.raises(InvalidInputError, match="no samples"):
        collect_predictions(digits_members, digits.val.X[:0], progress=False)
    with pytest.raises(InvalidInputError, match="got 5 targets for 360 samples"):
        collect_predictions(digits_members, digits.val.X, digits.val.y[:5], progress=False)
    with pytest.raises(InvalidInputError, match="got 1 member names for 2"):
        Predictions(torch.zeros(2, 3, 4), None, ("a",), "classification", "val")
    with pytest.raises(InvalidInputError, match=r"must have 3 dims"):
        Predictions(torch.zeros(2, 3), None, ("a", "b"), "classification", "val")
    with pytest.raises(CheckpointError, match="no such file .expected a predictions file"):
        Predictions.load(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a saved Predictions"):
        Predictions.load(tmp_path / "other.safetensors")


def test_join_puts_two_pools_side_by_side(digits_members, digits):
    a = collect_predictions(digits_members[:1], digits.val.X, digits.val.y, "val", progress=False)
    b = collect_predictions(digits_members[1:], digits.val.X, digits.val.y, "val", progress=False)
    joined = a.join(b)
    assert joined.member_names == ("mlp", "logreg", "forest")
    assert torch.equal(joined.outputs[1:], b.outputs)
    other_split = collect_predictions(digits_members[1:], digits.test.X, digits.test.y, "test", progress=False)
    with pytest.raises(IncompatibleModelsError, match="same split"):
        a.join(other_split)
