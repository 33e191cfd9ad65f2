"""Mixtures of experts from dense fine-tunes: Mixtral checkpoints that transformers loads and runs, routers from the
base's hidden states, mergekit-moe's config and layout; a tiny Llama and its tokenizer are made in the test."""

import json

import pytest
import torch
from safetensors.torch import load_file

from modelfusion import ConfigError, IncompatibleModelsError
from modelfusion.merge.moe import build_moe

from .llama import fine_tune, llama_state_dict, write_checkpoint, write_tokenizer

transformers = pytest.importorskip("transformers")

PROMPTS = {
    0: ["solve the equation", "add numbers sum"],
    1: ["write python function", "import class return"],
    2: ["poem story love", "moon river song"],
}


@pytest.fixture
def models(tmp_path):
    base = llama_state_dict(seed=0)
    write_checkpoint(tmp_path / "base", base)
    write_tokenizer(tmp_path / "base")
    for i in range(3):
        write_checkpoint(tmp_path / f"ft{i}", fine_tune(base, scale=0.05, seed=i + 1))
    return tmp_path


def _config(root, experts, *, extra: str = "", prompts: bool = True) -> str:
    lines = ["base_model: base", *extra.splitlines(), "experts:"]
    for index, model in enumerate(experts):
        lines.append(f"  - source_model: {model}")
        if prompts:
            lines.append(f"    positive_prompts: {json.dumps(PROMPTS[index])}")
    path = root / "moe.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _logits(folder, ids) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_mixture_of_copies_of_the_base_computes_the_base(models):
    """Mixtral renormalizes the top-k routing weights, so experts that all equal the base give the base's output
    whatever the router: the layout, the config and the copied tensors are right."""
    result = build_moe(_config(models, ["base", "base", "base"]), models / "moe", progress=False)
    config = json.loads((models / "moe" / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 3
    assert config["num_experts_per_tok"] == 2 and result.routers.shape == (2, 3, 16)
    ids = torch.tensor([[0, 3, 4, 5, 20, 21, 9]])
    torch.testing.assert_close(_logits(models / "moe", ids), _logits(models / "base", ids), rtol=0, atol=1e-5)
    assert (models / "moe" / "tokenizer.json").exists()


def test_hidden_routers_send_each_experts_prompts_to_it(models):
    result = build_moe(_config(models, ["ft0", "ft1", "ft2"]), models / "moe", progress=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(models / "base"), local_files_only=True)
    base = transformers.AutoModelForCausalLM.from_pretrained(str(models / "base"), local_files_only=True)
    for expert, prompts in PROMPTS.items():
        for prompt in prompts:
            ids = tokenizer("<s>" + prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                states = base(input_ids=ids, output_hidden_states=True).hidden_states[:-1]
            for layer, state in enumerate(states):
                scores = result.routers[layer] @ state[0, -1]
                assert int(scores.argmax()) == expert, (prompt, layer, scores)
    merged = load_file(str(models / "moe" / "model.safetensors"))
    ft1 = load_file(str(models / "ft1" / "model.safetensors"))
    assert torch.equal(
        merged["model.layers.1.block_sparse_moe.experts.1.w2.weight"], ft1["model.layers.1.mlp.down_proj.weight"]
    )
    base_weights = load_file(str(models / "base" / "model.safetensors"))
    assert torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], base_weights["model.layers.0.self_attn.q_proj.weight"]
    )
    logits = _logits(models / "moe", torch.tensor([[0, 3, 4]]))
    assert logits.shape == (1, 3, 50) and torch.isfinite(logits).all()


def test_the_fused_layout_is_the_same_model(models):
    build_moe(_config(models, ["ft0", "ft1"]), models / "classic", progress=False)
    build_moe(_config(models, ["ft0", "ft1"], extra="layout: fused"), models / "fused", progress=False)
    fused = load_file(str(models / "fused" / "model.safetensors"))
    assert fused["model.layers.0.mlp.experts.gate_up_proj"].shape == (2, 64, 16)
    ids = torch.tensor([[0, 5, 8, 13, 2]])
    torch.testing.assert_close(_logits(models / "fused", ids), _logits(models / "classic", ids), rtol=0, atol=1e-6)


def test_random_routers_need_no_prompts_and_follow_the_seed(models):
    path = _config(models, ["ft0", "ft1"], extra="gate_mode: random\nrandom_seed: 3\ndtype: bfloat16", prompts=False)
    first = build_moe(path, models / "a", progress=False)
    second = build_moe(path, models / "b", progress=False)
    assert torch.equal(first.routers, second.routers)
    merged = load_file(str(models / "a" / "model.safetensors"))
    assert merged["model.layers.0.block_sparse_moe.gate.weight"].dtype == torch.bfloat16
    assert json.loads((models / "a" / "config.json").read_text())["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize(
    ("extra", "experts", "prompts", "match"),
    [
        ("experts_per_token: 3", ["ft0", "ft1"], True, "experts_per_token is 3 but there are 2 experts"),
        ("", ["ft0", "ft1"], False, "expert 0 has no positive_prompts"),
        ("shared_experts: [{source_model: ft0}]", ["ft0", "ft1"], True, "shared_experts are not supported"),
        ("gate_mode: sideways", ["ft0"], True, "gate_mode"),
        ("", ["ft0", "missing+lora"], True, "no such"),
    ],
)
def test_bad_moe_configs_are_one_line_errors(models, extra, experts, prompts, match):
    with pytest.raises(Exception, match=match) as caught:
        build_moe(_config(models, experts, extra=extra, prompts=prompts), models / "out", progress=False)
    assert "\n" not in str(caught.value) and not (models / "out").exists()


def test_identical_prompts_and_foreign_models_are_refused(models):
    path = models / "same.yaml"
    path.write_text(
        "base_model: base\nexperts:\n  - {source_model: ft0, positive_prompts: [poem]}\n"
        "  - {source_model: ft1, positive_prompts: [poem]}\n"
    )
    with pytest.raises(ConfigError, match="same prompts"):
        build_moe(path, models / "out", progress=False)
    config = json.loads((models / "ft1" / "config.json").read_text())
    (models / "ft1" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    (models / "base" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(IncompatibleModelsError, match="built from Llama or Mistral models"):
        build_moe(_config(models, ["ft0", "ft1"]), models / "out", progress=False)


def test_moe_on_the_cli(models):
    from typer.testing import CliRunner

    from modelfusion.cli import app

    path = _config(models, ["ft0", "ft1"], extra="gate_mode: cheap_embed")
    result = CliRunner().invoke(app, ["moe", str(path), str(models / "moe"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 experts x 2 layers (hidden 16), 2 per token, router from cheap_embed" in result.output
    again = CliRunner().invoke(app, ["moe", str(path), str(models / "moe")])
    assert again.exit_code == 2 and "exists and is not empty" in again.output
