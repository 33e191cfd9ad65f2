"""Knowledge distillation: losses and teachers (the training loop and multi-process runs come next)."""

from .losses import LOSSES, FeatureHints, hinton_kd, logit_mse
from .teachers import ModelTeacher, OfflineTeacher, Teacher

__all__ = ["LOSSES", "hinton_kd", "logit_mse", "FeatureHints", "Teacher", "ModelTeacher", "OfflineTeacher"]
