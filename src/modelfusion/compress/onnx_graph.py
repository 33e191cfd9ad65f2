"""A run of int8 layers (and the plain modules between them) written as one ONNX graph for ONNX Runtime.

The graph is built from the layers' own tensors, never exported or re-quantized, so it computes what the stored
int8 weights and calibrated activation ranges say: every int8 layer's input goes through QuantizeLinear /
DequantizeLinear with its calibrated range, its weight is DequantizeLinear of the int8 weight, and ONNX
Runtime's graph optimizer fuses each such group into its int8 kernels (QLinearConv, MatMulIntegerToFloat).
Building takes milliseconds, so a loaded file rebuilds its sessions instead of storing graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InvalidInputError, first_line
from ..models import ImageInput, OutputScale

__all__ = ["onnx_graph", "runs_in_onnx", "register_writer", "OnnxRun", "write_linear", "write_conv"]

OPSET = 17


class _Graph:
    """Nodes and constants of the graph being written; each tensor gets a fresh name."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.constants: list = []

    def _name(self, hint: str) -> str:
        return f"{hint}_{len(self.nodes) + len(self.constants)}"

    def constant(self, array: np.ndarray, hint: str = "c") -> str:
        name = self._name(hint)
        self.constants.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], **attributes) -> str:
        output = self._name(op)
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], **attributes))
        return output

    def quantized(self, x: str, scale: float, zero_point: int) -> str:
        """`x` through QuantizeLinear and DequantizeLinear (uint8): where the int8 kernels will read it."""
        scale_name = self.constant(np.array(scale, dtype=np.float32), "scale")
        zero_name = self.constant(np.array(zero_point, dtype=np.uint8), "zero_point")
        return self.node(
            "DequantizeLinear", [self.node("QuantizeLinear", [x, scale_name, zero_name]), scale_name, zero_name]
        )

    def dequantized_weight(self, layer, axis: int, transposed: bool = False) -> str:
        weight = layer.weight_int8.numpy()
        weight = weight.T if transposed else weight
        scales = layer.weight_scale.numpy().astype(np.float32)
        return self.node(
            "DequantizeLinear",
            [self.constant(weight, "weight"), self.constant(scales), self.constant(np.zeros(len(scales), np.int8))],
            axis=axis,
        )


def write_linear(graph: _Graph, layer, x: str) -> str:
    """An int8 linear layer: its dequantized weight times its (quantized) input."""
    y = graph.node("MatMul", [x, graph.dequantized_weight(layer, axis=1, transposed=True)])  # weight as [in, out]
    return y if layer.bias is None else graph.node("Add", [y, graph.constant(layer.bias.numpy())])


def write_conv(graph: _Graph, layer, x: str) -> str:
    """An int8 convolution with its settings; the bias in int32 at the products' scale."""
    inputs = [x, graph.dequantized_weight(layer, axis=0)]
    if layer.bias is not None:  # int32 at the scale of the products, as ONNX Runtime's int8 convolution takes it
        scales = (layer.input_scale.double() * layer.weight_scale.double()).numpy()
        integers = np.round(layer.bias.double().numpy() / scales).clip(-(2**31), 2**31 - 1).astype(np.int32)
        zeros = np.zeros(len(scales), np.int32)
        bias = [graph.constant(integers), graph.constant(scales.astype(np.float32)), graph.constant(zeros)]
        inputs.append(graph.node("DequantizeLinear", bias, axis=0))
    return graph.node(
        "Conv",
        inputs,
        strides=list(layer.stride),
        pads=list(layer.padding) * 2,
        dilations=list(layer.dilation),
        group=layer.groups,
    )


def _pool(graph: _Graph, pool: nn.Module, x: str) -> str:
    dims = 1 if isinstance(pool, nn.MaxPool1d) else 2

    def listed(value) -> list[int]:
        return list(value) if isinstance(value, tuple | list) else [value] * dims

    return graph.node(
        "MaxPool",
        [x],
        kernel_shape=listed(pool.kernel_size),
        strides=listed(pool.stride),
        pads=listed(pool.padding) * 2,
        dilations=listed(pool.dilation),
        ceil_mode=int(pool.ceil_mode),
    )


def _batchnorm(graph: _Graph, norm: nn.modules.batchnorm._BatchNorm, x: str) -> str:
    ones = np.ones(norm.num_features, np.float32)
    weight = norm.weight.detach().numpy() if norm.weight is not None else ones
    bias = norm.bias.detach().numpy() if norm.bias is not None else ones * 0
    statistics = [norm.running_mean.numpy(), norm.running_var.numpy()]
    inputs = [x, *(graph.constant(a.astype(np.float32)) for a in (weight, bias, *statistics))]
    return graph.node("BatchNormalization", inputs, epsilon=norm.eps)


def _reshaped(graph: _Graph, x: str, shape: Sequence[int]) -> str:
    # 0 keeps the batch size: a sample of the wrong width fails instead of becoming several samples
    return graph.node("Reshape", [x, graph.constant(np.array([0, *shape], dtype=np.int64))])


