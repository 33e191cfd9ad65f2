import pytest
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from modelfusion import CheckpointError, ConfigError, InvalidInputError, UnknownNameError
from modelfusion._modules import truncate
from modelfusion.features import FUSIONS, FeatureFusion, splice
from modelfusion.features.splice import spliced_model
from modelfusion.io import load_member, save_member
from modelfusion.members import TorchMember
from modelfusion.models import cnn2d, mlp
from modelfusion.training import train_model

CNN_KWARGS = {"channels": [4, 8], "hidden": 16}


@pytest.fixture
def backbones():
    torch.manual_seed(0)
    return {"cnn": cnn2d(**CNN_KWARGS), "mlp": mlp(64, 10, hidden=[24])}


def _captured(model, name, x):
    """The output of `model`'s module `name` on `x`, by a forward hook on the whole model."""
    out = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda _m, _i, o: out.setdefault("o", o))
    model.eval()
    with torch.no_grad():
        model(x)
    handle.remove()
    return out["o"]


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_every_fusion_gives_shapes_and_gradients(fusion, backbones, digits):
    x = digits.train.X[:16]
    fused = FeatureFusion(backbones, x, layers=["10", "1"], fusion=fusion, width=12, head=10)
    out = fused(x)
    assert out.shape == (16, 10)
    nn.functional.cross_entropy(out, digits.train.y[:16]).backward()
    trained = [p for n, p in fused.named_parameters() if not n.startswith("trunks.")]
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert all(not p.requires_grad for p in fused.trunks.parameters())
    assert all(p.requires_grad for b in backbones.values() for p in b.parameters())  # the caller's are untouched
    assert fused.sources(x).shape == (16, 2, 12)


def test_attention_weights_are_inspectable_and_sum_to_one(backbones, digits):
    x = digits.train.X[:8]
    fused = FeatureFusion(list(backbones.values()), x, fusion="attention", width=6, head=10)
    fused(x)
    weights = fused.fusion.last_weights
    assert weights.shape == (8, 2) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(8))


def test_shared_layers_multi_task_heads_and_trainable_backbones(backbones, digits):
    x = digits.train.X[:4]
    fused = FeatureFusion(
        backbones, x, fusion="concat", width=8, shared=[20], head={"digit": 10, "parity": 2}, freeze_backbones=False
    )
    out = fused(x)
    assert set(out) == {"digit", "parity"} and out["digit"].shape == (4, 10) and out["parity"].shape == (4, 2)
    (out["digit"].sum() + out["parity"].sum()).backward()
    assert all(p.grad is not None for p in fused.trunks.parameters())


def test_frozen_backbones_do_not_change_while_the_fusion_trains(backbones, trained_mlp, digits):
    backbones = {"cnn": backbones["cnn"], "mlp": trained_mlp}  # a random CNN beside a trained MLP
    fused = FeatureFusion(backbones, digits.train.X[:4], layers=["10", "1"], fusion="gating", width=16)
    before = {k: v.clone() for k, v in fused.trunks.state_dict().items()}  # BatchNorm statistics included
    train_model(fused, digits.train, digits.val, epochs=8, lr=1e-2, seed=0)
    after = fused.trunks.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    def accuracy(model):
        return (model(digits.test.X).argmax(1) == digits.test.y).float().mean().item()

    assert accuracy(fused) > accuracy(trained_mlp) + 0.02  # the fusion adds to the trained MLP's features


def test_fusion_errors_name_the_problem(backbones, digits):
    x = digits.train.X[:4]
    with pytest.raises(ConfigError, match=r"has no module named 'conv9'; its modules are: 0, 1, 2"):
        FeatureFusion(backbones, x, layers=["conv9", "1"])
    with pytest.raises(ConfigError, match="got 1 layer names for 2 backbones"):
        FeatureFusion(backbones, x, layers=["1"])
    with pytest.raises(UnknownNameError, match="valid names: .*attention"):
        FeatureFusion(backbones, x, fusion="atention")
    with pytest.raises(InvalidInputError, match="a head does not take the fused width 8"):
        FeatureFusion(backbones, x, fusion="sum", width=8, head=nn.Linear(5, 10))
    with pytest.raises(
        InvalidInputError, match=r"backbone 'cnn' failed on the example input \(2, 30\): shape .* is invalid"
    ):
        FeatureFusion(backbones, torch.zeros(2, 30))


def test_truncate_by_fx_matches_a_hook_and_falls_back_for_untraceable_models(digits):
    torch.manual_seed(0)
    model = cnn2d(**CNN_KWARGS).eval()
    x = digits.train.X[:5]
    cut = truncate(model, "7")
    assert isinstance(cut, torch.fx.GraphModule) and "9" not in dict(cut.named_modules())
    torch.testing.assert_close(cut(x), _captured(model, "7", x))

    class Branchy(nn.Module):  # data-dependent control flow: fx cannot trace it
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Linear(64, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.first(x)
            return self.second(h) if h.sum() > 0 else -self.second(h)

    branchy = Branchy()
    torch.testing.assert_close(truncate(branchy, "first")(x), branchy.first(x))


def test_splice_at_every_layer_of_a_small_model(digits):
    torch.manual_seed(0)
    backbone = cnn2d(**CNN_KWARGS).eval()
    x = digits.train.X[:6]
    for name, _ in list(backbone.named_children()):
        model = splice(backbone, 5, at=name, example_input=x).eval()
        assert model(x).shape == (6, 5), name
        torch.testing.assert_close(model.backbone(x), _captured(backbone, name, x))


def test_spliced_model_is_a_copy_and_round_trips_through_safetensors(digits, tmp_path):
    torch.manual_seed(0)
    backbone = cnn2d(**CNN_KWARGS)
    original = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = splice(backbone, 10, at="8", example_input=digits.train.X[:2])
    train_model(model, digits.train, digits.val, epochs=1, seed=0)
    assert all(torch.equal(original[k], v) for k, v in backbone.state_dict().items())

    save_model(model, str(tmp_path / "plain.safetensors"))
    torch.manual_seed(1)
    again = splice(cnn2d(**CNN_KWARGS), 10, at="8", example_input=digits.train.X[:2])
    load_model(again, str(tmp_path / "plain.safetensors"))
    x = digits.test.X[:20]
    torch.testing.assert_close(again.eval()(x), model.eval()(x))

    kwargs = {
        "backbone": "modelfusion.models:cnn2d",
        "backbone_kwargs": CNN_KWARGS,
        "at": "8",
        "num_outputs": 10,
        "in_features": 64,
    }
    path = save_member(
        TorchMember(model, name="spliced", factory="spliced", factory_kwargs=kwargs),
        tmp_path / "member.safetensors",
    )
    torch.testing.assert_close(load_member(path).predict(x), model(x).detach())
    with pytest.raises(CheckpointError, match="backbone names the model factory 'os:system', which is not registered"):
        spliced_model("os:system", {}, "1", 3, 64)


def test_splice_errors(digits):
    backbone = mlp(64, 10, hidden=[24])
    with pytest.raises(ConfigError, match="has no module named 'fc'; its modules are: 0, 1, 2"):
        splice(backbone, 3, at="fc", example_input=digits.train.X[:2])
    with pytest.raises(InvalidInputError, match=r"flattened width 24"):
        splice(backbone, nn.Linear(7, 3), at="1", example_input=digits.train.X[:2])
    built = splice(backbone, lambda width: nn.Sequential(nn.Linear(width, 4)), at="1", example_input=digits.train.X[:2])
    assert built(digits.train.X[:3]).shape == (3, 4)
