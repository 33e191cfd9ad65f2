"""Export to ONNX with int8 weights quantized by onnxruntime, a mature CPU runtime (optional extra: `onnx`).

The exported graph holds int8 weights with per-channel scales and quantizes activations per batch
(onnxruntime's dynamic quantization); `modelfusion.io.onnx.OnnxModel` runs it from torch.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError
from ..io.onnx import OnnxModel, onnxruntime_module

__all__ = ["export_int8"]


def export_int8(model: nn.Module, X: torch.Tensor | None) -> OnnxModel:
    """`model` exported to ONNX (torch's exporter, the batch size left free) with its weights quantized to
    int8 per channel by onnxruntime's dynamic quantization; `X` gives example inputs."""
    onnxruntime_module()  # the extra's clear error first
    if X is None:
        raise ConfigError("onnx-int8 exports the model on example inputs: pass X (a few training inputs)")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript", "onnx_ir", "root"):
        warnings.simplefilter("ignore")  # the exporters warn of every optional operator library they skip
        program = torch.onnx.export(
            model.eval(),
            (X[:2],),
            dynamo=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        quantized = io.BytesIO()
        float_model = onnx.load_from_string(program.model_proto.SerializeToString())
        quantize_dynamic(float_model, quantized, weight_type=QuantType.QInt8, per_channel=True)
    return OnnxModel(quantized.getvalue(), what="the exported model")


@contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
