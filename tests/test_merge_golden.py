"""Our merges against mergekit 0.1.5's on the same YAML and tiny Llama-style checkpoints.

The golden outputs come from bench/mergekit_golden.py (mergekit in its own venv); mergekit is not needed here.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelfusion.merge import merge

GOLDEN = Path(__file__).parent / "golden" / "mergekit"


DETERMINISTIC = [
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "breadcrumbs",
    "breadcrumbs_ties",  # per-model gamma, int8_mask
    "ties_int8_mask",
    "nearswap",
    "nuslerp",
    "nuslerp_row_wise",
    "multislerp",
    "karcher",
    "sce",
    "passthrough",
    # the config grammar
    "slerp_gradient_slices",  # slices, a t gradient per filter
    "passthrough_frankenmerge",  # layer ranges of two models stacked and renumbered
    "ties_slices",  # per-slice, per-source parameters
    "ties_gradients",  # per-model gradient lists, int8_mask
    "task_arithmetic_filters",  # per-model and global filters, lambda
    "linear_out_dtype",
]


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_deterministic_methods_equal_mergekit(method, tmp_path):
    merge(GOLDEN / f"{method}.yaml", tmp_path / "out", progress=False)
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    theirs = load_file(str(GOLDEN / f"{method}.mergekit.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=f"{method}: {name}")


def test_dare_matches_mergekit_statistics(tmp_path):
    """DARE draws differ (mergekit uses one global stream), so compare what the draws should preserve."""
    merge(GOLDEN / "dare_linear.yaml", tmp_path / "out", progress=False)
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    theirs = load_file(str(GOLDEN / "dare_linear.mergekit.safetensors"))
    base = load_file(str(GOLDEN / "base" / "model.safetensors"))
    ours_delta = torch.cat([(ours[k] - base[k]).flatten() for k in base])
    theirs_delta = torch.cat([(theirs[k] - base[k]).flatten() for k in base])
    # With density 0.5 for both models, an entry keeps the base value when both drop it: 1/4 of entries.
    unchanged_ours = (ours_delta == 0).float().mean().item()
    unchanged_theirs = (theirs_delta == 0).float().mean().item()
    assert unchanged_ours == pytest.approx(0.25, abs=0.02) and unchanged_theirs == pytest.approx(0.25, abs=0.02)
    # Both rescale so that the merged task vector is the sum of the models' task vectors in expectation:
    # its projection on that sum is about 1 (ours rescales by 1/density, mergekit restores the L1 norm).
    tunes = [load_file(str(GOLDEN / f"ft{i}" / "model.safetensors")) for i in (0, 1)]
    expected = torch.cat([(tunes[0][k] + tunes[1][k] - 2 * base[k]).flatten() for k in base])
    for delta in (ours_delta, theirs_delta):
        assert (delta @ expected / (expected @ expected)).item() == pytest.approx(1.0, abs=0.05)
    assert ours_delta.abs().mean().item() == pytest.approx(theirs_delta.abs().mean().item(), rel=0.1)


def test_della_matches_mergekit_statistics(tmp_path):
    """DELLA's draws differ too; both keep about `density` of each task vector, the larger entries more often."""
    merge(GOLDEN / "della.yaml", tmp_path / "out", progress=False)
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    theirs = load_file(str(GOLDEN / "della.mergekit.safetensors"))
    base = load_file(str(GOLDEN / "base" / "model.safetensors"))
    tunes = [load_file(str(GOLDEN / f"ft{i}" / "model.safetensors")) for i in (0, 1)]
    deltas = [torch.cat([(t[k] - base[k]).flatten() for k in base]) for t in tunes]
    projections = []
    for merged in (ours, theirs):
        delta = torch.cat([(merged[k] - base[k]).flatten() for k in base])
        # an entry is unchanged where both models dropped it or their kept entries cancel: about (1 - 0.5)^2
        assert (delta == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
        # the kept share is larger among the larger entries of a task vector (rank-dependent probabilities)
        large = deltas[0].abs() > deltas[0].abs().median()
        changed = delta != 0
        assert changed[large].float().mean() > changed[~large].float().mean()
        expected = (deltas[0] + deltas[1]) / 2
        projections.append((delta @ expected / (expected @ expected)).item())
    # both rescale the kept entries (ours by 1 / p per entry, mergekit to the L1 norm): the merged task vector's
    # projection on the mean of the two is the same within 10%
    assert projections[0] == pytest.approx(projections[1], rel=0.1), projections


@pytest.mark.parametrize("method", ["slerp_gradient_slices", "passthrough_frankenmerge", "ties_slices"])
def test_slices_write_mergekit_layer_count(method, tmp_path):
    merge(GOLDEN / f"{method}.yaml", tmp_path / "out", progress=False)
    ours = json.loads((tmp_path / "out" / "config.json").read_text())
    theirs = json.loads((GOLDEN / f"{method}.mergekit.config.json").read_text())
    assert ours["num_hidden_layers"] == theirs["num_hidden_layers"]
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert len({k.split(".")[2] for k in merged if ".layers." in k}) == ours["num_hidden_layers"]


# -- LoRA and MoE: mergekit-extract-lora, PEFT's own adapters, mergekit-moe --------------------------------
def test_lora_extraction_equals_mergekit_extract_lora():
    from modelfusion.merge.lora import extract_lora, read_adapter

    theirs = read_adapter(GOLDEN / "lora_extract.mergekit")
    ours = extract_lora(GOLDEN / "base", GOLDEN / "ft0", rank=4).adapter
    assert ours.updates.keys() == theirs.updates.keys() and ours.full.keys() == theirs.full.keys()
    for name, update in theirs.updates.items():  # the factors differ by signs; their products are the same
        torch.testing.assert_close(ours.updates[name].delta(), update.delta(), rtol=0, atol=1e-6, msg=name)
    for name, tensor in theirs.full.items():
        assert torch.equal(ours.full[name], tensor), name
    config = json.loads((GOLDEN / "lora_extract.mergekit" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 4


@pytest.mark.parametrize("adapter", ["lora_peft", "lora_peft_rslora", "lora_extract.mergekit"])
def test_model_plus_adapter_equals_peft_merge_and_unload(adapter, tmp_path):
    """PEFT's own adapters (rank and alpha patterns, an embedding, a whole module, rsLoRA) applied as
    `base+adapter`, against the weights PEFT's merge_and_unload gives (mergekit's extraction: against ft0)."""
    from modelfusion.merge import merge_checkpoints
    from modelfusion.merge.engine import AdaptedModel

    merge_checkpoints([AdaptedModel(GOLDEN / "base", GOLDEN / adapter)], tmp_path / "out", "linear", progress=False)
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    if adapter == "lora_extract.mergekit":  # rank 4 of 16: close to the fine-tune, not equal
        tuned = load_file(str(GOLDEN / "ft0" / "model.safetensors"))
        assert all(torch.equal(ours[k], tuned[k]) for k in ("lm_head.weight", "model.norm.weight"))
        return
    theirs = load_file(str(GOLDEN / f"{adapter}.peft_merged.safetensors"))
    theirs = {k: v for k, v in theirs.items() if k in ours}  # PEFT's state dict may also hold a tied copy
    assert ours.keys() == theirs.keys()
    changed = 0
    base = load_file(str(GOLDEN / "base" / "model.safetensors"))
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6, msg=name)
        changed += not torch.equal(tensor, base[name])
    assert changed >= 6


@pytest.mark.parametrize("mode", ["hidden", "cheap_embed"])
def test_moe_layout_equals_mergekit_moe(mode, tmp_path):
    """mergekit 0.1.5 writes transformers 5's fused layout; ours (`layout: fused`) holds the same tensors. Its
    hidden-state router runs the base in bfloat16 (ours in float32): the same directions within that precision."""
    pytest.importorskip("transformers")
    from modelfusion.merge.moe import build_moe, load_moe_config

    config = load_moe_config(GOLDEN / f"moe_{mode}.yaml").model_copy(update={"layout": "fused"})
    config = config.model_copy(
        update={
            "base_model": str(GOLDEN / config.base_model),
            "experts": [e.model_copy(update={"source_model": str(GOLDEN / e.source_model)}) for e in config.experts],
        }
    )
    build_moe(config, tmp_path / "out", progress=False)
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    theirs = load_file(str(GOLDEN / f"moe_{mode}.mergekit.safetensors"))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        if name.endswith("mlp.gate.weight"):
            cosine = torch.nn.functional.cosine_similarity(ours[name], tensor, dim=1)
            assert bool((cosine > (0.999 if mode == "hidden" else 1 - 1e-6)).all()), (name, cosine)
        else:
            assert torch.equal(ours[name], tensor), name
    ours_config = json.loads((tmp_path / "out" / "config.json").read_text())
    theirs_config = json.loads((GOLDEN / f"moe_{mode}.mergekit.config.json").read_text())
    for key in ("architectures", "model_type", "num_local_experts", "num_experts_per_tok", "hidden_size"):
        assert ours_config[key] == theirs_config[key], key
    assert ours_config["num_hidden_layers"] == theirs_config["num_hidden_layers"]
