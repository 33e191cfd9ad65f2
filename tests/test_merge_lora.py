"""LoRA adapters: PEFT folders read as PEFT means them, `model+adapter` in configs, adapters merged into one
adapter (exactly where the method is linear), adapters extracted from fine-tunes with their error; hostile files."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from modelfusion import CheckpointError, ConfigError, IncompatibleModelsError
from modelfusion.cli import app
from modelfusion.merge import METHODS, merge, merge_checkpoints
from modelfusion.merge.engine import AdaptedModel
from modelfusion.merge.lora import extract_lora, factorize, merge_adapters, read_adapter, write_adapter

from .llama import fine_tune, llama_state_dict, peft_adapter, write_checkpoint

Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture
def project(tmp_path):
    base = llama_state_dict(seed=0)
    write_checkpoint(tmp_path / "base", base)
    return tmp_path, base


def _peft_delta(folder, module: str, *, embedding: bool = False) -> torch.Tensor:
    """The update PEFT applies for `module`, from the raw tensors and config: scale * B @ A (transposed for an
    embedding)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    if embedding:
        a, b = (
            tensors[f"base_model.model.{module}.lora_embedding_A"],
            tensors[f"base_model.model.{module}.lora_embedding_B"],
        )
    else:
        a, b = tensors[f"base_model.model.{module}.lora_A.weight"], tensors[f"base_model.model.{module}.lora_B.weight"]
    rank = a.shape[0]
    alpha = config.get("alpha_pattern", {}).get(module.rsplit(".", 1)[-1], config["lora_alpha"])
    scale = alpha / (rank**0.5 if config.get("use_rslora") else rank)
    product = b @ a * scale
    return product.T if embedding else product


def test_read_adapter_scales_and_orients_updates_as_peft(project):
    root, base = project
    folder = peft_adapter(
        root / "lora",
        base,
        rank=4,
        alpha=8,
        targets=("q_proj", "down_proj", "embed_tokens"),
        config={"rank_pattern": {"down_proj": 4}, "alpha_pattern": {"down_proj": 2.0}},
    )
    adapter = read_adapter(folder)
    torch.testing.assert_close(adapter.updates[Q].delta(), _peft_delta(folder, Q.removesuffix(".weight")))
    down = "model.layers.1.mlp.down_proj"
    torch.testing.assert_close(adapter.updates[down + ".weight"].delta(), _peft_delta(folder, down))
    embed = "model.embed_tokens"
    torch.testing.assert_close(adapter.updates[embed + ".weight"].delta(), _peft_delta(folder, embed, embedding=True))
    assert adapter.layouts[embed + ".weight"] == "embedding" and adapter.updates[embed + ".weight"].shape == (50, 16)
    same = {"rank": 4, "alpha": 8, "targets": ("q_proj", "down_proj", "embed_tokens")}
    rslora = read_adapter(peft_adapter(root / "rs", base, **same, config={"use_rslora": True}))
    torch.testing.assert_close(rslora.updates[Q].delta(), adapter.updates[Q].delta() * 2)  # 8/sqrt(4) vs 8/4


def test_model_plus_adapter_in_a_config_applies_the_adapter(project):
    root, base = project
    for name, seed in (("a", 1), ("b", 2)):
        peft_adapter(root / f"lora_{name}", base, seed=seed, targets=("q_proj", "v_proj", "up_proj"))
    (root / "ta.yaml").write_text(
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
        "  - {model: base+lora_a, parameters: {weight: 1.0}}\n  - {model: base+lora_b, parameters: {weight: 0.5}}\n"
    )
    plan = merge(root / "ta.yaml", root / "out", progress=False)
    assert plan.models == [AdaptedModel(root / "base", root / "lora_a"), AdaptedModel(root / "base", root / "lora_b")]
    merged = load_file(str(root / "out" / "model.safetensors"))
    a, b = read_adapter(root / "lora_a"), read_adapter(root / "lora_b")
    for name, weight in base.items():
        expected = weight.clone()
        for adapter, w in ((a, 1.0), (b, 0.5)):
            if name in adapter.updates:
                expected += w * adapter.updates[name].delta()
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)
    assert json.loads((root / "out" / "config.json").read_text())["model_type"] == "llama"
    # the adapters are inputs: the output may not replace one
    with pytest.raises(Exception, match="input of this run"):
        merge(root / "ta.yaml", root / "lora_a", overwrite=True, progress=False)
    (root / "bad.yaml").write_text("merge_method: linear\nmodels:\n  - model: base+lora_a+lora_b\n")
    with pytest.raises(ConfigError, match=r"MODEL\+ADAPTER, with one '\+'"):
        merge(root / "bad.yaml", root / "out2", progress=False)


