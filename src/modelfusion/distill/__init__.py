"""Knowledge distillation: losses, teachers, and a seeded training loop that also runs under torchrun.

Names are imported on first use, so that the command line (which only needs `DistillJob`'s options to show
its help) starts without loading torch.
"""

from importlib import import_module

_WHERE = {
    "LOSSES": "losses",
    "hinton_kd": "losses",
    "logit_mse": "losses",
    "resolve_loss_params": "losses",
    "FeatureHints": "losses",
    "Teacher": "teachers",
    "ModelTeacher": "teachers",
    "OfflineTeacher": "teachers",
    "build_teacher": "teachers",
    "DistillOptions": "options",
    "DistillJob": "job",
    "run_job": "job",
    "distill": "training",
    "DistillResult": "training",
    "process_rank": "training",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
