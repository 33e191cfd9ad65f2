import pytest
import torch
from torch import nn

from modelfusion import InvalidInputError
from modelfusion.merge import greedy_soup, uniform_soup


def _model(value: float) -> nn.Module:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_uniform_soup_averages_and_leaves_models_alone():
    models = [_model(1.0), _model(3.0)]
    soup = uniform_soup(models)
    assert soup.weight.tolist() == [[2.0, 2.0]]
    assert models[0].weight.tolist() == [[1.0, 1.0]] and soup is not models[0]


def test_greedy_soup_hand_worked():
    # Score: closeness of the weight to 2. Individual: 1.5 -> -0.5, 3.0 -> -1.0, 2.4 -> -0.4, 9.0 -> -7.
    # Order: 2.4, 1.5, 3.0, 9.0. {2.4, 1.5} -> 1.95 (-0.05, kept); {2.4, 1.5, 3.0} -> 2.3 (-0.3, dropped);
    # {2.4, 1.5, 9.0} -> 4.3 (dropped).
    models = [_model(1.5), _model(3.0), _model(2.4), _model(9.0)]

    def score(model):
        return -abs(model.weight[0, 0].item() - 2.0)

    result = greedy_soup(models, score)
    assert result.ingredients == [2, 0]
    assert result.model.weight[0, 0].item() == pytest.approx(1.95)
    assert [h["kept"] for h in result.history] == [True, True, False, False]


def test_empty_soup():
    with pytest.raises(InvalidInputError, match="at least one model"):
        uniform_soup([])
