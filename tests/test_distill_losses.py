import math

import pytest
import torch
from torch import nn

from modelfusion import ConfigError, InvalidInputError
from modelfusion.distill import LOSSES, FeatureHints, hinton_kd, logit_mse, resolve_loss_params
from modelfusion.models import cnn2d, mlp


def test_hinton_hand_worked():
    teacher = torch.tensor([[0.0, 0.0]])  # probabilities 1/2, 1/2
    student = torch.tensor([[0.0, math.log(3.0)]])  # 1/4, 3/4
    parts = hinton_kd(student, teacher, temperature=1.0, alpha=1.0)
    # KL(t || s) = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3)
    assert parts["kd"].item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert set(parts) == {"total", "kd"}


def test_hinton_temperature_scaling_and_mixing():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    T = 3.0
    p_teacher = torch.softmax(teacher / T, dim=1)
    expected_kd = (p_teacher * (p_teacher.log() - torch.log_softmax(student / T, dim=1))).sum(1).mean() * T**2
    parts = hinton_kd(student, teacher, labels, temperature=T, alpha=0.3)
    torch.testing.assert_close(parts["kd"], expected_kd)
    torch.testing.assert_close(parts["task"], nn.functional.cross_entropy(student, labels))
    torch.testing.assert_close(parts["total"], 0.3 * expected_kd + 0.7 * parts["task"])
    assert hinton_kd(teacher, teacher, temperature=T, alpha=1.0)["kd"].abs().item() < 1e-6


def test_logit_mse_ignores_a_per_sample_shift():
    teacher = torch.randn(4, 3)
    assert logit_mse(teacher + 5.0, teacher)["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert logit_mse(teacher * 2, teacher)["kd"].item() > 0
    assert LOSSES["mse"] is logit_mse and LOSSES["hinton"] is hinton_kd


def test_loss_errors():
    a, b = torch.randn(2, 3), torch.randn(2, 4)
    with pytest.raises(InvalidInputError, match=r"student logits \(2, 3\) and teacher logits \(2, 4\) differ"):
        hinton_kd(a, b)
    with pytest.raises(InvalidInputError, match="no labels were given"):
        hinton_kd(a, a, alpha=0.5)
    with pytest.raises(ConfigError, match="temperature must be positive"):
        hinton_kd(a, a, temperature=0, alpha=1.0)
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        logit_mse(a, a, torch.tensor([0, 1]), alpha=2)


def test_feature_hints_linear_adapter_trains_only_student_side():
    torch.manual_seed(0)
    student, teacher = mlp(64, 10, hidden=[16]), mlp(64, 10, hidden=[48, 32])
    x = torch.randn(5, 64)
    hints = FeatureHints(student, teacher, {"1": "3"}, example_input=x)  # ReLU outputs: 16 -> 32 wide
    assert isinstance(hints.adapters["1"], nn.Linear) and hints.adapters["1"].weight.shape == (32, 16)
    student(x), teacher(x)
    loss = hints.loss()
    loss.backward()
    assert student[0].weight.grad is not None and hints.adapters["1"].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    hints.remove()


def test_feature_hints_conv_adapter_and_errors():
    student, teacher = cnn2d((1, 8, 8), 10, channels=(8, 16)), cnn2d((1, 8, 8), 10, channels=(32, 64))
    x = torch.randn(3, 64)
    hints = FeatureHints(student, teacher, {"3": "6"}, example_input=x)  # 8x8 maps: 8 -> 64 channels
    assert isinstance(hints.adapters["3"], nn.Conv2d) and hints.adapters["3"].out_channels == 64
    with pytest.raises(ConfigError, match=r"the teacher has no module named 'layer9'; its modules are: 0, 1, 2"):
        FeatureHints(student, teacher, {"3": "layer9"}, example_input=x)
    with pytest.raises(InvalidInputError, match="feature shapes differ beyond the channel axis"):
        FeatureHints(student, teacher, {"3": "7"}, example_input=x)  # 8x8 vs pooled 4x4
    with pytest.raises(InvalidInputError, match="run both models forward"):
        FeatureHints(student, teacher, {"3": "6"}, example_input=x).loss()


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_zero_at_the_teacher_positive_elsewhere_and_mixes_labels(name):
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 5, generator=generator)
    labels = torch.randint(0, 5, (16,), generator=generator)
    params = resolve_loss_params(name)  # every parameter, at its default
    assert set(params) >= {"alpha"}
    pure = {**params, "alpha": 1.0}
    assert LOSSES[name](teacher.clone(), teacher, None, **pure)["total"].item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(16, 5, generator=generator, requires_grad=True)
    parts = LOSSES[name](student, teacher, labels, **{**params, "alpha": 0.5})
    assert parts["kd"].item() > 0 and set(parts) == {"total", "kd", "task"}
    parts["total"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    with pytest.raises(ConfigError, match=f"distillation loss '{name}' takes no parameter bogus; it takes"):
        resolve_loss_params(name, {"bogus": 1.0})
    with pytest.raises(ConfigError, match="must be a finite number"):
        resolve_loss_params(name, {"alpha": float("nan")})


def test_a_loss_registered_outside_the_package_trains_a_student(digits, trained_mlp):
    from modelfusion.distill import ModelTeacher, distill

    def smooth_l1(student_logits, teacher_logits, labels=None, *, beta: float = 1.0, alpha: float = 1.0):
        kd = torch.nn.functional.smooth_l1_loss(student_logits, teacher_logits, beta=beta)
        return {"total": kd, "kd": kd}

    LOSSES.register("test_smooth_l1")(smooth_l1)
    try:
        assert resolve_loss_params("test_smooth_l1", {"beta": 0.5}) == {"beta": 0.5, "alpha": 1.0}
        torch.manual_seed(0)
        student = mlp(64, 10, hidden=[8])
        result = distill(
            student,
            ModelTeacher(trained_mlp),
            digits.train,
            digits.val,
            loss="test_smooth_l1",
            loss_params={"beta": 0.5},
            epochs=2,
            progress=False,
        )
        assert len(result.history) == 2 and result.history[1]["kd"] < result.history[0]["kd"]
    finally:
        LOSSES.unregister("test_smooth_l1")
