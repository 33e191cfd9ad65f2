"""modelfusion.compress: weight-only quantization, half precision and pruning of trained models, saved and read
back with the same outputs."""

import pytest
import torch
from torch import nn

from modelfusion import ConfigError, InvalidInputError
from modelfusion.compress import COMPRESSORS, QuantizedLinear, compress
from modelfusion.io import load_member
from modelfusion.members import TorchMember
from modelfusion.models import cnn2d

from .conftest import MLP_KWARGS, MLP_SPEC


def _member(model, spec=MLP_SPEC, kwargs=MLP_KWARGS):
    return TorchMember(model, name="model", factory=spec, factory_kwargs=kwargs)


@pytest.mark.parametrize("bits, group", [(8, 0), (8, 16), (4, 0), (4, 8)])
def test_quantized_linear_packs_and_dequantizes_within_half_a_step(bits, group):
    torch.manual_seed(0)
    linear = nn.Linear(32, 6)
    layer = QuantizedLinear.of(linear, bits=bits, group_size=group)
    step = layer.scale.float().repeat_interleave(layer.group, dim=1)
    assert (layer.weight() - linear.weight).abs().le(step / 2 + 1e-6).all()
    assert layer.packed.numel() == 6 * 32 // (8 // bits)  # two int4 values per byte
    x = torch.randn(5, 32)
    torch.testing.assert_close(layer(x), x @ layer.weight().T + linear.bias)
    with pytest.raises(ConfigError, match="cannot take groups of 5"):
        QuantizedLinear.of(linear, bits=bits, group_size=5)


@pytest.mark.parametrize("method", COMPRESSORS.names())
def test_every_method_keeps_accuracy_shrinks_or_sparsifies_and_round_trips(method, trained_mlp, digits, tmp_path):
    member = _member(trained_mlp)
    before = {k: v.clone() for k, v in trained_mlp.state_dict().items()}
    result = compress(member, method)
    assert all(torch.equal(trained_mlp.state_dict()[k], v) for k, v in before.items())  # the original untouched
    fp32_bytes = sum(t.numel() * 4 for t in trained_mlp.state_dict().values())
    expected = {"int8-weight": 0.3, "int4": 0.2, "fp16": 0.51, "bf16": 0.51, "prune": 0.6}[method]
    assert result.size_bytes <= expected * fp32_bytes
    with torch.no_grad():
        original = trained_mlp.eval()(digits.test.X)
        compressed = result.model(digits.test.X)
    agree = (original.argmax(1) == compressed.argmax(1)).float().mean().item()
    assert compressed.dtype == torch.float32 and agree >= (0.9 if method == "prune" else 0.98)
    path = result.save(tmp_path / f"{method}.safetensors")
    loaded = load_member(path)
    assert loaded.factory == "compressed"
    torch.testing.assert_close(loaded.predict(digits.test.X), result.model(digits.test.X).detach())


def test_pruning_removes_the_smallest_weights_globally_or_per_layer(trained_mlp):
    for scope in ("global", "layer"):
        pruned = compress(trained_mlp, "prune", amount=0.7, scope=scope).model
        weights = [m.weight for m in pruned.modules() if isinstance(m, nn.Linear)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        assert zeros == int(0.7 * sum(w.numel() for w in weights)) or scope == "layer"
        if scope == "layer":
            assert all(int((w == 0).sum()) == int(0.7 * w.numel()) for w in weights)
        kept = torch.cat([w[w != 0].abs() for w in weights])
        removed = torch.cat(
            [
                o.weight[w == 0].abs()
                for o, w in zip([m for m in trained_mlp.modules() if isinstance(m, nn.Linear)], weights, strict=True)
            ]
        )
        if scope == "global":
            assert removed.max() <= kept.min()


def test_a_cnn_quantizes_its_linear_layers_and_keeps_its_convolutions(digits):
    torch.manual_seed(0)
    model = cnn2d().eval()
    result = compress(model, "int8-weight")
    assert sum(isinstance(m, QuantizedLinear) for m in result.model.modules()) == 2
    assert any(isinstance(m, nn.Conv2d) for m in result.model.modules())
    with torch.no_grad():
        assert torch.isfinite(result.model(digits.test.X[:8])).all()


def test_bad_requests_are_clear(trained_mlp, tmp_path):
    with pytest.raises(ConfigError, match="bad parameters"):
        compress(trained_mlp, "int4", bits=3)
    with pytest.raises(ConfigError, match="fraction of weights removed"):
        compress(trained_mlp, "prune", amount=1.5)
    with pytest.raises(InvalidInputError, match="needs the original as a member"):
        compress(trained_mlp, "fp16").save(tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="unknown compression method 'int3'"):
        compress(trained_mlp, "int3")
