"""modelfusion.compress: weight-only quantization, half precision and pruning of trained models, saved and read
back with the same outputs."""

import pytest
import torch
from torch import nn

from modelfusion import CheckpointError, ConfigError, InvalidInputError
from modelfusion.compress import COMPRESSORS, QuantizedConv, QuantizedLinear, compress
from modelfusion.io import load_member
from modelfusion.members import TorchMember
from modelfusion.models import cnn1d, cnn2d, mlp
from modelfusion.training import score_classifier, train_model

from .conftest import MLP_KWARGS, MLP_SPEC
from .test_align import TinyResNet


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
    result = compress(member, method=method, X=digits.train.X)
    assert all(torch.equal(trained_mlp.state_dict()[k], v) for k, v in before.items())  # the original untouched
    fp32_bytes = sum(t.numel() * 4 for t in trained_mlp.state_dict().values())
    # onnx-int8: the graph itself weighs much next to the 2,410 weights of this small MLP
    expected = {"int8": 0.3, "int8-weight": 0.3, "int4": 0.2, "fp16": 0.51, "bf16": 0.51, "onnx-int8": 0.8}.get(
        method, 0.6
    )
    assert result.size_bytes <= expected * fp32_bytes
    with torch.no_grad():
        original = trained_mlp.eval()(digits.test.X)
        compressed = result.model(digits.test.X)
    agree = (original.argmax(1) == compressed.argmax(1)).float().mean().item()
    least = {"prune": 0.85, "prune-wanda": 0.85, "prune-structured": 0.7}.get(method, 0.98)  # no recovery here
    assert compressed.dtype == torch.float32 and agree >= least
    path = result.save(tmp_path / f"{method}.safetensors")
    loaded = load_member(path)
    assert loaded.factory == ("compressed" if COMPRESSORS[method].file_format == "safetensors" else None)
    torch.testing.assert_close(loaded.predict(digits.test.X), result.model(digits.test.X).detach())


def test_pruning_removes_the_smallest_weights_globally_or_per_layer(trained_mlp):
    for scope in ("global", "layer"):
        pruned = compress(trained_mlp, method="prune", amount=0.7, scope=scope).model
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


@pytest.mark.parametrize("method, convolutions_in_int8", [("int8", True), ("int8-weight", True), ("int4", False)])
def test_a_cnn_quantizes_its_layers_and_round_trips(method, convolutions_in_int8, digits, tmp_path):
    torch.manual_seed(0)
    kwargs = {"channels": [8, 16], "hidden": 32}
    model = train_model(cnn2d(**kwargs), digits.train, digits.val, epochs=2, seed=0).eval()
    result = compress(TorchMember(model, name="cnn", factory="cnn2d", factory_kwargs=kwargs), method=method)
    modules = list(result.model.modules())
    assert sum(isinstance(m, QuantizedConv) for m in modules) == (2 if convolutions_in_int8 else 0)
    assert all(m.weight_int8.dtype == torch.int8 for m in modules if isinstance(m, QuantizedConv))
    fp32_bytes = sum(t.nbytes for t in model.state_dict().values())
    assert result.size_bytes < (0.3 if convolutions_in_int8 else 0.6) * fp32_bytes
    with torch.no_grad():
        expected, got = model(digits.test.X), result.model(digits.test.X)
    assert (expected.argmax(1) == got.argmax(1)).float().mean() >= 0.97
    loaded = load_member(result.save(tmp_path / "cnn"))
    torch.testing.assert_close(loaded.predict(digits.test.X), got)


def test_bad_requests_are_clear(trained_mlp, tmp_path):
    with pytest.raises(ConfigError, match="bad parameters"):
        compress(trained_mlp, method="int4", bits=3)
    with pytest.raises(ConfigError, match="fraction of weights removed"):
        compress(trained_mlp, method="prune", amount=1.5)
    with pytest.raises(InvalidInputError, match="needs the original as a member"):
        compress(trained_mlp, method="fp16").save(tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="unknown compression method 'int3'"):
        compress(trained_mlp, method="int3")


def _with_statistics(model, X):
    """BatchNorm statistics of real inputs (train mode, no gradient), then eval mode."""
    model.train()
    with torch.no_grad():
        model(X)
    return model.eval()


STRUCTURED = {
    "mlp": (lambda: mlp(64, 10, hidden=[32, 16]), {"0.weight": (16, 64), "2.weight": (8, 16), "4.weight": (10, 8)}),
    "cnn1d_batchnorm": (
        lambda: cnn1d(length=64, channels=16, batchnorm=True),
        {"1.weight": (8, 1, 5), "2.running_mean": (8,), "4.weight": (8, 8, 3), "11.weight": (10, 8 * 8)},
    ),
    "resnet": (TinyResNet, {"stem.weight": (4, 1, 3, 3), "layer2.conv1.weight": (8, 4, 3, 3), "fc.weight": (10, 8)}),
}


@pytest.mark.parametrize("name", STRUCTURED)
def test_structured_pruning_halves_every_hidden_group_and_round_trips(name, digits, tmp_path):
    build, expected_shapes = STRUCTURED[name]
    torch.manual_seed(0)
    model = _with_statistics(build(), digits.train.X)
    member = TorchMember(model, name=name)
    result = compress(member, method="prune-structured", X=digits.train.X, amount=0.5)
    state = result.model.state_dict()
    assert all(p.requires_grad for p in result.model.parameters())  # shrunk parameters still train
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    parameters = sum(t.numel() for t in result.model.parameters())
    assert parameters < 0.5 * sum(t.numel() for t in model.parameters())
    with torch.no_grad():
        out = result.model(digits.test.X)
    assert out.shape == (len(digits.test.X), 10) and torch.isfinite(out).all()
    # the layers' attributes follow their weights, so the pruned model prints and re-traces as it is
    assert all(m.out_features == m.weight.shape[0] for m in result.model.modules() if isinstance(m, nn.Linear))
    assert all(m.out_channels == m.weight.shape[0] for m in result.model.modules() if isinstance(m, nn.Conv1d))
    again = compress(result.model, method="prune-structured", X=digits.train.X, amount=0.5).model
    assert sum(t.numel() for t in again.parameters()) < parameters


