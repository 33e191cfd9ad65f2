"""Tiny Llama-style safetensors checkpoints, generated locally for merge tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def llama_state_dict(*, hidden: int = 16, layers: int = 2, vocab: int = 50, intermediate: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)

    def weight(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    state = {"model.embed_tokens.weight": weight(vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[prefix + f"self_attn.{name}.weight"] = weight(hidden, hidden)
        state[prefix + "mlp.gate_proj.weight"] = weight(intermediate, hidden)
        state[prefix + "mlp.up_proj.weight"] = weight(intermediate, hidden)
        state[prefix + "mlp.down_proj.weight"] = weight(hidden, intermediate)
        state[prefix + "input_layernorm.weight"] = 1 + weight(hidden)
        state[prefix + "post_attention_layernorm.weight"] = 1 + weight(hidden)
    state["model.norm.weight"] = 1 + weight(hidden)
    state["lm_head.weight"] = weight(vocab, hidden)
    return state


def fine_tune(base: dict, *, scale: float = 0.01, seed: int = 1) -> dict:
    """base + small noise, as a fine-tune of it."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + torch.randn(v.shape, generator=generator) * scale for k, v in base.items()}


def write_checkpoint(folder: Path, state: dict, *, shards: int = 1, dtype=torch.float32) -> Path:
    """A Hugging Face-style folder: config.json and model.safetensors, or shards with an index."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    vocab, hidden = state["model.embed_tokens.weight"].shape
    layers = len({k.split(".")[2] for k in state if k.startswith("model.layers.")})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": state["model.layers.0.mlp.up_proj.weight"].shape[0],
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).split(".")[1],
    }
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"))
        return folder
    names = list(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def peft_adapter(
    folder: Path,
    base: dict,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 1,
    scale: float = 0.1,
    config: dict | None = None,
) -> Path:
    """A PEFT LoRA adapter folder for `base`, written the way PEFT stores one (random non-zero factors): every
    Linear whose name ends with a target gets `lora_A` [r, in] and `lora_B` [out, r]; "embed_tokens" among the
    targets gets `lora_embedding_A` [r, vocab] and `lora_embedding_B` [dim, r]."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, weight in base.items():
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or weight.ndim != 2 or not module.endswith(targets):
            continue
        rows, cols = weight.shape
        if module.endswith("embed_tokens"):
            tensors[f"base_model.model.{module}.lora_embedding_A"] = (
                torch.randn(rank, rows, generator=generator) * scale
            )
            tensors[f"base_model.model.{module}.lora_embedding_B"] = (
                torch.randn(cols, rank, generator=generator) * scale
            )
        else:
            tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, cols, generator=generator) * scale
            tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(rows, rank, generator=generator) * scale
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    settings = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "base_model_name_or_path": "base",
        "task_type": "CAUSAL_LM",
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        **(config or {}),
    }
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return folder


WORDS = (
    "solve the equation add numbers sum product prime integer algebra "
    "write python function code loop class import return variable "
    "poem story love night moon river song"
).split()


def write_tokenizer(folder: Path, vocab: int = 50) -> None:
    """A word-level tokenizer (transformers' fast tokenizer files) whose `vocab` ids are <s>, </s>, <unk>, the
    words of `WORDS`, and fillers: enough for prompts in tests, made here, nothing downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<s>", "</s>", "<unk>", *WORDS]
    words += [f"w{i}" for i in range(vocab - len(words))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<s>", "</s>", "<unk>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
