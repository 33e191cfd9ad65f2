"""Weight-only quantization: int8 / int4 (packed two per byte) Linear layers, int8 convolution weights, and half
precision (int8 computation, with calibrated activations, is `int8.py`).

A weight-only quantized layer stores its weight as integers with one scale per output row, or per group of
`group_size` input columns, and dequantizes it in its forward pass. The model takes and returns float32 like the
original, and its saved size is what the integers and scales take.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["QuantizedLinear", "QuantizedConv", "HalfPrecision", "quantize_layers", "symmetric_rows"]


def symmetric_rows(weight: torch.Tensor, largest: int, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of each row (last dimension) of `weight`: the scale maps the row's largest
    magnitude to `largest` (stored in `scale_dtype`), and the integers, still as floats, are the row divided by
    its scale, rounded and clamped to [-largest, largest]. Returns (integers, scales)."""
    scale = (weight.abs().amax(dim=-1) / largest).clamp(min=1e-12).to(scale_dtype)
    return torch.round(weight / scale.float()[..., None]).clamp(-largest, largest), scale


class QuantizedLinear(nn.Module):
    """A Linear layer whose weight is symmetric `bits`-bit integers (8, or 4 packed two per byte) times scales."""

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int = 0, bias: bool = True):
        super().__init__()
        if bits not in (8, 4):
            raise ConfigError(f"weight-only quantization takes 8 or 4 bits, got {bits}")
        group = group_size or in_features
        if in_features % group or (bits == 4 and in_features % 2):
            raise ConfigError(
                f"a Linear layer of {in_features} inputs cannot take groups of {group}"
                + (" (int4 also needs an even number of inputs)" if bits == 4 else "")
            )
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        width = in_features if bits == 8 else in_features // 2
        self.register_buffer("packed", torch.zeros(out_features, width, dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, in_features // group, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @property
    def largest(self) -> int:
        return 127 if self.bits == 8 else 7

    @classmethod
    def of(cls, linear: nn.Linear, *, bits: int, group_size: int = 0) -> QuantizedLinear:
        layer = cls(
            linear.in_features, linear.out_features, bits=bits, group_size=group_size, bias=linear.bias is not None
        )
        weight = linear.weight.detach().float().reshape(linear.out_features, -1, layer.group)
        q, scale = symmetric_rows(weight, layer.largest, torch.float16)
        q = q.reshape(linear.out_features, -1)
        if bits == 8:
            layer.packed.copy_(q.to(torch.int8))
        else:
            nibbles = (q + 8).to(torch.uint8)  # 1..15
            layer.packed.copy_(nibbles[:, 0::2] | (nibbles[:, 1::2] << 4))
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    def weight(self) -> torch.Tensor:
        """The dequantized weight, float32 `[out, in]`."""
        if self.bits == 8:
            q = self.packed.float()
        else:
            low, high = (self.packed & 0x0F).float() - 8, (self.packed >> 4).float() - 8
            q = torch.stack([low, high], dim=2).reshape(self.out_features, self.in_features)
        scale = self.scale.float().repeat_interleave(self.group, dim=1)
        return q * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)


class HalfPrecision(nn.Module):
    """A model kept in float16 or bfloat16 that takes and returns float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # texts (and token ids) go in as they are: a transformers member tokenizes and embeds them itself
        inputs = x.to(self.dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        return self.model(inputs).float()


class QuantizedConv(nn.Module):
    """A convolution whose weight is stored as int8 with one float16 scale per output channel and dequantized
    in its forward pass (torch has no int8 convolution kernel for inputs quantized on the fly); it computes in
    float32 with the convolution's own settings (stride, padding, groups, ...)."""

    def __init__(self, conv: nn.modules.conv._ConvNd) -> None:
        super().__init__()
        weight = conv.weight.detach().float()
        del conv.weight  # the convolution keeps its settings and bias; its weight lives here as integers
        self.conv = conv
        self.register_buffer("weight_int8", torch.zeros(weight.shape, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(weight.shape[0], dtype=torch.float16))
        q, scale = symmetric_rows(weight.reshape(weight.shape[0], -1), 127, torch.float16)  # a row per channel
        self.scale.copy_(scale)
        self.weight_int8.copy_(q.reshape(weight.shape).to(torch.int8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = self.scale.float().reshape(-1, *[1] * (self.weight_int8.ndim - 1))
        return self.conv._conv_forward(x, self.weight_int8.float() * per_channel, self.conv.bias)


def quantize_layers(model: nn.Module, quantize: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """`model` with every layer for which `quantize(layer)` gives a module replaced by it (in place; returns the
    model)."""
    replaced = quantize(model)
    if replaced is not None:
        return replaced
    for name, child in list(model.named_children()):
        setattr(model, name, quantize_layers(child, quantize))
    return model
