"""modelfusion.compress: weight-only quantization, half precision and pruning of trained models, saved and read
back with the same outputs."""

import copy

import pytest
import torch
from torch import nn

from modelfusion import CheckpointError, ConfigError, InvalidInputError
from modelfusion.compress import (
    COMPRESSORS,
    KERNELS,
    Int8Conv,
    Int8Layer,
    Int8Linear,
    Int8Sequential,
    QuantizedConv,
    QuantizedLinear,
    compress,
)
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
    # onnx-int8: the graph itself (its quantize / dequantize nodes) weighs much next to this MLP's 2,410 weights
    expected = {"int8": 0.3, "int8-weight": 0.3, "int4": 0.2, "fp16": 0.51, "bf16": 0.51, "onnx-int8": 0.9}.get(
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


@pytest.mark.parametrize(
    "method, conv_type, convolutions_in_int8",
    [("int8", Int8Conv, True), ("int8-weight", QuantizedConv, True), ("int4", QuantizedConv, False)],
)
def test_a_cnn_quantizes_its_layers_and_round_trips(method, conv_type, convolutions_in_int8, digits, tmp_path):
    torch.manual_seed(0)
    kwargs = {"channels": [8, 16], "hidden": 32}
    model = train_model(cnn2d(**kwargs), digits.train, digits.val, epochs=2, seed=0).eval()
    result = compress(
        TorchMember(model, name="cnn", factory="cnn2d", factory_kwargs=kwargs), method=method, X=digits.train.X
    )
    modules = list(result.model.modules())
    assert sum(isinstance(m, conv_type) for m in modules) == (2 if convolutions_in_int8 else 0)
    assert all(m.weight_int8.dtype == torch.int8 for m in modules if isinstance(m, conv_type))
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
        recover(compress(trained_mlp, method="int8", X=digits.train.X), trained_mlp, digits.train, digits.val, epochs=1)


def test_wanda_weighs_weights_by_their_inputs(digits):
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.5]]))
    X = torch.tensor([[0.1, 10.0], [0.1, -10.0]])  # the second input is 100 times larger
    pruned = compress(model, method="prune-wanda", X=X, amount=0.5).model
    assert pruned.weight.tolist() == [[0.0, 0.5]]  # magnitude alone would have removed 0.5
    assert compress(model, method="prune", amount=0.5).model.weight.tolist() == [[1.0, 0.0]]


@pytest.fixture(scope="module")
def cnn_with_batchnorm(digits):
    torch.manual_seed(0)
    kwargs = {"length": 64, "channels": 8, "batchnorm": True}
    model = train_model(cnn1d(**kwargs), digits.train, digits.val, epochs=2, seed=0).eval()
    return TorchMember(model, name="cnn", factory="cnn1d", factory_kwargs=kwargs)


# Paths computed in integers give each sample bit-identical outputs in any batch; float paths may differ by
# rounding (another summation order for another batch size), within TOLERANCE times the largest logit; a CPU
# with half-precision kernels (AVX512-FP16, AMX) rounds fp16 and bf16 models' sums at their own precision.
INTEGER_PATHS = {("int8", "int8"), ("int8", "onnxruntime"), ("onnx-int8", None)}
TOLERANCE = 4e-6
HALF_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}
BATCH_CASES = [(method, None) for method in COMPRESSORS.names()] + [("int8", kernel) for kernel in KERNELS]


