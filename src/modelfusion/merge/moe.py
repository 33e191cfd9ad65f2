"""A mixture of experts from dense fine-tunes of one base model (what mergekit-moe does): a Mixtral-style
checkpoint whose every layer routes each token to `experts_per_token` of the fine-tunes' MLPs.

```yaml
base_model: ./base                 # attention, embeddings, norms and the tokenizer come from it
gate_mode: hidden                  # hidden, hidden_avg, cheap_embed, random or uniform_random
experts_per_token: 2
experts:
  - source_model: ./math-tune      # its MLP becomes expert 0 of every layer (MODEL+ADAPTER works too)
    positive_prompts: ["solve the equation"]
    negative_prompts: ["write a poem"]    # optional
  - source_model: ./code-tune
    positive_prompts: ["write a python function"]
```

The router of layer l gets, per expert, the normalized hidden state entering layer l for that expert's prompts
(the last token's, or the mean over tokens with `hidden_avg`; minus the negative prompts'), computed with the
base model in transformers (the `hf` extra), so that tokens like an expert's prompts are sent to it.
`cheap_embed` uses the mean token embedding (no forward pass); `random` and `uniform_random` need no prompts.
Each prompt is run alone, in float32 (mergekit batches them with left padding, in bfloat16).

The base must be a Llama or Mistral model (`model.layers.N.mlp.{gate,up,down}_proj`). The output is written in
the classic Mixtral layout (`block_sparse_moe.experts.N.w1/w2/w3`), which transformers 4 and 5, vLLM and
llama.cpp read; `layout: fused` writes transformers 5's fused layout instead, as mergekit 0.1.5 does.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._atomic import atomic_dir, check_output
from .._checks import first_problem
from .._files import read_json_object
from .._progress import progress_bar
from ..errors import CheckpointError, ConfigError, IncompatibleModelsError, MissingExtraError
from .config import ModelPath, model_reference, read_yaml
from .engine import (
    AdaptedModel,
    StreamingWriter,
    copy_small_files,
    files_of,
    open_checkpoint,
    parse_size,
    torch_dtype,
)

__all__ = ["MoEConfig", "ExpertEntry", "MoEResult", "load_moe_config", "build_moe", "GATE_MODES"]

GATE_MODES = ("hidden", "hidden_avg", "cheap_embed", "random", "uniform_random")
_MLP = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}  # Mixtral's expert names -> Llama's
_MAX_CONFIG_JSON = 2**20
Prompt = Annotated[str, Field(max_length=10_000)]


class ExpertEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_model: ModelPath
    positive_prompts: list[Prompt] | None = Field(None, max_length=1000)
    negative_prompts: list[Prompt] | None = Field(None, max_length=1000)
    noise_scale: float | None = Field(None, ge=0, allow_inf_nan=False)
    residual_scale: float | None = Field(None, allow_inf_nan=False)


class MoEConfig(BaseModel):
    """A mergekit-moe config (its keys), with two of ours: `layout` and `random_seed`."""

    model_config = ConfigDict(extra="forbid")

    base_model: ModelPath
    experts: list[ExpertEntry] = Field(min_length=1, max_length=256)
    gate_mode: Literal["hidden", "hidden_avg", "cheap_embed", "random", "uniform_random"] = "hidden"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    experts_per_token: int = Field(2, ge=1)
    architecture: Literal["mixtral", "Mixtral"] | None = None
    layout: Literal["per_expert", "fused"] = "per_expert"
    random_seed: int = Field(0, ge=0, le=2**63 - 1)
    shard_size: str | int = "5GB"


def load_moe_config(path: str | os.PathLike) -> MoEConfig:
    """Read and validate a mergekit-moe YAML config; every problem is one `ConfigError` naming the field."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a MoE config is a mapping with base_model, experts, ...")
    if raw.get("shared_experts"):
        raise ConfigError(f"{path}: shared_experts are not supported by the Mixtral layout (Qwen-MoE's are not yet)")
    try:
        return MoEConfig.model_validate(raw)
    except ValidationError as err:
        where, problem = first_problem(err)
        raise ConfigError(f"{path}: {where}: {problem}") from None


