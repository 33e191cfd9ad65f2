"""merge-search: a merge config's per-model settings tuned on validation data, the best written back as YAML."""

import copy
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from modelfusion import ConfigError
from modelfusion.cli import app
from modelfusion.io import save_member
from modelfusion.merge import merge
from modelfusion.merge.search import search_merge

from .conftest import MLP_KWARGS


@pytest.fixture
def project(tmp_path, trained_mlp):
    """A good fine-tune and a damaged one of the same network: averaging them evenly hurts."""
    good = copy.deepcopy(trained_mlp)
    bad = copy.deepcopy(trained_mlp)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in bad.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    save_member(good, tmp_path / "good.safetensors", factory="mlp", factory_kwargs=MLP_KWARGS)
    save_member(bad, tmp_path / "bad.safetensors", factory="mlp", factory_kwargs=MLP_KWARGS)
    (tmp_path / "soup.yaml").write_text(
        "merge_method: linear\nmodels:\n  - {model: good.safetensors, parameters: {weight: 0.5}}\n"
        "  - {model: bad.safetensors, parameters: {weight: 0.5}}\n"
    )
    return tmp_path


def _accuracy(folder, split) -> float:
    from modelfusion.io import load_member

    logits = load_member(next(folder.glob("*.safetensors"))).predict(split.X)
    return float((logits.argmax(1) == split.y).double().mean())


@pytest.mark.parametrize("optimizer", ["cma", "powell"])
def test_search_finds_better_weights_and_writes_a_config_that_reproduces_them(project, digits, optimizer):
    result = search_merge(project / "soup.yaml", digits.val, evaluations=24, optimizer=optimizer, seed=1)
    assert len(result.curve) <= 24 and result.curve[0]["score"] == result.start_score
    assert [p["best"] for p in result.curve] == sorted(p["best"] for p in result.curve)  # best so far only rises
    assert result.score >= result.start_score + 0.1, result.summary()
    weights = {k: v for k, v in result.settings.items()}
    assert weights["bad.safetensors: weight"] < weights["good.safetensors: weight"]
    path = result.save(project / "best.yaml")
    written = yaml.safe_load(path.read_text())
    assert written["models"][0]["model"] == "good.safetensors"  # relative to the YAML, as the user wrote them
    merge(path, project / "merged", progress=False)
    assert _accuracy(project / "merged", digits.val) == pytest.approx(result.score)
    curve = json.loads((project / "best.search.json").read_text())
    assert len(curve["curve"]) == len(result.curve) and curve["start_score"] == result.start_score


def test_layer_groups_give_each_group_its_own_weight(tmp_path):
    """Two fine-tunes of a 4-layer Llama; the target takes its first two layers from one and its last two from
    the other: a search per group of layers finds that, a search of one value per model cannot."""
    from safetensors.torch import load_file

    from .llama import fine_tune, llama_state_dict, write_checkpoint

    base = llama_state_dict(layers=4, seed=0)
    tunes = [fine_tune(base, scale=0.1, seed=i + 1) for i in range(2)]
    for i, state in enumerate(tunes):
        write_checkpoint(tmp_path / f"ft{i}", state)
    target = {k: tunes[0 if any(f"layers.{i}." in k for i in (0, 1)) else 1][k] for k in base}
    (tmp_path / "soup.yaml").write_text("merge_method: linear\nmodels:\n  - model: ft0\n  - model: ft1\n")

    def closeness(folder):
        merged = load_file(str(folder / "model.safetensors"))
        return -sum(float((merged[k] - target[k]).square().sum()) for k in target if ".layers." in k)

    grouped = search_merge(tmp_path / "soup.yaml", score=closeness, evaluations=80, layer_groups=2, seed=0)
    plain = search_merge(tmp_path / "soup.yaml", score=closeness, evaluations=30, seed=0)
    assert len(grouped.settings) == 6  # 2 models x (2 groups of layers + the tensors outside them)
    assert grouped.score > 0.25 * plain.score  # scores are negative distances: 4 times closer
    conditions = yaml.safe_load(grouped.yaml())["models"][0]["parameters"]["weight"]
    assert [c.get("filter") for c in conditions] == [
        "model.layers.0.",
        "model.layers.1.",
        "model.layers.2.",
        "model.layers.3.",
        None,
    ]
    settings = grouped.settings
    assert settings["ft0: weight, group 0"] > 4 * settings["ft1: weight, group 0"]
    assert settings["ft1: weight, group 1"] > 4 * settings["ft0: weight, group 1"]


def test_merge_search_on_the_cli_and_its_refusals(project):
    out = project / "best.yaml"
    args = ["merge-search", str(project / "soup.yaml"), "--data", "digits", "--out", str(out), "--evaluations", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "merges scored on validation; accuracy:" in result.output and out.exists()
    assert (project / "best.search.svg").read_text().lstrip().startswith("<svg")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output
    (project / "slerp.yaml").write_text(
        "merge_method: slerp\nbase_model: good.safetensors\nmodels:\n  - model: bad.safetensors\n"
    )
    with pytest.raises(ConfigError, match="no per-model weight or density to tune"):
        search_merge(project / "slerp.yaml", object(), evaluations=4)
    with pytest.raises(ConfigError, match="layer groups need numbered layers"):
        search_merge(project / "soup.yaml", object(), evaluations=4, layer_groups=2)
    with pytest.raises(ConfigError, match="evaluations must be a whole number of at least 2"):
        search_merge(project / "soup.yaml", object(), evaluations=1)