def _scaled(graph: _Graph, scale: OutputScale, x: str) -> str:
    scaled = graph.node("Mul", [x, graph.constant(scale.scale.numpy().astype(np.float32))])
    return graph.node("Add", [scaled, graph.constant(scale.shift.numpy().astype(np.float32))])


def _same(graph: _Graph, module: nn.Module, x: str) -> str:
    return x


# What each supported module type writes, and whether it only moves data (a reshape, a pool) without changing
# values. The int8 layers add theirs from their own module (`register_writer`), so this one needs nothing of it.
_WRITERS: dict[type, tuple[Callable, bool]] = {
    nn.ReLU: (lambda graph, module, x: graph.node("Relu", [x]), False),
    nn.modules.batchnorm._BatchNorm: (_batchnorm, False),
    OutputScale: (_scaled, False),
    nn.Identity: (_same, True),
    nn.Dropout: (_same, True),  # in eval mode, which is how a compressed model runs
    nn.Flatten: (lambda graph, module, x: _reshaped(graph, x, [-1]), True),
    ImageInput: (lambda graph, module, x: _reshaped(graph, x, module.shape), True),
    nn.MaxPool1d: (_pool, True),
    nn.MaxPool2d: (_pool, True),
}
# Module types whose input is quantized with their calibrated range (`input_scale`, `input_zero_point`).
_QUANTIZED: set[type] = set()


def register_writer(kind: type, write: Callable, *, quantized_input: bool = False) -> None:
    """Let `onnx_graph` write modules of type `kind` with `write(graph, module, x) -> output name`; with
    `quantized_input` their input goes through QuantizeLinear at their calibrated range."""
    _WRITERS[kind] = (write, False)
    if quantized_input:
        _QUANTIZED.add(kind)


def _writer(module: nn.Module):
    return next((w for kind, w in _WRITERS.items() if isinstance(module, kind)), None)


def runs_in_onnx(module: nn.Module) -> bool:
    """Whether `module` can be part of an ONNX run: a supported type with the settings the graph writes (a
    layer may say it is not, by an `onnx_ready` property)."""
    if _writer(module) is None:
        return False
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if isinstance(module, nn.MaxPool1d | nn.MaxPool2d):
        return not module.return_indices
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.running_mean is not None and not module.training
    return bool(getattr(module, "onnx_ready", True))


def onnx_graph(modules: Sequence[nn.Module]) -> bytes:
    """The serialized ONNX graph (one float32 input "input", one output "output", any batch size) computing
    `modules` one after another; every module must satisfy `runs_in_onnx`.

    Each int8 layer's input is quantized with its calibrated range where its value was last changed: a reshape,
    flatten or max-pool between the two only moves (or selects) quantized values, so ONNX Runtime runs them on
    the integers and the producing convolution writes its output in int8 directly.
    """
    from onnx import TensorProto, helper

    quantize_at: dict[int, tuple[float, int]] = {}  # module index -> the range its input is quantized with
    for j, module in enumerate(modules):
        if isinstance(module, tuple(_QUANTIZED)):
            start = j
            while start > 0 and _writer(modules[start - 1])[1]:
                start -= 1
            for i in range(start, j + 1):
                quantize_at[i] = (float(module.input_scale), int(module.input_zero_point))
    graph = _Graph()
    x = "input"
    with torch.no_grad():
        for i, module in enumerate(modules):
            if i in quantize_at:
                x = graph.quantized(x, *quantize_at[i])
            x = _writer(module)[0](graph, module, x)
    graph.nodes.append(helper.make_node("Identity", [x], ["output"]))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "int8_run",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
            graph.constants,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="modelfusion",
    )
    model.ir_version = 8
    return model.SerializeToString()


class OnnxRun:
    """An ONNX Runtime session of `onnx_graph(modules)`, called like the modules (float32 tensors in and out), on
    as many threads as torch uses.

    ONNX Runtime's MatMul + Add fusion is turned off: it would make a Linear layer after a reshape a float Gemm,
    which the int8 fusion (MatMulIntegerToFloat) no longer matches, so that layer would run in float32.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        from ..io.onnx import onnxruntime_module

        runtime = onnxruntime_module()
        options = runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        try:  # only damaged tensors (a hostile file's) can make our own graph fail here
            self.session = runtime.InferenceSession(
                onnx_graph(modules),
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=["MatMulAddFusion"],
            )
        except Exception as err:  # onnxruntime's own kinds (Fail, InvalidGraph, ...)
            raise CheckpointError(f"ONNX Runtime refuses the int8 layers' graph ({first_line(err)})") from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            if x.dtype != torch.float32 or not x.is_contiguous():
                x = x.float().contiguous()
            (output,) = self.session.run(["output"], {"input": x.detach().numpy()})
        except Exception as err:  # onnxruntime's own kinds (InvalidArgument, Fail) for inputs of the wrong shape
            raise InvalidInputError(
                f"the int8 model cannot take inputs of shape {tuple(x.shape)} ({first_line(err)})"
            ) from None
        return torch.from_numpy(output)
