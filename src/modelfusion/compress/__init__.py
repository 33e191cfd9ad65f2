"""Compression of a fused result: quantization (int8, weight-only int8 / int4, half precision) and
pruning (magnitude, Wanda, structured removal of whole units), with an optional recovery by distillation.
A sample's result does not depend on the rest of its batch: activation ranges are calibrated, never taken per
batch (float32 paths differ across batch sizes only by float rounding).

`compress(member_or_model, method=..., X=..., **params) -> Compressed`: `.model` takes the same float inputs as
the original; `.size_bytes` is what its weights take stored (packed integers and scales; a pruned weight as
its non-zero values and a bitmask of where they are, when that is smaller than dense); `.save(path)` writes a
member that `load_member` reads back with the same outputs (the file names the registered factory
"compressed", which rebuilds the original architecture from its own factory, shrinks the layers structured
pruning shrank, and applies the same compression structure). `recover(compressed, data, epochs=...)`
distills the uncompressed model into a pruned one to win back accuracy.

`int8`'s kernels (`KERNELS`: the int8 weight dequantized once into a cached float32 weight, torch's int8 matrix
multiply, ONNX Runtime's int8 kernels) are timed per layer at compression and the choice is recorded in the
file (`compress.int8`).

| method | what it does | parameters |
|---|---|---|
| `int8` | int8 weights, activations in ranges calibrated on `X`, each layer on its cheapest kernel | `kernels` |
| `int8-weight` | Linear and conv weights stored as int8, one float16 scale per output row (or group) | `group_size` |
| `int4` | Linear weights as int4, two per byte, float16 scales | `group_size` (default 32) |
| `onnx-int8` | exported to ONNX, quantized by onnxruntime calibrated on `X` (extra `onnx`); saved as `.onnx` | |
| `fp16`, `bf16` | every weight in half precision; inputs and outputs stay float32 | |
| `prune` | unstructured magnitude pruning of Linear and convolution weights, made permanent | `amount`, `scope` |
| `prune-wanda` | unstructured, per output row, by |weight| x input norm on `X` | `amount` |
| `prune-structured` | whole units removed from every layer sharing them: a smaller dense model | `amount` |
"""

from .api import Compressed, CompressedEnsemble, compress
from .int8 import KERNELS, Int8Conv, Int8Layer, Int8Linear, Int8Sequential
from .measure import dense_bytes, measure
from .methods import COMPRESSORS, Compressor, apply_compression
from .quantize import HalfPrecision, QuantizedConv, QuantizedLinear
from .recover import recover
from .workflow import CompressionRun, compress_and_measure

__all__ = [
    "compress",
    "compress_and_measure",
    "CompressionRun",
    "recover",
    "measure",
    "dense_bytes",
    "Compressed",
    "CompressedEnsemble",
    "Compressor",
    "COMPRESSORS",
    "QuantizedLinear",
    "QuantizedConv",
    "Int8Layer",
    "Int8Linear",
    "Int8Conv",
    "Int8Sequential",
    "KERNELS",
    "HalfPrecision",
    "apply_compression",
]