@dataclass
class MoEResult:
    """What was built: where, from which experts, and the router weights ([layers, experts, hidden])."""

    out_dir: Path
    experts: list[Path | AdaptedModel]
    gate_mode: str
    routers: torch.Tensor
    config: dict = field(default_factory=dict)

    def summary(self) -> str:
        layers, experts, hidden = self.routers.shape
        return (
            f"{experts} experts x {layers} layers (hidden {hidden}), {self.config.get('num_experts_per_tok')} per "
            f"token, router from {self.gate_mode} -> {self.out_dir}"
        )


def build_moe(
    config: MoEConfig | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> MoEResult:
    """Assemble a Mixtral-style mixture of experts from dense fine-tunes of one base model.

    Example:
        >>> build_moe("moe.yaml", "my-moe")
    """
    root, source = Path.cwd(), "the config"
    inputs: list = []
    if not isinstance(config, MoEConfig):
        root, source, inputs = Path(config).resolve().parent, str(config), [config]
        config = load_moe_config(config)
    base_path = model_reference(config.base_model, root)
    if isinstance(base_path, AdaptedModel):
        raise ConfigError(f"{source}: base_model is read by transformers for the router; give it without +adapter")
    experts = [model_reference(e.source_model, root) for e in config.experts]
    inputs += files_of([base_path, *experts])
    check_output(out_dir, kind="folder", overwrite=overwrite, inputs=inputs)
    _check_prompts(config, source)
    base_config = _model_config(base_path)
    layers, hidden = int(base_config["num_hidden_layers"]), int(base_config["hidden_size"])
    base = open_checkpoint(base_path)
    sources = [open_checkpoint(e) for e in experts]
    layout, copied = _output_layout(config, base, sources, base_config, layers)
    routers = _routers(config, base_path, layers, hidden)  # [layers, experts, hidden]
    updates = {
        # Mixtral's defaults differ from Llama's and Mistral's (rope_theta 1e6 against 1e4): say the base's own
        "rope_theta": base_config.get("rope_theta", 10000.0),
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "num_local_experts": len(experts),
        "num_experts_per_tok": config.experts_per_token,
        "sliding_window": None,
    }
    out_dtype = layout[next(iter(layout))][1] if config.dtype is None else getattr(torch, config.dtype)
    metadata = {"format": "pt", "modelfusion.moe": json.dumps({"gate_mode": config.gate_mode, "experts": len(experts)})}
    with atomic_dir(out_dir, overwrite=overwrite, inputs=inputs) as tmp, progress_bar(progress) as bar:
        writer = StreamingWriter(tmp, layout, parse_size(config.shard_size), metadata)
        task = bar.add_task("assembling the mixture", total=len(layout))
        for name, (_, dtype) in layout.items():
            writer.write(name, _tensor(name, config, base, sources, routers, copied).to(dtype))
            bar.advance(task)
        writer.finish()
        copy_small_files(base.folder, tmp, str(out_dtype).removeprefix("torch."), updates)
    return MoEResult(Path(out_dir), experts, config.gate_mode, routers, {**base_config, **updates})


def _check_prompts(config: MoEConfig, source: str) -> None:
    if config.experts_per_token > len(config.experts):
        raise ConfigError(
            f"{source}: experts_per_token is {config.experts_per_token} but there are {len(config.experts)} experts"
        )
    if config.gate_mode in ("random", "uniform_random"):
        return
    for index, expert in enumerate(config.experts):
        if not expert.positive_prompts:
            raise ConfigError(
                f"{source}: expert {index} has no positive_prompts, which gate_mode {config.gate_mode} needs"
            )
    prompts = {(tuple(e.positive_prompts or ()), tuple(e.negative_prompts or ())) for e in config.experts}
    if len(config.experts) > 1 and len(prompts) == 1:
        raise ConfigError(
            f"{source}: every expert has the same prompts, so the router cannot tell them apart; give each expert "
            "prompts like the inputs it should get"
        )


def _model_config(folder: Path) -> dict:
    """The base model's config.json: a Llama or Mistral model with the sizes the layout needs."""
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointError(f"{folder}: no config.json; the base model must be a Hugging Face model folder")
    config = read_json_object(path, "model config", _MAX_CONFIG_JSON)
    if config.get("model_type") not in ("llama", "mistral"):
        raise IncompatibleModelsError(
            f"{path}: model_type {str(config.get('model_type'))[:40]!r}; a Mixtral mixture is built from Llama or "
            "Mistral models"
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise IncompatibleModelsError(f"{path}: the model has attention or MLP biases, which Mixtral's layers have not")
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**20:
            raise CheckpointError(f"{path}: {key} must be a positive whole number, got {str(value)[:40]}")
    return config


def _output_layout(config: MoEConfig, base, sources, base_config: dict, layers: int):
    """Every output tensor's name, shape and dtype, and for the ones copied from the base their base name."""
    inventory = base.inventory()
    hidden, inner = base_config["hidden_size"], base_config["intermediate_size"]
    expected = {"gate_proj": (inner, hidden), "up_proj": (inner, hidden), "down_proj": (hidden, inner)}
    problems = []
    for source in [base, *sources]:
        theirs = source.inventory()
        for layer in range(layers):
            for part, shape in expected.items():
                name = f"model.layers.{layer}.mlp.{part}.weight"
                if name not in theirs or tuple(theirs[name][0]) != shape:
                    problems.append(f"{getattr(source, 'reference', source.path)}: {name} missing or not {shape}")
    if problems:
        listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise IncompatibleModelsError(f"the experts do not fit the base's layers: {listed}")

    def dtype_of(name: str) -> torch.dtype:
        own = torch_dtype(inventory[name][1])
        return getattr(torch, config.dtype) if config.dtype and own.is_floating_point else own

    layout, copied = {}, {}
    for name, (shape, _) in inventory.items():
        if ".mlp." not in name:
            layout[name], copied[name] = (tuple(shape), dtype_of(name)), name
    count = len(sources)
    for layer in range(layers):
        gate = f"model.layers.{layer}.mlp.gate_proj.weight"
        dtype = dtype_of(gate)
        if config.layout == "fused":
            prefix = f"model.layers.{layer}.mlp."
            layout[prefix + "gate.weight"] = ((count, hidden), dtype)
            layout[prefix + "experts.gate_up_proj"] = ((count, 2 * inner, hidden), dtype)
            layout[prefix + "experts.down_proj"] = ((count, hidden, inner), dtype)
        else:
            prefix = f"model.layers.{layer}.block_sparse_moe."
            layout[prefix + "gate.weight"] = ((count, hidden), dtype)
            for expert in range(count):
                for mixtral, llama in _MLP.items():
                    layout[f"{prefix}experts.{expert}.{mixtral}.weight"] = (expected[llama], dtype)
    return layout, copied


def _tensor(name: str, config: MoEConfig, base, sources, routers, copied) -> torch.Tensor:
    """One output tensor: the base's, a router, an expert's MLP matrix, or (fused) all experts' stacked."""
    if name in copied:
        return base.read(copied[name])
    parts = name.split(".")
    layer = int(parts[2])
    if parts[-2:] == ["gate", "weight"]:
        return routers[layer]
    if config.layout == "fused":

        def expert_matrix(index: int, llama: str) -> torch.Tensor:
            return _expert(config, sources, index, layer, llama)

        if name.endswith("gate_up_proj"):
            return torch.stack(
                [torch.cat([expert_matrix(i, "gate_proj"), expert_matrix(i, "up_proj")]) for i in range(len(sources))]
            )
        return torch.stack([expert_matrix(i, "down_proj") for i in range(len(sources))])
    return _expert(config, sources, int(parts[5]), layer, _MLP[parts[6]])


def _expert(config: MoEConfig, sources, index: int, layer: int, llama: str) -> torch.Tensor:
    """Expert `index`'s MLP matrix of `layer`, with its noise and (down projection) residual scale."""
    name = f"model.layers.{layer}.mlp.{llama}.weight"
    tensor = sources[index].read(name)
    expert = config.experts[index]
    if expert.noise_scale:
        seed = (config.random_seed * 1_000_003 + index * 7919 + zlib.crc32(name.encode())) % 2**63
        noise = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(seed))
        tensor = (tensor.float() + noise * expert.noise_scale).to(tensor.dtype)
    if llama == "down_proj" and expert.residual_scale is not None:
        tensor = (tensor.float() * expert.residual_scale).to(tensor.dtype)
    return tensor


# -- routers --------------------------------------------------------------------------------------------------
def _routers(config: MoEConfig, base: Path, layers: int, hidden: int) -> torch.Tensor:
    """[layers, experts, hidden]: each expert's gate vector at each layer."""
    count = len(config.experts)
    generator = torch.Generator().manual_seed(config.random_seed)
    if config.gate_mode == "random":
        return torch.randn(layers, count, hidden, generator=generator)
    if config.gate_mode == "uniform_random":  # torch.nn.Linear's default initialization
        bound = math.sqrt(1.0 / hidden)
        return torch.rand(layers, count, hidden, generator=generator) * 2 * bound - bound
    represent = _prompt_states(config.gate_mode, base, layers)
    vectors = []
    for expert in config.experts:
        states = represent(expert.positive_prompts)
        if expert.negative_prompts:
            states = states - represent(expert.negative_prompts)
        vectors.append(states / states.norm(dim=-1, keepdim=True).clamp(min=1e-8))
    return torch.stack(vectors, dim=1)


def _prompt_states(mode: str, base: Path, layers: int) -> Callable[[list[str]], torch.Tensor]:
    """A function of prompts -> [layers, hidden]: their mean representation entering each layer."""
    try:
        import transformers
    except ImportError:
        raise MissingExtraError(
            f"gate_mode {mode} runs the base model in transformers: pip install 'modelfusion[hf]' (or use "
            "gate_mode random)"
        ) from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        model = None
        if mode != "cheap_embed":
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(base), local_files_only=True, dtype=torch.float32, trust_remote_code=False
            ).eval()
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{base}: transformers cannot load the base model or its tokenizer ({err})") from None

    def token_ids(prompt: str) -> torch.Tensor:
        text = (tokenizer.bos_token or "") + prompt
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.shape[1] == 0:
            raise ConfigError(f"the prompt {prompt[:60]!r} has no tokens")
        return ids

    if model is None:  # cheap_embed: the mean input embedding of the prompts' tokens, the same at every layer
        from .engine import Checkpoint

        embedding = Checkpoint(base).read("model.embed_tokens.weight").float()

        def embedded(prompts: list[str]) -> torch.Tensor:
            total = sum(embedding[token_ids(p)[0]].sum(0) for p in prompts)
            return (total / total.norm().clamp(min=1e-8)).expand(layers, -1)

        return embedded

    def hidden_states(prompts: list[str]) -> torch.Tensor:
        per_prompt = []
        with torch.no_grad():
            for prompt in prompts:
                output = model(input_ids=token_ids(prompt), output_hidden_states=True, return_dict=True)
                states = torch.stack(output.hidden_states[:-1])[:, 0]  # [layers, tokens, hidden]
                per_prompt.append(states.mean(1) if mode == "hidden_avg" else states[:, -1])
        return torch.stack(per_prompt).mean(0)

    return hidden_states
