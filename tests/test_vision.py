"""modelfusion.vision against torchvision's and timm's own models (tests/golden/vision.json, written by
bench/vision_golden.py): the same state-dict keys and shapes, the same outputs on fixed weights and inputs; and a
saved state dict reloads by registered name with no code from the file."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modelfusion import CheckpointError
from modelfusion.io import load_member, save_member
from modelfusion.members import TorchMember
from modelfusion.models import MODELS

from .vision_reference import CASES, OUTPUT_CASES, fixed_input, fixed_state

GOLDEN = json.loads((Path(__file__).parent / "golden" / "vision.json").read_text())


def test_every_registered_architecture_is_in_the_golden_file():
    registered = {name for name in MODELS.names() if name.startswith(("torchvision.", "timm."))}
    assert registered == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_keys_and_shapes_are_the_libraries_own(name):
    _, _, num_classes, _ = CASES[name]
    with torch.device("meta"):
        model = MODELS[name](num_classes=num_classes)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == GOLDEN[name]["keys"]


# The deepest and widest networks take seconds each to fill with fixed weights: slow-marked.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if "18" not in n else n for n in OUTPUT_CASES]
)
def test_outputs_on_fixed_weights_are_the_libraries_own(name):
    _, _, num_classes, shape = CASES[name]
    model = MODELS[name](num_classes=num_classes).eval()
    model.load_state_dict(fixed_state(model))
    with torch.no_grad():
        out = model(fixed_input(shape))
    expected = torch.tensor(GOLDEN[name]["output"])
    torch.testing.assert_close(out, expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)


def test_a_resnet18_state_dict_reloads_by_registered_name(tmp_path):
    torch.manual_seed(0)
    model = MODELS["torchvision.resnet18"](num_classes=7).eval()
    member = TorchMember(model, name="r18", factory="torchvision.resnet18", factory_kwargs={"num_classes": 7})
    path = save_member(member, tmp_path / "r18.safetensors")
    loaded = load_member(path)  # the header names the registered factory: no factory= needed, no code in the file
    X = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded.predict(X), member.predict(X))
    # A plain state dict, as torchvision users save it, loads with the name given by the caller.
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    plain = load_member(
        tmp_path / "plain.safetensors", factory="torchvision.resnet18", factory_kwargs={"num_classes": 7}
    )
    torch.testing.assert_close(plain.predict(X), member.predict(X))
    with pytest.raises(CheckpointError, match="fc.weight \\(file \\(7, 512\\), model \\(5, 512\\)\\)"):
        load_member(tmp_path / "plain.safetensors", factory="torchvision.resnet18", factory_kwargs={"num_classes": 5})


def test_arguments_from_a_file_are_checked_against_the_factory(tmp_path):
    model = MODELS["torchvision.resnet18"](num_classes=3)
    member = TorchMember(
        model, name="r", factory="torchvision.resnet18", factory_kwargs={"num_classes": 3, "block": "x"}
    )
    path = save_member(member, tmp_path / "r.safetensors")
    with pytest.raises(CheckpointError, match="takes no arguments \\['block'\\]"):
        load_member(path)


def test_a_spliced_resnet_saves_and_reloads_through_registered_names_only(tmp_path):
    from modelfusion.features import spliced_member

    torch.manual_seed(0)
    backbone = TorchMember(
        MODELS["torchvision.resnet18"](num_classes=4), name="r", factory="torchvision.resnet18",
        factory_kwargs={"num_classes": 4},
    )  # fmt: skip
    X = torch.randn(3, 3, 32, 32)
    member = spliced_member(backbone, 6, at="layer3", example_input=X[:2])
    path = save_member(member, tmp_path / "spliced.safetensors")
    torch.testing.assert_close(load_member(path).predict(X), member.predict(X))
    header = json.loads(json.loads(_header(path))["__metadata__"]["modelfusion"])
    assert header["factory"] == "spliced" and header["factory_kwargs"]["backbone"] == "torchvision.resnet18"
    assert header["factory_kwargs"]["input_shape"] == [3, 32, 32]


def _header(path: Path) -> str:
    data = path.read_bytes()
    return data[8 : 8 + int.from_bytes(data[:8], "little")].decode()
