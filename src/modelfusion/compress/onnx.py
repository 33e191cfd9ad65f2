"""Export to ONNX with int8 weights quantized by onnxruntime, a mature CPU runtime (optional extra: `onnx`).

The exported graph holds int8 weights with per-channel scales and quantizes activations with ranges calibrated
on the example inputs and written into the graph (onnxruntime's static quantization, QDQ format): a sample's
result does not depend on the rest of its batch, as it did with dynamic quantization, which takes each batch's
range. `modelfusion.io.onnx.OnnxModel` runs it from torch.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io.onnx import OnnxModel, onnxruntime_module

__all__ = ["export_int8"]


def export_int8(model: nn.Module, X: torch.Tensor | None) -> OnnxModel:
    """`model` exported to ONNX (torch's exporter, the batch size left free), its weights quantized to int8 per
    channel and its activations to uint8 with ranges calibrated on `X` (training inputs) by onnxruntime's static
    quantization."""
    onnxruntime_module()  # the extra's clear error first
    if X is None:
        raise ConfigError("onnx-int8 exports the model on example inputs: pass X (a few training inputs)")
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(X[i : i + 256].float().numpy() for i in range(0, len(X), 256))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

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
        float_model = onnx.load_from_string(program.model_proto.SerializeToString())
        with tempfile.TemporaryDirectory(prefix="modelfusion-onnx-") as folder:  # the calibrator writes files
            path = Path(folder) / "int8.onnx"
            quantize_static(
                float_model,
                path,
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,  # uint8 activations, int8 weights: ONNX Runtime's x86 kernels
                weight_type=QuantType.QInt8,
            )
            quantized = path.read_bytes()
    return OnnxModel(quantized, what="the exported model")


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
