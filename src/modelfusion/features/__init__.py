"""Fusion inside the network: several backbones' features fused, backbones spliced onto new heads,
stage-wise transfer learning, and cascades of models that run one after another."""

from .cascade import Cascade, CascadeResult, Chained, plot_cascade_curve
from .fusion import FUSIONS, Attention, Concat, FeatureFusion, Gating, Sum
from .splice import Spliced, splice
from .transfer import SCHEDULES, FinetuneResult, Stage, backbone_blocks, finetune

__all__ = [
    "FUSIONS",
    "FeatureFusion",
    "Concat",
    "Sum",
    "Attention",
    "Gating",
    "Spliced",
    "splice",
    "SCHEDULES",
    "Stage",
    "finetune",
    "FinetuneResult",
    "backbone_blocks",
    "Cascade",
    "CascadeResult",
    "Chained",
    "plot_cascade_curve",
]
