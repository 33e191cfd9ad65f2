import pytest
import torch

from modelfusion import IncompatibleModelsError, InvalidInputError, NotFittedError, UnknownNameError
from modelfusion.ensemble import COMBINERS, Mean, make_combiner
from modelfusion.predictions import Predictions


def _classification(split="val"):
    # Two members, two samples, two classes; logits chosen so the probabilities are easy to read.
    probs = torch.tensor([[[0.9, 0.1], [0.4, 0.6]], [[0.5, 0.5], [0.2, 0.8]]])
    return Predictions(probs.log(), torch.tensor([0, 1]), ("a", "b"), "classification", split)


def test_meanability_hand_worked():
    fused = Mean().fit(_classification()).predict_proba(_classification("test"))
    torch.testing.assert_close(fused, torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    assert Mean().fit(_classification()).predict(_classification()).tolist() == [0, 1]


def test_mean_regression():
    preds = Predictions(
        torch.tensor([[1.0, 2.0], [3.0, 6.0]]), torch.tensor([2.0, 4.0]), ("a", "b"), "regression", "val"
    )
    assert Mean().fit(preds).predict(preds).tolist() == [2.0, 4.0]
    assert Mean().fit(preds).fuse(preds).tolist() == [2.0, 4.0]
    with pytest.raises(InvalidInputError, match="fitted for regression; use predict"):
        Mean().fit(preds).predict_proba(preds)


@pytest.mark.parametrize("name", COMBINERS.names())
def test_every_registered_combiner_fits_and_predicts(name, digits_members, digits):
    from modelfusion.predictions import collect_predictions

    val = collect_predictions(digits_members, digits.val.X, digits.val.y, "val", progress=False)
    test = collect_predictions(digits_members, digits.test.X, digits.test.y, "test", progress=False)
    combiner = make_combiner(name).fit(val)
    proba = combiner.predict_proba(test)
    assert proba.shape == (len(digits.test), 10)
    torch.testing.assert_close(proba.sum(1), torch.ones(len(digits.test)))
    assert combiner.member_names_ == val.member_names


def test_contract_errors():
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        Mean().predict_proba(_classification())
    fitted = Mean().fit(_classification())
    other = Predictions(torch.zeros(2, 2, 2), None, ("a", "c"), "classification", "test")
    with pytest.raises(IncompatibleModelsError, match=r"fitted on members \['a', 'b'\] but got \['a', 'c'\]"):
        fitted.predict_proba(other)
    with pytest.raises(UnknownNameError, match="unknown combiner 'avg'; valid names: mean"):
        make_combiner("avg")
