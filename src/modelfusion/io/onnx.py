"""ONNX models as members: read and written by onnxruntime and onnx (optional extra: `onnx`).

ONNX files are data, not code: running one runs only the standard operators of the runtime, so
`load_member` reads them without `trust_code`. Our name, task and classes travel in the model's metadata.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, first_line

__all__ = ["OnnxModel", "with_metadata", "onnxruntime_module", "ONNX_METADATA_KEY"]

ONNX_METADATA_KEY = "modelfusion"  # key of our JSON (name, task, classes) in the ONNX model's metadata


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX models need onnxruntime: pip install 'modelfusion[onnx]'") from None
    return onnxruntime


class OnnxModel(nn.Module):
    """An ONNX model (its serialized bytes) run by onnxruntime on the CPU, on as many threads as torch uses;
    takes and returns float32 tensors."""

    def __init__(self, model_bytes: bytes, *, what: str = "an ONNX model") -> None:
        super().__init__()
        runtime = onnxruntime_module()
        _refuse_external_data(model_bytes, what)
        options = runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
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
        return OnnxModel(self.model_bytes)

    @property
    def metadata(self) -> dict:
        """What `with_metadata` recorded (name, task, classes); {} for other files."""
        try:
            value = json.loads(self.recorded) if self.recorded else {}
        except (ValueError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            output = self.session.run(None, {self.input_name: x.detach().float().contiguous().numpy()})[0]
        except Exception as err:  # wrong width or rank: onnxruntime's InvalidArgument
            raise CheckpointError(
                f"the ONNX model cannot take inputs of shape {tuple(x.shape)} ({first_line(err)})"
            ) from None
        return torch.from_numpy(np.ascontiguousarray(output))


def _refuse_external_data(model_bytes: bytes, what: str) -> None:
    """A graph whose tensors live in external files would have the runtime read paths the file names; members
    are one self-contained file, so such a graph is refused before any runtime sees it."""
    import onnx

    try:
        proto = onnx.load_from_string(model_bytes)
    except Exception as err:  # protobuf's DecodeError and the like
        raise CheckpointError(f"{what} is not a valid ONNX model ({first_line(err)})") from None

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