def test_an_adapted_model_streams_in_row_blocks_with_the_same_result(project):
    from modelfusion.merge import engine

    root, base = project
    peft_adapter(root / "lora", base, targets=("q_proj", "gate_proj", "embed_tokens"))
    reference = AdaptedModel(root / "base", root / "lora")
    merge_checkpoints([reference], root / "whole", "linear", progress=False)
    chunk = engine._CHUNK_BYTES
    engine._CHUNK_BYTES = 16 * 4 * 3  # three rows a block
    try:
        merge_checkpoints([reference], root / "rows", "linear", progress=False)
    finally:
        engine._CHUNK_BYTES = chunk
    whole, rows = (
        load_file(str(root / "whole" / "model.safetensors")),
        load_file(str(root / "rows" / "model.safetensors")),
    )
    for name in whole:  # equal up to the matrix product's rounding, which depends on the block
        torch.testing.assert_close(whole[name], rows[name], rtol=0, atol=1e-6)
    assert not torch.equal(whole["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_an_adapter_that_does_not_fit_its_model_is_refused_by_name(project):
    root, base = project
    other = llama_state_dict(hidden=8, seed=3)
    peft_adapter(root / "lora", other)
    with pytest.raises(IncompatibleModelsError, match=r"does not fit .*base: .*q_proj\.weight is \(16, 16\)"):
        merge_checkpoints([AdaptedModel(root / "base", root / "lora")], root / "out", "linear", progress=False)


# -- merging adapters -----------------------------------------------------------------------------------------
def _adapters(root, base, count=3, targets=("q_proj", "v_proj", "down_proj")):
    return [peft_adapter(root / f"lora{i}", base, seed=i + 1, rank=2 + i, targets=targets) for i in range(count)]


def test_task_arithmetic_of_adapters_is_exact_and_cut_optimally(project):
    root, base = project
    folders = _adapters(root, base)
    adapters = [read_adapter(f) for f in folders]
    result = merge_adapters(folders, root / "merged", method="task_arithmetic", weight=[1.0, 0.5, -0.3], lambda_=0.8)
    assert result.exact and result.summary().startswith("6 low-rank updates merged exactly")
    for name, update in result.adapter.updates.items():
        expected = 0.8 * sum(w * a.updates[name].delta() for w, a in zip((1.0, 0.5, -0.3), adapters, strict=True))
        assert update.rank == 2 + 3 + 4
        torch.testing.assert_close(update.delta(), expected, rtol=0, atol=1e-5)
    written = read_adapter(root / "merged")  # as PEFT would read it
    torch.testing.assert_close(written.updates[Q].delta(), result.adapter.updates[Q].delta(), rtol=0, atol=1e-6)
    # cut to rank 3: the error is that of the best rank-3 approximation of the dense sum
    cut = merge_adapters(folders, method="task_arithmetic", rank=3)
    dense = sum(a.updates[Q].delta() for a in adapters)
    best, best_error = factorize(dense, 3)
    assert cut.adapter.updates[Q].rank == 3
    assert cut.errors[Q] == pytest.approx(best_error, rel=1e-4)
    torch.testing.assert_close(cut.adapter.updates[Q].delta(), best.delta(), rtol=0, atol=1e-5)


def test_ties_of_adapters_is_ties_of_their_updates_cut_to_the_rank(project):
    root, base = project
    folders = _adapters(root, base)
    adapters = [read_adapter(f) for f in folders]
    full_rank = merge_adapters(folders, method="ties", density=0.5, rank=16)
    assert not full_rank.exact
    for name in adapters[0].updates:
        deltas = [a.updates[name].delta() for a in adapters]
        expected = METHODS["ties"](deltas, torch.zeros_like(deltas[0]), density=0.5)
        torch.testing.assert_close(full_rank.adapter.updates[name].delta(), expected, rtol=0, atol=1e-5)
    cut = merge_adapters(folders, method="ties", density=0.5)  # default: the largest input rank, 4
    assert {u.rank for u in cut.adapter.updates.values()} == {4} and max(cut.errors.values()) > 0
    linear = merge_adapters(folders, method="linear", weight=[2.0, 1.0, 1.0])  # the weighted mean
    expected = sum(w * a.updates[Q].delta() for w, a in zip((0.5, 0.25, 0.25), adapters, strict=True))
    torch.testing.assert_close(linear.adapter.updates[Q].delta(), expected, rtol=0, atol=1e-6)


def test_adapters_of_other_modules_and_bad_merges(project):
    root, base = project
    a = peft_adapter(root / "qa", base, targets=("q_proj",))
    b = peft_adapter(root / "va", base, targets=("v_proj",), seed=5)
    merged = merge_adapters([a, b], method="ties", density=0.5)
    assert set(merged.adapter.updates) == set(read_adapter(a).updates) | set(read_adapter(b).updates)
    with pytest.raises(ConfigError, match="cannot merge adapters"):
        merge_adapters([a, b], method="slerp")
    with pytest.raises(ConfigError, match="rank must be a whole number"):
        merge_adapters([a, b], rank=0)
    small = peft_adapter(root / "small", llama_state_dict(hidden=8, seed=1), targets=("q_proj",))
    with pytest.raises(IncompatibleModelsError, match="do not adapt one base model"):
        merge_adapters([a, small])


# -- extraction ---------------------------------------------------------------------------------------------
def test_extract_lora_recovers_a_low_rank_fine_tune_and_reports_the_error(project):
    root, base = project
    generator = torch.Generator().manual_seed(7)
    tuned = dict(base)
    for name in (Q, "model.layers.1.mlp.up_proj.weight"):
        rows, cols = base[name].shape
        tuned[name] = base[name] + torch.randn(rows, 3, generator=generator) @ torch.randn(3, cols, generator=generator)
    tuned["model.norm.weight"] = base["model.norm.weight"] + 0.1
    write_checkpoint(root / "tuned", tuned)
    exact = extract_lora(root / "base", root / "tuned", root / "lora", rank=3)
    assert set(exact.errors) == {Q, "model.layers.1.mlp.up_proj.weight"}  # unchanged tensors are not stored
    assert exact.overall_error < 1e-5 and exact.stored_whole == ["model.norm.weight"]
    report = json.loads((root / "lora" / "extraction.json").read_text())
    assert report["rank"] == 3 and report["overall_relative_error"] < 1e-5
    merge_checkpoints([AdaptedModel(root / "base", root / "lora")], root / "rebuilt", "linear", progress=False)
    rebuilt = load_file(str(root / "rebuilt" / "model.safetensors"))
    assert all(torch.allclose(rebuilt[k], tuned[k], atol=1e-5) for k in tuned)
    # a smaller rank leaves exactly the singular values it drops
    cut = extract_lora(root / "base", root / "tuned", rank=1)
    s = torch.linalg.svdvals(tuned[Q] - base[Q])
    assert cut.errors[Q] == pytest.approx(float((s[1:].square().sum() / s.square().sum()).sqrt()), rel=1e-4)
    randomized = extract_lora(root / "base", root / "tuned", rank=1, svd="randomized")
    assert randomized.errors[Q] == pytest.approx(cut.errors[Q], rel=1e-3)


def test_extract_lora_on_the_cli(project):
    root, base = project
    write_checkpoint(root / "tuned", fine_tune(base, scale=0.05, seed=3))
    args = ["extract-lora", str(root / "base"), str(root / "tuned"), "--rank", "4", "--out", str(root / "lora")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "rank 4: 14 matrices decomposed, 7 tensors stored whole" in result.output
    adapter = read_adapter(root / "lora")
    assert set(adapter.full) == {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")
    }
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists and is not empty" in again.output
    merged = CliRunner().invoke(
        app, ["merge-adapters", str(root / "lora"), str(root / "lora"), "--out", str(root / "m")]
    )
    assert merged.exit_code == 2 and "replace whole tensors" in merged.output and "--base" in merged.output
    merged = CliRunner().invoke(
        app,
        [
            "merge-adapters",
            str(root / "lora"),
            str(root / "lora"),
            "--out",
            str(root / "m"),
            "--base",
            str(root / "base"),
        ]
        + ["--method", "linear"],
    )
    assert merged.exit_code == 0, merged.output
    again = read_adapter(root / "m")
    torch.testing.assert_close(again.full["model.norm.weight"], adapter.full["model.norm.weight"])


# -- hostile adapter folders --------------------------------------------------------------------------------
def _broken(root, base, *, config=None, tensors=None, drop=None):
    folder = peft_adapter(root / "broken", base, config=config)
    if tensors is not None or drop is not None:
        current = load_file(str(folder / "adapter_model.safetensors"))
        current = {k: v for k, v in current.items() if drop is None or drop not in k} | (tensors or {})
        save_file(current, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"config": {"r": -1}}, "field 'r' is invalid"),
        ({"config": {"lora_alpha": float("nan")}}, "field 'lora_alpha' is invalid"),
        ({"config": {"peft_type": "IA3"}}, "peft_type 'IA3' is not supported"),
        ({"config": {"use_dora": True}}, "DoRA adapters"),
        ({"config": {"rank_pattern": {"(a+)+$": 2}}}, "is a regular expression"),
        ({"config": {"r": 8}}, "rank 4 in the weights but 8 in adapter_config.json"),
        ({"drop": "layers.0.self_attn.q_proj.lora_B"}, "has a lora_A factor but not the other one"),
        ({"tensors": {"model.x.lora_A.weight": torch.zeros(4, 16)}}, "does not start with 'base_model.model.'"),
        ({"tensors": {"base_model.model.x.lora_magnitude_vector": torch.zeros(4)}}, "DoRA magnitudes"),
        ({"tensors": {"base_model.model.x.lora_A.weight": torch.zeros(4, 16, dtype=torch.int64)}}, "not floating"),
        (
            {
                "tensors": {
                    "base_model.model.x.lora_A.weight": torch.zeros(4, 16),
                    "base_model.model.x.lora_B.weight": torch.zeros(16, 3),
                }
            },
            "are not \\[r, in\\] and \\[out, r\\] of one rank",
        ),
    ],
)
def test_bad_adapters_are_one_line_errors(project, change, match):
    root, base = project
    folder = _broken(root, base, **change)
    with pytest.raises(CheckpointError, match=match) as caught:
        read_adapter(folder)
    assert "\n" not in str(caught.value)


