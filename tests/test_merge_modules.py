"""modelfusion.merge.merge_modules: Fisher merging, RegMean and TSV on real modules, against closed forms."""

import sys

import pytest
import torch
from torch import nn

from modelfusion import ConfigError
from modelfusion.merge import METHODS, merge_modules, merge_state_dicts
from modelfusion.merge.modules import diagonal_fisher


def _least_squares(X, Y):
    return torch.linalg.lstsq(X, Y).solution  # [in, out]


def test_regmean_with_alpha_1_is_the_least_squares_fit_on_the_union_of_the_data():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    tasks = []
    for shift in (0.0, 2.0, -1.0):  # each model sees its own, differently distributed inputs
        X = torch.randn(40, 6, generator=generator, dtype=torch.float64) + shift
        Y = X @ truth + 0.3 * torch.randn(40, 3, generator=generator, dtype=torch.float64)
        tasks.append((X, Y))
    models = []
    for X, Y in tasks:
        layer = nn.Linear(6, 3, bias=False).double()
        layer.weight.data = _least_squares(X, Y).T
        models.append(layer)
    merged = merge_modules(models, "regmean", data=[X for X, _ in tasks], alpha=1.0)
    union = _least_squares(torch.cat([X for X, _ in tasks]), torch.cat([Y for _, Y in tasks]))
    torch.testing.assert_close(merged.weight.data.T, union)
    # and it beats the plain average of the weights on the union's squared error
    X_all, Y_all = torch.cat([X for X, _ in tasks]), torch.cat([Y for _, Y in tasks])
    averaged = torch.stack([m.weight.data for m in models]).mean(0)
    assert ((X_all @ merged.weight.data.T - Y_all) ** 2).sum() < ((X_all @ averaged.T - Y_all) ** 2).sum()
    assert all(m.weight.data.shape == (3, 6) for m in models)  # the inputs are untouched copies


def test_diagonal_fisher_matches_an_explicit_loop_over_samples_and_classes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    X = torch.randn(7, 4)
    fast = diagonal_fisher(model, X)
    slow = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    for x in X:
        log_p = torch.log_softmax(model(x[None]), dim=-1)[0]
        for c in range(3):
            model.zero_grad()
            log_p[c].backward(retain_graph=True)
            for k, v in model.named_parameters():
                slow[k] += log_p[c].exp().detach() * v.grad**2
    for k in slow:
        torch.testing.assert_close(fast[k], slow[k] / len(X), rtol=1e-4, atol=1e-7)


def test_fisher_merge_weighs_each_parameter_by_each_models_fisher():
    torch.manual_seed(1)
    models = [nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)) for _ in range(2)]
    data = [torch.randn(20, 4), torch.randn(20, 4) * 3]
    merged = merge_modules(models, "fisher", data=data)
    fishers = [diagonal_fisher(m, x) for m, x in zip(models, data, strict=True)]
    for name, value in merged.state_dict().items():
        w = [f[name].double() + 1e-8 for f in fishers]
        expected = (w[0] * models[0].state_dict()[name] + w[1] * models[1].state_dict()[name]) / (w[0] + w[1])
        torch.testing.assert_close(value, expected.float(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="needs data: one batch of inputs per model"):
        merge_modules(models, "fisher", data=data[:1])


def test_tsv_recovers_task_arithmetic_for_non_interfering_tasks_and_one_task():
    base = torch.randn(4, 4)
    one = torch.zeros(4, 4)
    one[:2, :2] = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    two = torch.zeros(4, 4)
    two[2:, 2:] = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    merged = METHODS["tsv"]([base + one, base + two], base)
    torch.testing.assert_close(merged, base + one + two, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(METHODS["tsv"]([base + one], base, alpha=0.5), base + 0.5 * one, rtol=1e-5, atol=1e-5)
    bias = torch.randn(4)
    torch.testing.assert_close(METHODS["tsv"]([bias + 1, bias + 3], bias), bias + 2)
    # interfering tasks: the shared direction is not counted twice, unlike task arithmetic's sum
    shared = torch.zeros(4, 4)
    shared[0, 0] = 1.0
    both = METHODS["tsv"]([base + shared, base + shared], base)
    assert (both - base).norm() < (2 * shared).norm()


def test_tsv_merges_a_wide_matrix_as_its_transpose_in_blocks_of_columns(monkeypatch):
    """A wide matrix is merged by blocks of its columns (bounded memory at scale); TSV commutes with the
    transpose, so the blocks give the tall transpose's merge."""
    tsv_module = sys.modules["modelfusion.merge.methods.tsv"]
    torch.manual_seed(0)
    base = torch.randn(6, 40, dtype=torch.float64)
    tunes = [base + 0.1 * torch.randn(6, 40, dtype=torch.float64) for _ in range(3)]
    tall = METHODS["tsv"]([t.T for t in tunes], base.T)
    monkeypatch.setattr(tsv_module, "_BLOCK_ENTRIES", 6 * 7)  # blocks of 7 columns: 6 blocks, the last short
    passes = []
    original = tsv_module._merged_updates

    def recorded(deltas_of, blocks, *args):
        passes.append([tuple(delta.shape) for rows in blocks for delta in deltas_of(rows)])
        return original(deltas_of, blocks, *args)

    monkeypatch.setattr(tsv_module, "_merged_updates", recorded)
    wide = METHODS["tsv"](tunes, base)
    assert passes == [[(7, 6)] * 3 * 5 + [(5, 6)] * 3]
    torch.testing.assert_close(wide, tall.T, rtol=0, atol=1e-12)


def test_data_free_methods_take_modules_or_state_dicts():
    torch.manual_seed(2)
    pretrained = nn.Linear(5, 3)
    tunes = [nn.Linear(5, 3) for _ in range(3)]
    merged = merge_modules(tunes, "tsv", base=pretrained)
    expected = merge_state_dicts([t.state_dict() for t in tunes], method="tsv", base=pretrained.state_dict())
    assert all(torch.equal(merged.state_dict()[k], v) for k, v in expected.items())
    assert merged is not pretrained and not torch.equal(merged.weight, pretrained.weight)
