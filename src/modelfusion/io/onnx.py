"""ONNX models as members: read and written by onnxruntime and onnx (optional extra: `onnx`).

ONNX files are data, not code: running one runs only the standard operators of the runtime, so
`load_member` reads them without `trust_code`. Our name, task and classes travel in the model's metadata.

Data can still dictate work: a 3 KB graph can ask for a 40000 x 40000 constant or a loop of 10^15 turns.
Before any runtime sees a graph nobody vouched for (`trusted=False`), its shapes are inferred (onnx's shape
inference with data propagation, every subgraph included) and it is refused, naming the operator, when

- it loops (`Loop`, `Scan`): the number of turns is a value the file computes;
- an operator that makes tensors of a size given by values (`ConstantOfShape`, `Expand`, `Tile`, `Range`,
  `Resize`, `Pad`, `OneHot`, random generators, windows, sequences...) has an output whose size inference
  cannot bound by the input's;
- any value would hold more than `MAX_VALUES_PER_SAMPLE` numbers per input sample (a broadcast bomb).

The model then runs on chunks of the batch small enough that no value exceeds `MAX_VALUES_PER_RUN` numbers.
The runtime's telemetry, which writes a database under the home folder (and beside the user's files when it
cannot), is switched off before onnxruntime is first imported.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, first_line

__all__ = ["OnnxModel", "with_metadata", "onnxruntime_module", "ONNX_METADATA_KEY"]

ONNX_METADATA_KEY = "modelfusion"  # key of our JSON (name, task, classes) in the ONNX model's metadata
MAX_VALUES_PER_SAMPLE = 2**25  # numbers in one value per input sample (128 MB of float32)
MAX_VALUES_PER_RUN = 2**26  # numbers in one value in one run of the runtime: the batch is chunked to fit
# Operators whose iteration count is a value the graph computes.
LOOPS = frozenset({"Loop", "Scan"})
# Operators whose output size is given by values (an input tensor or attribute) rather than by their inputs'
# sizes: allowed only where shape inference bounds it.
SIZED_BY_VALUES = frozenset(
    {
        "ConstantOfShape",
        "Expand",
        "Tile",
        "Range",
        "Resize",
        "Upsample",
        "Pad",
        "OneHot",
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "EyeLike",
        "MaxUnpool",
        "ConvTranspose",
        "CenterCropPad",
        "Col2Im",
        "DFT",
        "STFT",
        "HannWindow",
        "HammingWindow",
        "BlackmanWindow",
        "MelWeightMatrix",
        "SequenceEmpty",
        "SequenceConstruct",
        "SequenceInsert",
        "SplitToSequence",
        "ConcatFromSequence",
        "SequenceMap",
        "Optional",
    }
)


def onnxruntime_module():
    # onnxruntime's telemetry keeps a database under ~/.cache (or beside the user's files when it cannot);
    # its switch is read once, when the library loads.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX models need onnxruntime: pip install 'modelfusion[onnx]'") from None
    return onnxruntime


class OnnxModel(nn.Module):
    """An ONNX model (its serialized bytes) run by onnxruntime on the CPU, on as many threads as torch uses;
    takes and returns float32 tensors.

    Args:
        trusted: the caller vouches for the graph: loops and value-sized operators are not refused (the
            batch is still chunked by the values' inferred sizes).
    """

    def __init__(self, model_bytes: bytes, *, what: str = "an ONNX model", trusted: bool = False) -> None:
        super().__init__()
        runtime = onnxruntime_module()
        proto = _parse(model_bytes, what)
        _refuse_external_data(proto, what)
        self.values_per_sample = _largest_value_per_sample(proto, what, refuse=not trusted)
        self.trusted = trusted
        options = runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 4  # fatal only: errors reach the user as our one line
        try:  # onnxruntime raises its own kinds (Fail, InvalidGraph, ...), RuntimeErrors, and decoding errors
            self.session = runtime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
            inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
            self.input_name = inputs[0].name if inputs else None
            width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
            self.recorded = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        except Exception as err:
            raise CheckpointError(f"{what} is not a valid ONNX model ({first_line(err)})") from None
        self.out_features = width if isinstance(width, int) else None  # what members infer their classes from
        if len(inputs) != 1 or not outputs:
            raise CheckpointError(
                f"{what} takes {len(inputs)} inputs and gives {len(outputs)} outputs; members take one"
            )
        self.model_bytes = model_bytes

    @property
    def stored_values(self) -> int:
        """How many values the graph stores (its initializers: weights, scales, zero points)."""
        import math

        import onnx

        return sum(math.prod(tensor.dims) for tensor in onnx.load_from_string(self.model_bytes).graph.initializer)

    def __deepcopy__(self, memo: dict) -> OnnxModel:  # a runtime session cannot be copied: open another
        return OnnxModel(self.model_bytes, trusted=self.trusted)

    @property
    def metadata(self) -> dict:
        """What `with_metadata` recorded (name, task, classes); {} for other files."""
        try:
            value = json.loads(self.recorded) if self.recorded else {}
        except (ValueError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x.detach().float().contiguous().numpy()
        chunk = max(1, MAX_VALUES_PER_RUN // max(1, self.values_per_sample))
        try:
            outputs = [
                self.session.run(None, {self.input_name: inputs[start : start + chunk]})[0]
                for start in range(0, max(1, len(inputs)), chunk)
            ]
        except Exception as err:  # wrong width or rank: onnxruntime's InvalidArgument
            raise CheckpointError(
                f"the ONNX model cannot take inputs of shape {tuple(x.shape)} ({first_line(err)})"
            ) from None
        output = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        return torch.from_numpy(np.ascontiguousarray(output))


def _parse(model_bytes: bytes, what: str):
    import onnx

    try:
        return onnx.load_from_string(model_bytes)
    except Exception as err:  # protobuf's DecodeError and the like
        raise CheckpointError(f"{what} is not a valid ONNX model ({first_line(err)})") from None


def _graphs(graph):
    """`graph` and every subgraph of its nodes' attributes (the branches of `If`, the bodies of loops)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graphs(subgraph)


def _largest_value_per_sample(proto, what: str, refuse: bool) -> int:
    """The most numbers any value of the graph holds per input sample, from onnx's shape inference; with
    `refuse`, a CheckpointError naming the first operator that loops, whose output size values decide, or
    whose output exceeds `MAX_VALUES_PER_SAMPLE` per sample (see the module's docstring)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as err:  # inference chokes on graphs the runtime would reject too
        raise CheckpointError(f"{what} is not a valid ONNX model ({first_line(err)})") from None
    batch_symbols = {
        dim.dim_param for value in inferred.graph.input for dim in value.type.tensor_type.shape.dim if dim.dim_param
    }
    shapes = {}
    for graph in _graphs(inferred.graph):
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                shapes[value.name] = value.type.tensor_type.shape.dim
    largest = 1
    for graph in _graphs(inferred.graph):
        for node in graph.node:
            where = f"{what}: operator {node.op_type} (node {node.name or node.output[0] if node.output else '?'!r})"
            if refuse and node.op_type in LOOPS:
                raise CheckpointError(
                    f"{where} loops a number of times the file computes; refused (pass trust_code=True, CLI "
                    "--trust-code, if you trust the file)"
                )
            for output in node.output:
                dims = shapes.get(output)
                known = dims is not None and all(
                    dim.HasField("dim_value") or dim.dim_param in batch_symbols for dim in dims
                )
                if not known:
                    if refuse and node.op_type in SIZED_BY_VALUES:
                        raise CheckpointError(
                            f"{where} makes a tensor whose size values in the file decide, and shape inference "
                            "cannot bound it; refused (pass trust_code=True, CLI --trust-code, if you trust the file)"
                        )
                    continue
                per_sample = math.prod(dim.dim_value for dim in dims if dim.HasField("dim_value"))
                if refuse and per_sample > MAX_VALUES_PER_SAMPLE:
                    shape = [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in dims]
                    raise CheckpointError(
                        f"{where} makes a tensor of shape {shape}: {per_sample:,} numbers per sample, more than "
                        f"{MAX_VALUES_PER_SAMPLE:,}; refused"
                    )
                largest = max(largest, per_sample)
    return largest


def _refuse_external_data(proto, what: str) -> None:
    """A graph whose tensors live in external files would have the runtime read paths the file names; members
    are one self-contained file, so such a graph is refused before any runtime sees it."""
    import onnx

    def tensors(graph):
        yield from graph.initializer
        yield from (t.values for t in graph.sparse_initializer)
        for node in graph.node:
            for attribute in node.attribute:
                yield from ([attribute.t] if attribute.HasField("t") else [])
                yield from attribute.tensors
                for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    yield from tensors(subgraph)

    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors(proto.graph)):
        raise CheckpointError(f"{what} keeps tensors in external files; only self-contained ONNX files are read")


def with_metadata(model_bytes: bytes, metadata: dict) -> bytes:
    """The ONNX model with `metadata` (JSON) recorded under our key, replacing an earlier record."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    kept = [entry for entry in proto.metadata_props if entry.key != ONNX_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(metadata)
    return proto.SerializeToString()