def test_adapter_folders_that_are_not_adapters(project):
    root, base = project
    folder = peft_adapter(root / "lora", base)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="adapter_model.bin is a pickle"):
        read_adapter(folder)
    (folder / "adapter_config.json").write_text("[1, 2]")
    (folder / "adapter_model.bin").unlink()
    with pytest.raises(CheckpointError, match="a PEFT adapter config is a JSON object, got list"):
        read_adapter(folder)
    (folder / "adapter_config.json").write_bytes(b" " * (2**20 + 1))
    with pytest.raises(CheckpointError, match="a PEFT adapter config is at most 1,048,576 bytes"):
        read_adapter(folder)
    with pytest.raises(CheckpointError, match="no such folder"):
        read_adapter(root / "missing")


def test_written_adapters_round_trip(project):
    root, base = project
    adapter = read_adapter(
        peft_adapter(root / "lora", base, targets=("q_proj", "embed_tokens"), config={"use_rslora": True})
    )
    write_adapter(adapter, root / "copy")
    again = read_adapter(root / "copy")
    assert set(again.updates) == set(adapter.updates) and again.layouts == adapter.layouts
    for name, update in adapter.updates.items():
        torch.testing.assert_close(again.updates[name].delta(), update.delta())
    config = json.loads((root / "copy" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] == 4 and config["use_rslora"] is False
    assert "model.layers.0.self_attn.q_proj" in config["target_modules"]
