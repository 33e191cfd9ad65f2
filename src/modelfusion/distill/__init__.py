"""Knowledge distillation: losses, teachers, and a seeded training loop that also runs under torchrun."""

from .job import DistillJob, run_job
from .losses import LOSSES, FeatureHints, hinton_kd, logit_mse, resolve_loss_params
from .teachers import ModelTeacher, OfflineTeacher, Teacher, build_teacher
from .training import DistillResult, distill, process_rank

__all__ = [
    "LOSSES",
    "hinton_kd",
    "logit_mse",
    "resolve_loss_params",
    "FeatureHints",
    "Teacher",
    "ModelTeacher",
    "OfflineTeacher",
    "build_teacher",
    "DistillJob",
    "run_job",
    "distill",
    "DistillResult",
    "process_rank",
]
