import math

import pytest
import torch
from torch import nn

from modelfusion import ConfigError, IncompatibleModelsError, UnknownNameError
from modelfusion.merge import METHODS, merge_state_dicts
from modelfusion.merge.methods import sparsify
from modelfusion.merge.methods.sparsify import _Cut


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_linear_weighted_and_unnormalized():
    a, b = t(1.0, 2.0), t(3.0, 6.0)
    assert METHODS["linear"]([a, b]).tolist() == [2.0, 4.0]
    assert METHODS["linear"]([a, b], weight=[3, 1]).tolist() == [1.5, 3.0]
    assert METHODS["linear"]([a, b], weight=[1, 1], normalize=False).tolist() == [4.0, 8.0]
    with pytest.raises(ConfigError, match="sum to zero"):
        METHODS["linear"]([a, b], weight=[1, -1])
    with pytest.raises(ConfigError, match="got 3 values of 'weight' for 2 models"):
        METHODS["linear"]([a, b], weight=[1, 1, 1])
    assert METHODS["linear"]([a.half(), b.half()]).dtype == torch.float16


def test_slerp_hand_worked():
    base, other = t(1.0, 0.0), t(0.0, 1.0)
    torch.testing.assert_close(METHODS["slerp"]([other], base, t=0.5), t(math.sqrt(0.5), math.sqrt(0.5)))
    assert METHODS["slerp"]([other], base, t=0.0).tolist() == [1.0, 0.0]
    torch.testing.assert_close(METHODS["slerp"]([other], base, t=1.0), other)
    # Unequal norms: the sine coefficients multiply the original tensors.
    torch.testing.assert_close(METHODS["slerp"]([t(0.0, 4.0)], t(2.0, 0.0), t=0.5), t(2 * 0.5**0.5, 4 * 0.5**0.5))
    # Near-parallel: plain linear interpolation.
    near = t(1.0, 1e-4)
    torch.testing.assert_close(METHODS["slerp"]([near], base, t=0.25), 0.75 * base + 0.25 * near)
    with pytest.raises(ConfigError, match="exactly one other model"):
        METHODS["slerp"]([other, other], base)
    with pytest.raises(ConfigError, match="needs a base model"):
        METHODS["slerp"]([other])


def test_task_arithmetic_hand_worked():
    base = t(1.0, 1.0, 1.0)
    a, b = t(2.0, 1.0, 0.0), t(1.0, 3.0, 1.0)  # task vectors (1, 0, -1) and (0, 2, 0)
    assert METHODS["task_arithmetic"]([a, b], base).tolist() == [2.0, 3.0, 0.0]
    assert METHODS["task_arithmetic"]([a, b], base, weight=[1, 0.5], lambda_=2).tolist() == [3.0, 3.0, -1.0]


def test_ties_hand_worked():
    base = torch.zeros(4)
    deltas = [t(0.5, -0.1, 2.0, -1.0), t(-0.4, 0.3, 1.0, 0.2), t(0.2, 0.1, -0.5, 0.0)]
    # density 0.5 keeps the two largest |delta| of each: (2.0, -1.0), (-0.4, 1.0), (0.2, -0.5)
    # elected signs from the sums of kept entries (-0.2, 0, 2.5, -1.0): -, + (zero counts as +), +, -
    # disjoint mean of the agreeing kept entries: -0.4/1, nothing, (2+1)/2, -1/1
    merged = METHODS["ties"](deltas, base, density=0.5)
    torch.testing.assert_close(merged, t(-0.4, 0.0, 1.5, -1.0))


def test_dare_keeps_the_expected_share_and_rescales():
    delta = torch.ones(200_000)
    kept = sparsify(delta, 0.3, "random", rescale="inverse_density", seed=0)
    assert (kept != 0).float().mean().item() == pytest.approx(0.3, abs=0.005)
    assert kept.mean().item() == pytest.approx(1.0, abs=0.02)  # unbiased: E[mask / density] = 1
    l1 = sparsify(delta, 0.3, "random", rescale="l1", seed=0)
    assert l1.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)
    base = torch.zeros(1000)
    x = torch.randn(1000)
    a = METHODS["dare_ties"]([x, x], base, density=0.5, seed=3)
    assert torch.equal(a, METHODS["dare_ties"]([x, x], base, density=0.5, seed=3))
    assert not torch.equal(a, METHODS["dare_ties"]([x, x], base, density=0.5, seed=4))


def test_breadcrumbs_drops_the_top_and_the_bottom():
    delta = torch.arange(1, 101, dtype=torch.float32)  # magnitudes 1..100
    kept = sparsify(delta, 0.9, "breadcrumbs", gamma=0.05)
    # 90 kept: the top 5 (96..100) and the bottom 5 (1..5) are dropped
    assert kept.nonzero().flatten().add(1).tolist() == list(range(6, 96))


def test_selection_matches_a_full_sort_even_with_ties():
    generator = torch.Generator().manual_seed(0)
    for values in (torch.randn(10_000, generator=generator).abs(), torch.randint(0, 5, (1000,)).float()):
        for k in (1, 17, 500, 999):
            mask = _Cut.of(values, k).mask(values)
            assert int(mask.sum()) == k
            threshold = values.sort(descending=True).values[k - 1]
            assert bool((values[mask] >= threshold).all()) and bool((values[~mask] <= threshold).all())


def test_model_stock_extremes():
    base = torch.zeros(4)
    same = [t(1.0, 2.0, 0.0, 0.0), t(1.0, 2.0, 0.0, 0.0)]
    torch.testing.assert_close(METHODS["model_stock"](same, base), same[0])  # cos 1 -> t 1: the average
    orthogonal = [t(1.0, 0.0, 0.0, 0.0), t(0.0, 1.0, 0.0, 0.0)]
    torch.testing.assert_close(METHODS["model_stock"](orthogonal, base), base)  # cos 0 -> t 0: the base


