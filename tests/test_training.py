"""modelfusion.training: scoring leaves the caller's model as found."""

import torch
from torch import nn

from modelfusion.distill import build_teacher
from modelfusion.estimators import installed_boosters
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


def test_member_plans_are_the_demos_and_autos_members_and_the_old_demo_names_still_work(digits):
    import warnings

    import pytest

    from modelfusion import demo
    from modelfusion.datasets import load_dataset
    from modelfusion.training import MemberPlan, member_plans

    def described(plans):
        return [(p.name, p.recipe, p.seed) for p in plans]

    plans = member_plans(digits, seed=2)
    assert [p.name for p in plans] == ["mlp_0", "mlp_1", "mlp_2", "cnn", "logreg", "random_forest"]
    assert [p.seed for p in plans[:4]] == [2000, 2001, 2002, 2100] and plans[3].recipe.name == "digits-cnn"
    assert plans[5].estimator().random_state == 2
    more = member_plans(digits, seed=2, cnns=3)
    assert described(more[:6]) == described(plans) and [(p.name, p.seed) for p in more[6:]] == [
        ("cnn_1", 2101),
        ("cnn_2", 2102),
    ]
    regression = member_plans(load_dataset("diabetes"), mlps=1)
    # a table: histogram gradient boosting, and the optional boosters that are installed
    assert [p.name for p in regression] == [
        "mlp_0",
        "ridge",
        "random_forest",
        "hist_gradient_boosting",
        *installed_boosters(),
    ]
    with pytest.warns(DeprecationWarning, match="use modelfusion.training.member_plans"):
        assert described(demo.member_recipes(digits, seed=2)) == described(plans)
    with pytest.warns(DeprecationWarning, match="use modelfusion.training.MemberPlan"):
        assert demo.DemoMember is MemberPlan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        member = plans[4].train(digits)  # the logistic regression: quick
    assert member.name == "logreg" and member.predict(digits.test.X[:3]).shape == (3, 10)
