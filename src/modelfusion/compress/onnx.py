"""Export to ONNX and int8 quantization by onnxruntime, a mature CPU runtime (optional extra: `onnx`).

The exported graph holds int8 weights with per-channel scales and quantizes activations per batch
(onnxruntime's dynamic quantization); `OnnxModel` runs it from torch, taking and returning float32 tensors
like the original. ONNX files are data, not code: reading one runs nothing from the file beyond the standard
operators of the runtime, so `load_member` reads them without `trust_code`.
"""

from __future__ import annotations

import io
import json
import logging
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

__all__ = ["OnnxModel", "export_int8", "onnxruntime_module"]

METADATA_KEY = "modelfusion"  # key of our JSON (name, task, classes) in the ONNX model's metadata


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX needs onnxruntime: pip install 'modelfusion[onnx]'") from None
    return onnxruntime


class OnnxModel(nn.Module):
    """An ONNX model (its serialized bytes) run by onnxruntime on the CPU, on one thread per torch thread."""

    def __init__(self, model_bytes: bytes, *, what: str = "an ONNX model") -> None:
        super().__init__()
        runtime = onnxruntime_module()
        options = runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        try:
            self.session = runtime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own (Fail, InvalidGraph, ...) and RuntimeErrors
            raise CheckpointError(f"{what} is not a valid ONNX model ({str(err).splitlines()[0][:200]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{what} takes {len(inputs)} inputs; members take one")
        self.input_name = inputs[0].name
        self.model_bytes = model_bytes

    @property
    def metadata(self) -> dict:
        """What `save_onnx` recorded (name, task, classes); {} for other files."""
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            value = json.loads(text) if text else {}
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (output,) = self.session.run(None, {self.input_name: x.detach().float().contiguous().numpy()})[:1]
        return torch.from_numpy(np.ascontiguousarray(output))


def export_int8(model: nn.Module, X: torch.Tensor | None, metadata: dict | None = None) -> OnnxModel:
    """`model` exported to ONNX (torch's exporter, batch size left free) with its weights quantized to int8
    per channel by onnxruntime's dynamic quantization; `X` gives example inputs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # the extra is checked below first

    onnxruntime_module()
    if X is None:
        raise ConfigError("onnx-int8 exports the model on example inputs: pass X (a few training inputs)")
    import onnx

    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (X[:2],),
            dynamo=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    float_model = io.BytesIO(program.model_proto.SerializeToString())
    quantized = io.BytesIO()
    with _quiet("root"):
        quantize_dynamic(onnx.load(float_model), quantized, weight_type=QuantType.QInt8, per_channel=True)
    proto = onnx.load_from_string(quantized.getvalue())
    if metadata:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return OnnxModel(proto.SerializeToString(), what="the exported model")


class _quiet:
    """Raise these loggers to ERROR while exporting: the exporters log every skipped optional operator."""

    def __init__(self, *names: str) -> None:
        self.loggers = [logging.getLogger(name) for name in names]

    def __enter__(self) -> None:
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        for logger, level in zip(self.loggers, self.levels, strict=True):
            logger.setLevel(level)
