import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelfusion import ConfigError, IncompatibleModelsError, UnknownNameError
from modelfusion.align import (
    MATCHERS,
    PermutationSpec,
    Segment,
    align,
    barriers,
    capture_activations,
    derive_spec,
    interpolated_model,
    interpolation_curve,
    module_rule,
    permute,
    plot_interpolation,
    random_permutations,
    register_matcher,
    repair,
    weight_matching,
)
from modelfusion.models import cnn2d, mlp
from modelfusion.training import train_model


class Block(nn.Module):
    """A ResNet basic block; with `stride` 2 its shortcut is a 1x1 conv + BatchNorm."""

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()  # used twice, as torchvision's blocks do
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = Block(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x.view(-1, 1, 8, 8))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _with_random_statistics(model):
    """BatchNorm statistics and affine parameters away from their defaults, so permuting them is tested."""
    generator = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor in (module.running_mean, module.weight, module.bias):
                tensor.data = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            module.running_var.data = torch.rand(module.running_var.shape, generator=generator).double() + 0.5
    return model


class Branches(nn.Module):
    """Two branches concatenated along channels, then LayerNorm, GELU and a head."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Linear(64, 12), nn.Linear(64, 5)
        self.norm = nn.LayerNorm(17)
        self.head = nn.Linear(17, 10)

    def forward(self, x):
        return self.head(F.gelu(self.norm(torch.cat([torch.relu(self.left(x)), self.right(x)], dim=1))))


MODELS = {
    "mlp": lambda: mlp(64, 10, hidden=[32, 16]),
    "cnn_bn": lambda: cnn2d(channels=[4, 8], hidden=16),
    "resnet": TinyResNet,
    "concat": Branches,
}


def _randomly_permuted(name, *, torch_seed, samples, permutation_seed):
    """A float64 model of MODELS[name] in eval mode, inputs, its derived spec, and a randomly permuted copy."""
    torch.manual_seed(torch_seed)
    model = _with_random_statistics(MODELS[name]().double()).eval()
    x = torch.randn(samples, 64, dtype=torch.float64)
    spec = derive_spec(model, x)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(permute(model.state_dict(), spec, random_permutations(spec, seed=permutation_seed)))
    return model, x, spec, permuted


@pytest.mark.parametrize("name", MODELS)
def test_permuting_by_the_derived_spec_keeps_the_function(name):
    model, x, spec, permuted = _randomly_permuted(name, torch_seed=0, samples=16, permutation_seed=3)
    changed = [k for k, v in permuted.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert changed  # the units really moved
    assert (permuted(x) - model(x)).abs().max().item() < 1e-10


def test_concatenation_keeps_each_branch_its_own_group():
    spec = derive_spec(Branches(), torch.randn(2, 64)).to_dict()
    assert spec["groups"] == {"P_left": 12, "P_right": 5}
    assert spec["axes"]["head.weight"] == [None, ["P_left", "P_right"]]
    assert spec["axes"]["norm.weight"] == [["P_left", "P_right"]]


def test_residual_additions_tie_the_blocks_they_join():
    spec = derive_spec(TinyResNet(), torch.randn(2, 64))
    # stem, both layer1 blocks' outputs and their BatchNorms share one group; each block's inner conv has its own;
    # layer2 (a conv shortcut) starts a new group for its output.
    stem = spec.axes["stem.weight"][0][0].group
    assert spec.axes["layer1.0.bn2.weight"][0][0].group == stem
    assert spec.axes["layer1.1.conv2.weight"][0][0].group == stem
    assert spec.axes["layer2.conv1.weight"][1][0].group == stem
    assert spec.axes["layer2.shortcut.0.weight"][0][0].group == spec.axes["layer2.conv2.weight"][0][0].group
    assert spec.axes["fc.weight"][0] is None
    assert len(spec.groups) == 5  # stem/layer1, 3 inner convs, layer2's output


def test_derived_specs_equal_hand_written_ones():
    mlp_spec = {
        "groups": {"P_0": 32, "P_2": 16},
        "axes": {
            "0.weight": ["P_0", None],
            "0.bias": ["P_0"],
            "2.weight": ["P_2", "P_0"],
            "2.bias": ["P_2"],
            "4.weight": [None, "P_2"],
        },
    }
    derived = derive_spec(MODELS["mlp"](), torch.randn(2, 64)).to_dict()
    assert {k: derived[k] for k in ("groups", "axes")} == mlp_spec
    conv = {"P_1": 4, "P_4": 8, "P_9": 16}
    axes = {
        "1.weight": ["P_1", None, None, None],
        "1.bias": ["P_1"],
        **{f"2.{p}": ["P_1"] for p in ("weight", "bias", "running_mean", "running_var")},
        "4.weight": ["P_4", "P_1", None, None],
        "4.bias": ["P_4"],
        **{f"5.{p}": ["P_4"] for p in ("weight", "bias", "running_mean", "running_var")},
        "9.weight": ["P_9", {"group": "P_4", "inner": 16}],  # flatten: one channel order over 4 x 4 positions
        "9.bias": ["P_9"],
        "11.weight": [None, "P_9"],
    }
    derived = derive_spec(MODELS["cnn_bn"](), torch.randn(2, 64)).to_dict()
    assert derived["groups"] == conv and derived["axes"] == axes
    assert PermutationSpec.from_dict(derived).to_dict() == derived


@pytest.mark.parametrize("matcher", MATCHERS.names())
@pytest.mark.parametrize("name", MODELS)
def test_every_matcher_recovers_a_random_permutation_exactly(name, matcher):
    model, x, spec, shuffled = _randomly_permuted(name, torch_seed=1, samples=64, permutation_seed=5)
    found = MATCHERS[matcher](spec, model, shuffled, X=x)
    restored = permute(shuffled.state_dict(), spec, found)
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())
    by_align = align([model, shuffled], method=matcher, X=x, spec=spec)
    assert all(torch.equal(by_align.models[1].state_dict()[k], v) for k, v in model.state_dict().items())
    assert weight_matching(spec, model.state_dict(), shuffled.state_dict()).keys() == found.keys()


def test_a_matcher_registered_outside_the_package_is_dispatched_by_align(digits):
    seeds = []

    def identity_matching(spec, reference, other, *, X=None, seed=0):
        seeds.append(seed)
        return {group: torch.arange(size) for group, size in spec.groups.items()}

    register_matcher("test_identity", needs_inputs=False, weights_only=True)(identity_matching)
    try:
        models = []
        for seed in range(3):
            torch.manual_seed(seed)
            models.append(mlp(64, 10, hidden=[16]))
        result = align(models, method="test_identity", X=digits.train.X[:8], seed=10)
        assert seeds == [11, 12]
        for model, aligned in zip(models, result.models, strict=True):
            assert all(torch.equal(aligned.state_dict()[k], v) for k, v in model.state_dict().items())
    finally:
        MATCHERS.unregister("test_identity")


def test_unsupported_ops_and_bad_specs_are_clear_errors():
    class Transposing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 8)

        def forward(self, x):
            return self.fc(x).transpose(0, 1)

    with pytest.raises(ConfigError, match=r"transpose at node 'transpose' .* pass a hand-written spec"):
        derive_spec(Transposing(), torch.randn(2, 64))
    with pytest.raises(ConfigError, match="names group 'h9', which is not in groups"):
        PermutationSpec.from_dict({"groups": {"h1": 4}, "axes": {"0.weight": ["h9", None]}})
    with pytest.raises(ConfigError, match="unknown permutation spec keys"):
        PermutationSpec.from_dict({"groups": {}, "axis": {}})
    with pytest.raises(UnknownNameError, match="valid names: activation_matching, weight_matching"):
        align([mlp(64, 10), mlp(64, 10)], method="weights", X=torch.randn(2, 64))
    with pytest.raises(IncompatibleModelsError, match="does not have model 0's architecture"):
        align([mlp(64, 10, hidden=[8]), mlp(64, 10, hidden=[9])], X=torch.randn(2, 64))
    bad = PermutationSpec.from_dict({"groups": {"h": 5}, "axes": {"0.weight": ["h", None]}})
    with pytest.raises(Exception, match="permutes axis 0 of 0.weight as 5 entries, but it has 8"):
        align([mlp(64, 10, hidden=[8]), mlp(64, 10, hidden=[8])], spec=bad)


@pytest.fixture(scope="module")
def two_mlps(digits):
    """Two MLPs trained on digits from different initializations."""
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(train_model(mlp(64, 10, hidden=[64]), digits.train, digits.val, epochs=15, lr=3e-3, seed=seed))
    return models


def test_aligned_interpolation_beats_naive_and_never_changes_the_inputs(two_mlps, digits, tmp_path):
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in two_mlps]
    aligned = align(two_mlps, X=digits.train.X[:512])
    for model, state in zip(two_mlps, before, strict=True):
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, before[0][k]) for k, v in aligned.models[0].state_dict().items())

    naive = interpolation_curve(two_mlps[0], two_mlps[1], digits.val, points=5)
    matched = interpolation_curve(aligned.models[0], aligned.models[1], digits.val, points=5)
    assert matched[2]["loss"] < naive[2]["loss"]
    assert barriers(matched)["loss_barrier"] < barriers(naive)["loss_barrier"]
    assert naive[0] == matched[0] and abs(naive[-1]["loss"] - matched[-1]["loss"]) < 1e-5  # same endpoints
    png = plot_interpolation({"naive": naive, "weight matching": matched}, tmp_path / "curve.png")
    assert png.stat().st_size > 1000


def test_repair_restores_the_interpolated_unit_statistics(two_mlps, digits):
    aligned = align(two_mlps, X=digits.train.X[:512])
    merged = interpolated_model(aligned.models[0], aligned.models[1], 0.5)
    X = digits.train.X[:512]
    repair(merged, aligned.models, X, aligned.spec)

    def stats(model):
        acts = capture_activations(model, aligned.spec, X)  # post-ReLU of the hidden layer
        pre = model[0](X)
        return pre.mean(0), pre.std(0), acts

    merged_mean, merged_std, _ = stats(merged)
    ends = [stats(m) for m in aligned.models]
    torch.testing.assert_close(merged_mean, (ends[0][0] + ends[1][0]) / 2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged_std, (ends[0][1] + ends[1][1]) / 2, atol=1e-4, rtol=1e-4)


def test_several_models_align_to_a_reference_or_to_the_running_average(digits):
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(mlp(64, 10, hidden=[16]))
    for target in ("reference", "average"):
        result = align(models, X=digits.train.X[:64], target=target)
        assert len(result.models) == 3 and all(sorted(p["P_0"].tolist()) == list(range(16)) for p in result.perms)
    with pytest.raises(ConfigError, match="use method='weight_matching'"):
        align(models, X=digits.train.X[:64], target="average", method="activation_matching")


def test_align_command_and_the_align_option_of_merge_configs(two_mlps, digits, tmp_path):
    from typer.testing import CliRunner

    from modelfusion.cli import app
    from modelfusion.io import load_member, save_member
    from modelfusion.members import TorchMember
    from modelfusion.merge import merge

    kwargs = {"in_features": 64, "num_outputs": 10, "hidden": [64]}
    paths = [
        save_member(
            TorchMember(m, name=f"m{i}", factory="modelfusion.models:mlp", factory_kwargs=kwargs), tmp_path / f"m{i}"
        )
        for i, m in enumerate(two_mlps)
    ]
    out = tmp_path / "m1_aligned.safetensors"
    result = CliRunner().invoke(app, ["align", str(paths[0]), str(paths[1]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "aligned 1 unit groups by weight_matching" in result.output and "naive" in result.output
    aligned = load_member(out)
    assert aligned.name == "m1"  # the same model, its units reordered: same predictions
    torch.testing.assert_close(aligned.predict(digits.val.X), load_member(paths[1]).predict(digits.val.X))

    def merged_loss(extra: str) -> float:
        config = tmp_path / "merge.yaml"
        config.write_text(
            f"merge_method: linear\nmodels:\n  - model: m0.safetensors\n  - model: m1.safetensors\n{extra}"
        )
        merge(config, tmp_path / "merged", progress=False, overwrite=True)
        merged = load_member(tmp_path / "merged" / "model.safetensors")
        return F.cross_entropy(merged.predict(digits.val.X), digits.val.y).item()

    assert merged_loss("align: {method: weight_matching, dataset: digits}\n") < merged_loss("")
    with pytest.raises(ConfigError, match="unknown key 'align.metod'"):
        merged_loss("align: {metod: weight_matching}\n")


def test_one_rule_makes_derive_spec_support_a_new_operation():
    model = nn.Sequential(nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 3))  # Softplus: no built-in rule
    with pytest.raises(ConfigError, match="module Softplus at node"):
        derive_spec(model, torch.randn(2, 6))
    module_rule(nn.Softplus)(lambda walk, node, module, incoming: walk.tap(incoming, node))  # channel-wise
    spec = derive_spec(model, torch.randn(2, 6))
    assert spec.groups == {"P_0": 5} and spec.axes["2.weight"] == (None, (Segment("P_0", 5),))
    assert spec.taps["P_0"] == ["_0", "_1"]