def test_structured_pruning_keeps_the_strongest_units(digits):
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=[8]).eval()
    with torch.no_grad():
        model[0].weight[[1, 5]] *= 10  # units 1 and 5 are the strongest by far
    pruned = compress(model, method="prune-structured", X=digits.train.X, amount=0.75).model
    torch.testing.assert_close(pruned[0].weight, model[0].weight[[1, 5]])
    torch.testing.assert_close(pruned[2].weight, model[2].weight[:, [1, 5]])


def test_a_structured_prune_saves_as_a_smaller_file_and_loads_back(trained_mlp, digits, tmp_path):
    result = compress(_member(trained_mlp), method="prune-structured", X=digits.train.X, amount=0.5)
    path = result.save(tmp_path / "small.safetensors")
    loaded = load_member(path)
    assert loaded.module[0].weight.shape == (16, 64)
    torch.testing.assert_close(loaded.predict(digits.test.X), result.model(digits.test.X).detach())


@pytest.mark.parametrize("method", ["prune-structured", "prune-wanda"])
def test_recovery_wins_back_accuracy_and_keeps_the_zeros(method, trained_mlp, digits):
    from modelfusion.compress import recover

    pruned = compress(_member(trained_mlp), method=method, X=digits.train.X, amount=0.75)
    recovered = recover(pruned, trained_mlp, digits.train, digits.val, epochs=3, progress=False)
    before, after = score_classifier(pruned.model, digits.val), score_classifier(recovered.model, digits.val)
    assert after["loss"] < before["loss"] - 0.05 and after["accuracy"] > before["accuracy"]
    for old, new in zip(pruned.model.parameters(), recovered.model.parameters(), strict=True):
        assert old.shape == new.shape
        assert torch.equal(new[old == 0], torch.zeros_like(new[old == 0])) or method == "prune-structured"
    assert recovered.recover_epochs == 3 and pruned.recover_epochs == 0
    with pytest.raises(ConfigError, match="recover a pruned model, then quantize"):
        recover(compress(trained_mlp, method="int8"), trained_mlp, digits.train, digits.val, epochs=1)


def test_wanda_weighs_weights_by_their_inputs(digits):
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.5]]))
    X = torch.tensor([[0.1, 10.0], [0.1, -10.0]])  # the second input is 100 times larger
    pruned = compress(model, method="prune-wanda", X=X, amount=0.5).model
    assert pruned.weight.tolist() == [[0.0, 0.5]]  # magnitude alone would have removed 0.5
    assert compress(model, method="prune", amount=0.5).model.weight.tolist() == [[1.0, 0.0]]


def test_dynamic_int8_computes_in_int8_and_survives_a_reload(trained_mlp, digits):
    from modelfusion.compress import DynamicInt8Linear

    result = compress(trained_mlp, method="int8")
    layers = [m for m in result.model.modules() if isinstance(m, DynamicInt8Linear)]
    assert len(layers) == 2 and all(layer.weight_int8.dtype == torch.int8 for layer in layers)
    rebuilt = compress(trained_mlp, method="int8").model
    with torch.no_grad():
        for layer in rebuilt.modules():
            if isinstance(layer, DynamicInt8Linear):
                layer.weight_int8.zero_()
    before = rebuilt(digits.test.X[:4])  # packed from the zeroed weights
    rebuilt.load_state_dict(result.model.state_dict())
    torch.testing.assert_close(rebuilt(digits.test.X[:4]), result.model(digits.test.X[:4]))
    assert not torch.allclose(before, result.model(digits.test.X[:4]))


def test_onnx_int8_exports_a_quarter_size_graph_that_loads_as_a_member(trained_mlp, digits, tmp_path):
    result = compress(_member(trained_mlp), method="onnx-int8", X=digits.train.X)
    fp32_bytes = sum(t.numel() * 4 for t in trained_mlp.state_dict().values())
    assert result.size_bytes < 0.8 * fp32_bytes  # int8 weights and scales, and the graph (much, for 2,410 weights)
    path = result.save(tmp_path / "student")
    assert path.suffix == ".onnx"
    loaded = load_member(path)  # no trust_code: an ONNX graph runs no code from the file
    assert loaded.name == "model_onnx-int8"
    torch.testing.assert_close(loaded.predict(digits.test.X), result.model(digits.test.X))
    agree = (loaded.predict(digits.test.X).argmax(1) == trained_mlp(digits.test.X).argmax(1)).float().mean()
    assert agree >= 0.98
    with pytest.raises(CheckpointError, match="cannot take inputs of shape"):
        loaded.predict(torch.zeros(3, 40))
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="bad.onnx is not a valid ONNX model"):
        load_member(tmp_path / "bad.onnx")


def test_the_method_by_position_still_works_with_a_deprecation_warning(trained_mlp, digits):
    with pytest.warns(DeprecationWarning, match=r"pass method=\.\.\."):
        old = compress(trained_mlp, "int8")
    new = compress(trained_mlp, method="int8")
    torch.testing.assert_close(old.model(digits.test.X), new.model(digits.test.X))
