"""Fusion inside the network: several backbones' features fused, backbones spliced onto new heads,
stage-wise transfer learning, and cascades of models that run one after another."""

from .cascade import Cascade, CascadeResult, CascadeRun, Chained, measured_costs, plot_cascade_curve, run_cascade
from .fusion import FUSIONS, Attention, Concat, FeatureFusion, Gating, Sum
from .splice import Spliced, splice, spliced_member
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
    "spliced_member",
    "SCHEDULES",
    "Stage",
    "finetune",
    "FinetuneResult",
    "backbone_blocks",
    "Cascade",
    "run_cascade",
    "CascadeRun",
    "measured_costs",
    "CascadeResult",
    "Chained",
    "plot_cascade_curve",
]
