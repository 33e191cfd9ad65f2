"""Knowledge distillation: losses, teachers and a seeded training loop (multi-process runs come next)."""

from .losses import LOSSES, FeatureHints, hinton_kd, logit_mse
from .teachers import ModelTeacher, OfflineTeacher, Teacher
from .training import DistillResult, distill

__all__ = [
    "LOSSES",
    "hinton_kd",
    "logit_mse",
    "FeatureHints",
    "Teacher",
    "ModelTeacher",
    "OfflineTeacher",
    "distill",
    "DistillResult",
]