@pytest.mark.parametrize("architecture", ["mlp", "cnn with batchnorm"])
@pytest.mark.parametrize("method, kernel", BATCH_CASES)
def test_every_method_gives_a_sample_the_same_prediction_in_any_batch(
    method, kernel, architecture, trained_mlp, cnn_with_batchnorm, digits
):
    member = _member(trained_mlp) if architecture == "mlp" else cnn_with_batchnorm
    result = compress(member, method=method, X=digits.train.X, **({"kernels": kernel} if kernel else {}))
    X = digits.test.X[:180]
    with torch.no_grad():
        whole = result.model(X)
        batchings = {
            "one at a time": torch.cat([result.model(X[i : i + 1]) for i in range(len(X))]),
            "batches of 7": torch.cat([result.model(part) for part in X.split(7)]),
            "reversed": result.model(X.flip(0)).flip(0),
        }
    rounding = max(TOLERANCE, 4 * torch.finfo(HALF_PRECISION.get(method, torch.float32)).eps)
    tolerance = rounding * max(1.0, float(whole.abs().max()))
    top2 = whole.topk(2, dim=1).values
    for how, outputs in batchings.items():
        if (method, kernel) in INTEGER_PATHS:
            assert torch.equal(outputs, whole), how
            continue
        assert float((outputs - whole).abs().max()) <= tolerance, how
        # no argmax can flip: a sample whose outputs differ at all has a top-2 margin above twice the tolerance
        differs = (outputs != whole).any(1)
        assert bool(((top2[:, 0] - top2[:, 1])[differs] > 2 * tolerance).all()), how
        assert torch.equal(outputs.argmax(1), whole.argmax(1)), how


def test_int8_records_each_layers_kernel_and_a_loaded_file_rebuilds_it(cnn_with_batchnorm, digits, tmp_path):
    member = cnn_with_batchnorm
    chosen = compress(member, method="int8", X=digits.train.X)  # kernels timed here
    layers = {name: m for name, m in chosen.model.named_modules() if isinstance(m, Int8Layer)}
    assert set(layers) == {"1", "4", "7", "11"}  # three convolutions and the classifier
    assert chosen.params["kernels"] == {name: layer.kernel for name, layer in layers.items()}
    assert set(chosen.params["kernels"].values()) <= set(KERNELS)
    mixed = {"1": "onnxruntime", "4": "onnxruntime", "7": "dequantized", "11": "int8"}
    for kernels in (chosen.params["kernels"], mixed):
        result = compress(member, method="int8", X=digits.train.X, kernels=kernels)
        loaded = load_member(result.save(tmp_path / f"cnn_{len(list(tmp_path.iterdir()))}.safetensors"))
        assert {n: m.kernel for n, m in loaded.module.named_modules() if isinstance(m, Int8Layer)} == kernels
        assert torch.equal(loaded.predict(digits.test.X), result.model(digits.test.X).detach())
    # the mixed choice: the two leading convolutions (and the modules around them) run as one ONNX Runtime run
    assert isinstance(result.model, Int8Sequential) and result.model.runs == ((0, 7),)
    assert all(isinstance(result.model[i], nn.Identity) for i in (2, 5, 8))  # the BatchNorms, folded


def test_int8_layers_are_int8_and_a_reload_replaces_what_they_derived(trained_mlp, digits):
    result = compress(trained_mlp, method="int8", X=digits.train.X, kernels="int8")
    layers = [m for m in result.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 and all(layer.weight_int8.dtype == torch.int8 for layer in layers)
    X = digits.test.X[:4]
    for kernel in KERNELS:
        rebuilt = compress(trained_mlp, method="int8", X=digits.train.X, kernels=kernel).model
        with torch.no_grad():
            for layer in rebuilt.modules():
                if isinstance(layer, Int8Layer):
                    layer.weight_int8.zero_()
            before = rebuilt(X)  # cached from the zeroed weights
            rebuilt.load_state_dict(result.model.state_dict())
            assert not torch.allclose(before, result.model(X))
            # the same int8 weights and calibrated ranges: kernels differ by the activations' rounding only
            torch.testing.assert_close(rebuilt(X), result.model(X), atol=0.05, rtol=0.02)


def test_int8_folds_batchnorm_exactly_and_calibrates_each_layers_inputs(cnn_with_batchnorm, digits):
    from modelfusion.compress.int8 import _fold_batchnorm

    member = cnn_with_batchnorm
    folded = copy.deepcopy(member.module)
    _fold_batchnorm(folded)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(digits.test.X), member.module(digits.test.X), atol=1e-4, rtol=1e-5)
    result = compress(member, method="int8", X=digits.train.X, kernels="dequantized")
    layers = {name: m for name, m in result.model.named_modules() if isinstance(m, Int8Layer)}
    inputs = {}
    for name, module in folded.named_modules():  # calibrated on the float model's inputs to each layer
        if name in layers:
            module.register_forward_pre_hook(lambda _, args, name=name: inputs.setdefault(name, args[0]))
    with torch.no_grad():
        folded(digits.train.X)
    assert set(inputs) == set(layers)
    for name, x in inputs.items():  # [0, 255] maps onto what the training inputs reach (to half a step: the
        layer = layers[name]
        step = float(layer.input_scale)  # zero point is a whole number), and not much beyond
        low, high = -int(layer.input_zero_point) * step, (255 - int(layer.input_zero_point)) * step
        assert low <= x.min() + step / 2 and x.max() <= high + step / 2
        assert high - low <= (x.max() - min(x.min(), 0)) + 1e-6


