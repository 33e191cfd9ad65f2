"""modelfusion.training: scoring leaves the caller's model as found."""

import torch
from torch import nn

from modelfusion.distill import build_teacher
from modelfusion.models import cnn2d
from modelfusion.training import score_classifier


def _half_frozen():
    """A CNN in train mode whose BatchNorm layers were put in eval mode by their owner (frozen statistics)."""
    torch.manual_seed(0)
    model = cnn2d(num_outputs=10, dropout=0.5).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model, {name: m.training for name, m in model.named_modules()}


def test_score_classifier_and_teachers_leave_every_submodule_mode_as_found(digits):
    model, modes = _half_frozen()
    first = score_classifier(model, digits.val)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert score_classifier(model, digits.val) == first  # eval mode inside: dropout off, statistics kept
    teacher = build_teacher([model])
    logits = teacher.logits(digits.val.X[:8])
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(logits, teacher.logits(digits.val.X[:8])) and not logits.requires_grad
