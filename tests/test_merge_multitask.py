"""WUDI-merging, EMR-merging and AdaMerging: their defining properties on small tensors and real modules."""

import copy
import sys

import pytest
import torch
from torch import nn

from modelfusion import CheckpointError, ConfigError
from modelfusion.merge import METHODS, merge_modules, merge_state_dicts
from modelfusion.merge.per_task import PerTaskMerge, merge_per_task


def _interference(merged: torch.Tensor, deltas: list[torch.Tensor]) -> float:
    """WUDI's objective: sum_i ||(T - tau_i) tau_i^T||^2 / ||tau_i||^2."""
    return sum(float(((merged - d) @ d.T).square().sum() / d.square().sum()) for d in deltas)


# -- WUDI ---------------------------------------------------------------------------------------------------
def test_wudi_keeps_a_lone_task_vector_and_the_sum_of_orthogonal_ones():
    """Where the sum is already optimal, Adam only jitters around it: its steps do not shrink with the gradient,
    so the entries stay within about two steps (2 * lr * the mean entry) of it."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=generator)
    tau = torch.randn(6, 8, generator=generator)
    close = {"rtol": 0, "atol": 2 * 0.02 * float(tau.abs().mean())}
    torch.testing.assert_close(METHODS["wudi"]([base + tau], base), base + tau, **close)  # no interference
    # task vectors whose rows span disjoint input subspaces do not interfere: their sum is already optimal
    a, b = torch.zeros(6, 8), torch.zeros(6, 8)
    a[:, :4], b[:, 4:] = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    torch.testing.assert_close(METHODS["wudi"]([base + a, base + b], base), base + a + b, **close)


def test_wudi_lowers_the_interference_of_overlapping_task_vectors():
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(16, 12, generator=generator)
    shared = torch.randn(16, 12, generator=generator)
    deltas = [shared + 0.5 * torch.randn(16, 12, generator=generator) for _ in range(4)]
    merged = METHODS["wudi"]([base + d for d in deltas], base) - base
    total = sum(deltas)
    assert _interference(merged, deltas) < 0.2 * _interference(total, deltas)
    assert _interference(merged, deltas) < _interference(total / 4, deltas)  # better than the mean, too
    # more steps go further down the same objective; none is task arithmetic's sum
    longer = METHODS["wudi"]([base + d for d in deltas], base, steps=1000) - base
    assert _interference(longer, deltas) <= _interference(merged, deltas)
    torch.testing.assert_close(METHODS["wudi"]([base + d for d in deltas], base, steps=0), base + total)


def test_wudi_gets_a_wide_matrixs_targets_from_its_rows_as_from_its_gram_matrices(monkeypatch):
    """A matrix whose `[K, in, in]` Gram matrices would be large takes the route through the whole task vectors
    (bounded memory at scale); both routes solve the same problem, streamed in blocks of rows or whole."""
    wudi_module = sys.modules["modelfusion.merge.methods.wudi"]
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(5, 12, generator=generator)
    shared = torch.randn(5, 12, generator=generator)
    tunes = [base + shared + 0.5 * torch.randn(5, 12, generator=generator) for _ in range(3)]
    routes = []
    for name in ("_targets_from_grams", "_targets_from_rows"):
        original = getattr(wudi_module, name)
        monkeypatch.setattr(
            wudi_module, name, lambda *args, name=name, original=original: routes.append(name) or original(*args)
        )
    by_grams = METHODS["wudi"](tunes, base, steps=50)
    monkeypatch.setattr(wudi_module, "_GRAM_ENTRIES", 3 * 12 * 12 - 1)
    by_rows = METHODS["wudi"](tunes, base, steps=50)
    assert routes == ["_targets_from_grams", "_targets_from_rows"]
    torch.testing.assert_close(by_rows, by_grams, rtol=0, atol=1e-6)
    assert not torch.allclose(by_rows, sum(tunes) - 2 * base)  # Adam moved it from the sum


def test_wudi_averages_what_is_not_a_matrix_and_checks_its_settings():
    base, a, b = torch.zeros(5), torch.ones(5), 3 * torch.ones(5)
    torch.testing.assert_close(METHODS["wudi"]([a, b], base, scale=0.5), torch.ones(5))
    with pytest.raises(ConfigError, match="steps is a whole number"):
        METHODS["wudi"]([a, b], base, steps=-1)
    with pytest.raises(ConfigError, match="needs a base model"):
        METHODS["wudi"]([a, b])


# -- EMR ----------------------------------------------------------------------------------------------------
def test_emr_elects_masks_and_rescales_as_the_paper_says():
    base = {"w": torch.zeros(4)}
    tunes = [{"w": torch.tensor([0.5, -0.2, 1.0, 0.0])}, {"w": torch.tensor([0.3, 0.4, -2.0, 0.1])}]
    merged = merge_per_task(tunes, base=base, tasks=["a", "b"])
    # mean signs: +, +, -, +; the largest agreeing magnitude per entry: 0.5, 0.4, 2.0, 0.1
    torch.testing.assert_close(merged.unified["w"], torch.tensor([0.5, 0.4, -2.0, 0.1]))
    assert merged.masks["a"]["w"].tolist() == [True, False, False, False]
    assert merged.masks["b"]["w"].tolist() == [True, True, True, True]
    # rescaler: mean |tau| over mean |mask * unified|: a: 0.425 / 0.125; b: 0.7 / 0.75
    assert merged.rescalers["a"] == pytest.approx(0.425 / 0.125)
    assert merged.rescalers["b"] == pytest.approx(0.7 / 0.75)
    torch.testing.assert_close(merged.state_dict("a")["w"], torch.tensor([0.5 * 3.4, 0.0, 0.0, 0.0]))
    with pytest.raises(ConfigError, match="no task 'c'"):
        merged.state_dict("c")


def test_emr_with_one_task_gives_the_fine_tune_back_and_keeps_buffers():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    tune = copy.deepcopy(base)
    with torch.no_grad():
        for p in tune.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    merged = merge_per_task([tune], base=base)
    state = merged.state_dict("0")
    for name, value in tune.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(state[name], value)
    assert torch.equal(state["1.num_batches_tracked"], base.state_dict()["1.num_batches_tracked"])


def test_emr_task_models_beat_task_arithmetic_on_conflicting_tasks():
    """Two tasks that pull a linear map in opposite directions: one merged map serves neither, EMR's per-task
    masks give each its own."""
    generator = torch.Generator().manual_seed(3)
    base = nn.Linear(10, 3)
    X = torch.randn(200, 10, generator=generator)
    targets = [torch.randn(10, 3, generator=generator) for _ in range(2)]
    tunes = []
    for target in targets:
        tune = copy.deepcopy(base)
        with torch.no_grad():
            tune.weight.copy_(target.T)
        tunes.append(tune)
    merged = merge_per_task(tunes, base=base)
    averaged = merge_state_dicts(tunes, method="task_arithmetic", base=base, lambda_=0.5)
    for index, target in enumerate(targets):
        own = merged.state_dict(str(index))["weight"]
        error_emr = (X @ own.T - X @ target).square().mean()
        error_ta = (X @ averaged["weight"].T - X @ target).square().mean()
        assert error_emr < 0.75 * error_ta


def test_emr_file_round_trip_and_refusals(tmp_path):
    generator = torch.Generator().manual_seed(4)
    base = {"w": torch.randn(5, 3, generator=generator), "steps": torch.tensor(7)}
    tunes = [{"w": base["w"] + torch.randn(5, 3, generator=generator), "steps": torch.tensor(7)} for _ in range(3)]
    merged = merge_per_task(tunes, base=base, tasks=["x", "y", "z"])
    path = merged.save(tmp_path / "emr.safetensors")
    loaded = PerTaskMerge.load(path)
    assert loaded.tasks == ("x", "y", "z") and loaded.rescalers == merged.rescalers
    for task in merged.tasks:
        assert all(torch.equal(loaded.state_dict(task)[k], v) for k, v in merged.state_dict(task).items())
    assert merged.task_state_bytes == 2 + 4  # 15 bits in 2 bytes, and a float32 rescaler
    with pytest.raises(Exception, match="exists"):
        merged.save(path)
    from modelfusion.merge.per_task import _KEY
    from tests.test_fuzz import _safetensors_bytes

    bad = {"method": "emr", "tasks": ["x", "x"], "rescalers": [1.0, 1.0]}
    (tmp_path / "bad.safetensors").write_bytes(_safetensors_bytes({"base.w": torch.zeros(2)}, _KEY, bad))
    with pytest.raises(CheckpointError, match="task names repeat"):
        PerTaskMerge.load(tmp_path / "bad.safetensors")
    missing = {"method": "emr", "tasks": ["x"], "rescalers": [1.0]}
    tensors = {"base.w": torch.zeros(9), "unified.w": torch.zeros(9), "mask.0.w": torch.zeros(1, dtype=torch.uint8)}
    (tmp_path / "short.safetensors").write_bytes(_safetensors_bytes(tensors, _KEY, missing))
    with pytest.raises(CheckpointError, match="task 'x' has no valid mask for 'w'"):
        PerTaskMerge.load(tmp_path / "short.safetensors")


# -- AdaMerging ---------------------------------------------------------------------------------------------
def _tasks():
    """Two classification tasks on one backbone, fine-tuned briefly from a shared pretrained one."""
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    base = nn.Sequential(nn.Sequential(nn.Linear(6, 16), nn.Tanh()), nn.Linear(16, 3))
    models, data = [], []
    for task in range(2):
        X = torch.randn(128, 6, generator=generator) + task
        y = (X[:, task] > task).long() + (X[:, 2] > 0).long()
        model = copy.deepcopy(base)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(60):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            optimizer.step()
        models.append(model)
        data.append(X)
    return base, models, data


def _entropy(model: nn.Module, head: nn.Module, X: torch.Tensor) -> float:
    with torch.no_grad():
        log_p = torch.log_softmax(head(model[0](X)), dim=-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())


def test_adamerging_without_steps_is_task_arithmetic_at_its_initial_coefficient():
    base, models, data = _tasks()
    merged = merge_modules(models, "adamerging", data=data, base=base, task_specific=("1.",), steps=0, init=0.3)
    expected = merge_state_dicts(models, method="task_arithmetic", base=base, lambda_=0.3)
    for name, value in merged[0].state_dict().items():
        torch.testing.assert_close(value, expected["0." + name])


def test_adamerging_lowers_the_entropy_of_each_tasks_predictions():
    base, models, data = _tasks()
    start = merge_modules(models, "adamerging", data=data, base=base, task_specific=("1.",), steps=0)
    fitted = merge_modules(models, "adamerging", data=data, base=base, task_specific=("1.",), steps=150, lr=0.01)
    before = sum(_entropy(start, m[1], X) for m, X in zip(models, data, strict=True))
    after = sum(_entropy(fitted, m[1], X) for m, X in zip(models, data, strict=True))
    assert after < 0.9 * before
    with pytest.raises(ConfigError, match="pass base="):
        merge_modules(models, "adamerging", data=data)


# -- TALL masks -----------------------------------------------------------------------------------------------
def test_tall_masks_keep_each_tasks_dominant_entries_of_the_summed_task_vector():
    base = {"w": torch.zeros(3)}
    tunes = [{"w": torch.tensor([1.0, 0.1, -1.0])}, {"w": torch.tensor([0.2, 1.0, 1.0])}]
    merged = merge_per_task(tunes, base=base, method="tall_masks", tasks=["a", "b"], lambda_=0.5)
    torch.testing.assert_close(merged.unified["w"], torch.tensor([1.2, 1.1, 0.0]))
    # a: |1| >= 0.5 |0.2|, |0.1| < 0.5 |1|, |-1| >= 0.5 |1|; b: |0.2| < 0.5 |1|, |1| >= 0.5 |0.1|, |1| >= 0.5 |-1|
    assert merged.masks["a"]["w"].tolist() == [True, False, True]
    assert merged.masks["b"]["w"].tolist() == [False, True, True]
    torch.testing.assert_close(merged.state_dict("a")["w"], torch.tensor([1.2, 0.0, 0.0]))
    per_task = merge_per_task(tunes, base=base, method="tall_masks", tasks=["a", "b"], lambda_=[0.05, 10.0])
    assert per_task.masks["a"]["w"].tolist() == [True, True, True] and per_task.masks["b"]["w"].tolist()[:2] == [
        False,
        False,
    ]
    with pytest.raises(ConfigError, match="one per task"):
        merge_per_task(tunes, base=base, method="tall_masks", lambda_=[0.5])