def test_int8_refuses_bad_kernels_missing_inputs_and_damaged_scales(trained_mlp, digits, tmp_path):
    with pytest.raises(ConfigError, match="pass X"):
        compress(trained_mlp, method="int8")
    with pytest.raises(ConfigError, match="int8 kernels must be 'auto', one of dequantized, int8, onnxruntime"):
        compress(trained_mlp, method="int8", X=digits.train.X, kernels="int9")
    with pytest.raises(ConfigError, match=r"must name every int8 layer \(0, 2\)"):
        compress(trained_mlp, method="int8", X=digits.train.X, kernels={"0": "int8"})
    with pytest.raises(ConfigError, match="layer '2': unknown kernel 'fast'"):
        compress(trained_mlp, method="int8", X=digits.train.X, kernels={"0": "int8", "2": "fast"})
    result = compress(_member(trained_mlp), method="int8", X=digits.train.X, kernels="onnxruntime")
    path = result.save(tmp_path / "small.safetensors")
    state = {k: v.clone() for k, v in result.model.state_dict().items()}
    state["2.input_scale"] = torch.tensor(float("nan"))
    from modelfusion.io import save_member

    damaged = result.as_member()
    damaged.module.load_state_dict({**state, "2.input_scale": torch.tensor(1.0)})
    with torch.no_grad():
        damaged.module[2].input_scale.fill_(-1.0)  # written around the check, as a hostile file would be
    save_member(damaged, tmp_path / "damaged.safetensors")
    with pytest.raises(CheckpointError, match="input_scale must hold positive finite numbers"):
        load_member(tmp_path / "damaged.safetensors")
    assert load_member(path).predict(digits.test.X[:2]).shape == (2, 10)


def test_onnx_int8_exports_an_int8_graph_that_loads_as_a_member(trained_mlp, digits, tmp_path):
    result = compress(_member(trained_mlp), method="onnx-int8", X=digits.train.X)
    fp32_bytes = sum(t.numel() * 4 for t in trained_mlp.state_dict().values())
    assert result.size_bytes < 0.9 * fp32_bytes  # int8 weights and scales, and the graph (much, for 2,410 weights)
    import onnx

    graph = onnx.load_from_string(result.model.model_bytes).graph
    weights = [t for t in graph.initializer if len(t.dims) == 2]
    assert len(weights) == 2 and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    assert "DynamicQuantizeLinear" not in {n.op_type for n in graph.node}  # ranges calibrated, not per batch
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
        old = compress(trained_mlp, "int8", X=digits.train.X, kernels="int8")
    # one kernel named: "auto" chooses each layer's by timing, which may differ from one call to the next
    new = compress(trained_mlp, method="int8", X=digits.train.X, kernels="int8")
    torch.testing.assert_close(old.model(digits.test.X), new.model(digits.test.X))
