"""LoRA adapters (PEFT folders): read and write them, merge several into one adapter without forming the full
weights, extract one from a fine-tune. `model+adapter` in a merge config applies an adapter as its model is read
(`engine.AdaptedModel`)."""

from __future__ import annotations

from .adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, LoraAdapter, LowRank, read_adapter, write_adapter
from .combine import ADAPTER_METHODS, AdapterMerge, merge_adapters
from .extract import REPORT_NAME, LoraExtraction, extract_lora
from .low_rank import factorize, truncate_product

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "REPORT_NAME",
    "AdapterConfig",
    "LoraAdapter",
    "LowRank",
    "read_adapter",
    "write_adapter",
    "merge_adapters",
    "AdapterMerge",
    "ADAPTER_METHODS",
    "extract_lora",
    "LoraExtraction",
    "factorize",
    "truncate_product",
]
