"""Knowledge distillation: losses (this part has landed; teachers and the training loop come next)."""

from .losses import LOSSES, FeatureHints, hinton_kd, logit_mse

__all__ = ["LOSSES", "hinton_kd", "logit_mse", "FeatureHints"]
