import pytest
import torch

from modelfusion import ConfigError, InvalidInputError
from modelfusion.distill import ModelTeacher, OfflineTeacher
from modelfusion.ensemble import make_combiner
from modelfusion.members import TorchMember
from modelfusion.models import mlp
from modelfusion.predictions import collect_predictions


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return [mlp(64, 10, hidden=[16]) for _ in range(3)]


def test_one_model_teacher_gives_its_logits(nets):
    x = torch.randn(6, 64)
    with torch.no_grad():
        torch.testing.assert_close(ModelTeacher(nets[0]).logits(x), nets[0](x))


def test_several_models_average_probabilities_with_weights(nets):
    x = torch.randn(6, 64)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(n(x), 1) for n in nets])
    torch.testing.assert_close(torch.softmax(ModelTeacher(nets).logits(x), 1), probs.mean(0))
    weighted = torch.einsum("k,knc->nc", torch.tensor([0.5, 0.25, 0.25]), probs)
    torch.testing.assert_close(torch.softmax(ModelTeacher(nets, weights=[2, 1, 1]).logits(x), 1), weighted)
    with pytest.raises(ConfigError, match="3 finite non-negative numbers"):
        ModelTeacher(nets, weights=[1, 1])


def test_fitted_combiner_as_teacher_and_offline_teacher_agree(nets, digits):
    members = [TorchMember(n, name=f"n{i}") for i, n in enumerate(nets)]
    val = collect_predictions(members, digits.val.X, digits.val.y, "val", progress=False)
    train = collect_predictions(members, digits.train.X, digits.train.y, "train", progress=False)
    combiner = make_combiner("weighted").fit(val)
    live = ModelTeacher(members, combiner=combiner)
    offline = OfflineTeacher(train, combiner=combiner)
    index = torch.tensor([3, 0, 17])
    torch.testing.assert_close(
        offline.logits(digits.train.X[index], index), live.logits(digits.train.X[index]), atol=1e-5, rtol=1e-5
    )
    assert live.augmentable and not offline.augmentable
    plain = OfflineTeacher(train)
    torch.testing.assert_close(
        torch.softmax(plain.logits(digits.train.X[index], index), 1),
        train.probabilities()[:, index].mean(0),
        atol=1e-6,
        rtol=1e-5,
    )
    with pytest.raises(InvalidInputError, match="needs the batch's sample indices"):
        offline.logits(digits.train.X[index])
    with pytest.raises(ConfigError, match="either weights or a fitted combiner"):
        OfflineTeacher(train, combiner=combiner, weights=[1, 1, 1])