def test_variants_lock_their_options():
    with pytest.raises(ConfigError, match="'ties' fixes consensus='sum'"):
        METHODS["ties"]([t(1.0)], t(0.0), consensus=None)
    with pytest.raises(UnknownNameError, match="unknown merge method 'tie'; valid names: breadcrumbs"):
        METHODS["tie"]


MODELS_TAKEN = {"slerp": 1, "nearswap": 1, "passthrough": 1, "nuslerp": 2}  # besides the base; else 3


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_on_a_small_model(name):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    count = MODELS_TAKEN.get(name, 3)
    models = [nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)) for _ in range(count)]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    taken = METHODS[name].parameters
    params = {"density": 0.5} if "density" in taken else {}
    if "weight" in taken:
        params["weight"] = [1.0 + i for i in range(count)]
    merged = merge_state_dicts(models, method=name, base=base, seed=1, **params)
    assert set(merged) == set(base.state_dict())
    assert merged["1.num_batches_tracked"].dtype == torch.int64
    for model, saved in zip(models, before, strict=True):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())  # inputs untouched
    fresh = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    fresh.load_state_dict(merged)


def test_merge_state_dicts_reports_every_mismatch():
    a = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)).state_dict()
    b = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2)).state_dict()
    with pytest.raises(
        IncompatibleModelsError, match=r"(?s)3 problems.*0\.weight: shape \(8, 4\) in model 0 but \(6, 4\)"
    ):
        merge_state_dicts([a, b], method="linear")


def test_cut_gives_the_same_selection_block_by_block():
    values = torch.randint(0, 7, (1000,)).float()  # many ties at the threshold
    whole = _Cut.of(values, 333).mask(values)
    cut = _Cut.of(values, 333)
    blocks = torch.cat([cut.mask(block) for block in values.split(128)])
    assert torch.equal(blocks, whole) and int(whole.sum()) == 333


def test_a_streamed_cut_equals_the_whole_one_even_when_its_sample_misses():
    generator = torch.Generator().manual_seed(1)
    cases = [torch.randn(40_000, generator=generator).abs(), torch.randint(0, 5, (40_000,)).float()]
    for values in cases:
        blocks = values.split(4096)
        for k in (1, 777, 20_000, 39_999):
            whole = _Cut.of(values, k)
            expected = whole.mask(values)
            for sample in (values[::7], torch.zeros(10)):  # a fair sample, and one that misses the band
                cut = _Cut.streamed(lambda blocks=blocks: iter(blocks), sample, values.numel(), k)
                got = torch.cat([cut.mask(block) for block in blocks])
                assert torch.equal(got, expected) and int(got.sum()) == k


def test_ties_streamed_over_row_blocks_equals_ties_in_memory(tmp_path):
    from safetensors.torch import load_file, save_file

    from modelfusion.merge import engine as engine_module
    from modelfusion.merge import merge_checkpoints

    generator = torch.Generator().manual_seed(2)
    base = {"w": torch.randn(600, 300, generator=generator), "b": torch.randn(300, generator=generator)}
    tunes = [{k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in base.items()} for _ in range(3)]
    paths = []
    for i, state in enumerate([base, *tunes]):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file(state, str(paths[-1]))
    expected = merge_state_dicts(tunes, method="ties", base=base, density=0.3)
    chunk = engine_module._CHUNK_BYTES
    engine_module._CHUNK_BYTES = 300 * 4 * 64  # 64 rows a block: "w" streams in 10 blocks
    try:
        merge_checkpoints(paths[1:], tmp_path / "out", "ties", base=paths[0], params={"density": 0.3}, progress=False)
    finally:
        engine_module._CHUNK_BYTES = chunk
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.equal(merged[k], v) for k, v in expected.items())


def test_kth_largest_is_exact_on_large_tensors():
    from modelfusion.merge.methods.sparsify import _kth_largest

    generator = torch.Generator().manual_seed(0)
    cases = [torch.randn(3_000_000, generator=generator).abs(), torch.randint(0, 9, (2_000_000,)).float()]
    for values in cases:
        n = values.numel()
        for k in (1, 1000, n // 3, n - 5):
            value, larger = _kth_largest(values, k)
            assert value.item() == values.kthvalue(n - k + 1).values.item() and larger == int((values > value).sum())


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_describes_itself(name):
    method = METHODS[name]
    assert method.name == name and method.reference
    assert set(method.per_model) <= set(method.parameters) and not set(method.fixed) & set(method.parameters)
    method.check({}, 2)  # the defaults alone are a valid configuration
    if method.family is not None:
        assert METHODS[method.family].fixed == {}  # the family's own method leaves every option free
    assert method.needs_base or not method.fixed


def test_the_method_by_position_still_works_with_a_deprecation_warning():
    a, b = {"w": torch.ones(3)}, {"w": torch.zeros(3)}
    with pytest.warns(DeprecationWarning, match=r"passing method to merge_state_dicts\(\) by position"):
        old = merge_state_dicts([a, b], "linear")
    assert torch.equal(old["w"], merge_state_dicts([a, b], method="linear")["w"])
    with pytest.raises(TypeError, match="multiple values for method"), pytest.warns(DeprecationWarning):
        merge_state_dicts([a, b], "linear", method="linear")
    with pytest.raises(TypeError, match="takes 1 positional arguments, got 3"):
        merge_state_dicts([a, b], "linear", "ties")
