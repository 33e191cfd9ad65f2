import pytest
import torch

from modelfusion import ConfigError, UnknownNameError
from modelfusion.features import SCHEDULES, Stage, backbone_blocks, finetune, splice
from modelfusion.models import cnn2d

CNN_KWARGS = {"channels": [4, 8], "hidden": 16}


def _spliced(digits):
    torch.manual_seed(0)
    return splice(cnn2d(**CNN_KWARGS), 10, at="10", example_input=digits.train.X[:2])


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_linear_probe_really_freezes_parameters_and_batchnorm_statistics(digits):
    model = _spliced(digits)
    backbone, head = _snapshot(model.backbone), _snapshot(model.head)
    result = finetune(model, digits.train, digits.val, schedule="linear_probe", epochs=2, lr=1e-2)
    assert all(torch.equal(backbone[k], v) for k, v in model.backbone.state_dict().items())
    assert not all(torch.equal(head[k], v) for k, v in model.head.state_dict().items())
    assert [s["name"] for s in result.stages] == ["linear probe"]
    assert all(p.requires_grad for p in model.parameters())  # the caller's flags come back


def test_full_and_probe_then_finetune_move_the_backbone(digits):
    for schedule, names in [("full", ["full fine-tune"]), ("probe_then_finetune", ["linear probe", "fine-tune"])]:
        model = _spliced(digits)
        before = _snapshot(model.backbone)
        result = finetune(model, digits.train, digits.val, schedule=schedule, epochs=2, lr=1e-2)
        assert [s["name"] for s in result.stages] == names
        changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(before[k], v)]
        assert "1.weight" in changed and "2.running_mean" in changed


def test_gradual_unfreezing_stages_and_rates(digits):
    model = _spliced(digits)
    blocks = backbone_blocks(model, "head")
    assert blocks == ["backbone.1", "backbone.2", "backbone.4", "backbone.5", "backbone.9"]
    stages = SCHEDULES["gradual"](model, "head", 12, 1e-2)
    assert [s.name for s in stages] == ["head"] + [f"+ {b}" for b in reversed(blocks)]
    assert [s.epochs for s in stages] == [2] * 6
    assert [s.epochs for s in SCHEDULES["gradual"](model, "head", 8, 1e-2)] == [2, 2, 1, 1, 1, 1]
    assert stages[2].rates == pytest.approx({"head": 1e-2, "backbone.9": 1e-2 / 2.6, "backbone.5": 1e-2 / 2.6**2})


def test_explicit_stages_freeze_everything_outside_their_prefixes(digits):
    model = _spliced(digits)
    before = _snapshot(model)
    finetune(model, digits.train, digits.val, schedule=[Stage(1, {"backbone.9": 1e-2})])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"backbone.9.weight", "backbone.9.bias"}


def test_finetune_errors(digits):
    model = _spliced(digits)
    with pytest.raises(UnknownNameError, match="valid names: .*gradual"):
        finetune(model, digits.train, digits.val, schedule="gradul")
    with pytest.raises(ConfigError, match="no head module 'classifier'"):
        finetune(model, digits.train, digits.val, head="classifier")
    with pytest.raises(ConfigError, match=r"stage 0 trains unknown modules \['backbone.99'\]"):
        finetune(model, digits.train, digits.val, schedule=[Stage(1, {"backbone.99": 1e-2})])


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_trains_the_head_first_within_the_epochs_and_leaves_flags_as_found(name, digits):
    model = _spliced(digits)
    stages = SCHEDULES[name](model, "head", 6, 1e-2)
    assert sum(s.epochs for s in stages) == 6 and all(s.epochs >= 1 for s in stages)
    assert all(s.rates.get("head") == 1e-2 or s.rates.get("head") is None for s in stages)
    assert "head" in stages[0].rates  # the new head learns from the first stage on
    frozen = dict(model.backbone.named_parameters())["1.weight"].requires_grad_(False)  # the caller's flag
    result = finetune(model, digits.train, digits.val, schedule=name, epochs=2, lr=1e-2)
    assert len(result.stages) >= 1 and not frozen.requires_grad
