"""Compression of a fused result: quantization (dynamic int8, weight-only int8 / int4, half precision) and
pruning (magnitude, Wanda, structured removal of whole units), with an optional recovery by distillation.

`compress(member_or_model, method=..., X=..., **params) -> Compressed`: `.model` takes the same float inputs as
the original; `.size_bytes` is what its weights take stored (packed integers and scales; a pruned weight as
its non-zero values and a bitmask of where they are, when that is smaller than dense); `.save(path)` writes a
member that `load_member` reads back with the same outputs (the file names the registered factory
"compressed", which rebuilds the original architecture from its own factory, shrinks the layers structured
pruning shrank, and applies the same compression structure). `recover(compressed, data, epochs=...)`
distills the uncompressed model into a pruned one to win back accuracy.

| method | what it does | parameters |
|---|---|---|
| `int8` | Linear layers computed in int8 (int8 weights, inputs quantized per batch); conv weights as int8 | |
| `int8-weight` | Linear and conv weights stored as int8, one float16 scale per output row (or group) | `group_size` |
| `int4` | Linear weights as int4, two per byte, float16 scales | `group_size` (default 32) |
| `onnx-int8` | exported to ONNX, weights int8 per channel by onnxruntime (extra `onnx`); saved as `.onnx` | |
| `fp16`, `bf16` | every weight in half precision; inputs and outputs stay float32 | |
| `prune` | unstructured magnitude pruning of Linear and convolution weights, made permanent | `amount`, `scope` |
| `prune-wanda` | unstructured, per output row, by |weight| x input norm on `X` | `amount` |
| `prune-structured` | whole units removed from every layer sharing them: a smaller dense model | `amount` |
"""

from .api import Compressed, CompressedEnsemble, compress
from .measure import dense_bytes, measure
from .methods import COMPRESSORS, Compressor, apply_compression
from .quantize import DynamicInt8Linear, HalfPrecision, QuantizedConv, QuantizedLinear
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
    "DynamicInt8Linear",
    "HalfPrecision",
    "apply_compression",
]
