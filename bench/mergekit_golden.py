"""Golden outputs from mergekit (and PEFT) for the differential tests (tests/test_merge_golden.py).

    .venv/bin/python bench/mergekit_golden.py [--only merges,lora,moe]

Writes tiny Llama-style checkpoints (a base and three fine-tunes) and mergekit configs under
tests/golden/mergekit/, runs mergekit on each config in its own venv (bench/.venv-mergekit, created here:
torch==2.13.0, then mergekit, which brings PEFT and transformers), and keeps mergekit's merged tensors next to
them. `lora`: mergekit-extract-lora's adapter of ft0 (rank 4), and PEFT's own adapters of the base with the
weights PEFT's merge_and_unload gives; `moe`: mergekit-moe's mixture of two fine-tunes of a base with a
tokenizer (its hidden-state router). mergekit and PEFT are never dependencies of the package or the tests: the
small golden files are committed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reference_venvs import ensure_venv  # noqa: E402

from tests.llama import fine_tune, llama_state_dict, write_checkpoint, write_tokenizer  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "mergekit"
CONFIGS = {
    "linear": """merge_method: linear
models:
  - {model: ft0, parameters: {weight: 1.0}}
  - {model: ft1, parameters: {weight: 0.5}}
  - {model: ft2, parameters: {weight: 0.25}}
dtype: float32
""",
    "slerp": """merge_method: slerp
base_model: base
models:
  - {model: base}
  - {model: ft0}
parameters: {t: 0.3}
dtype: float32
""",
    "task_arithmetic": """merge_method: task_arithmetic
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0}}
  - {model: ft1, parameters: {weight: 0.6}}
  - {model: ft2, parameters: {weight: 0.3}}
parameters: {lambda: 0.8}
dtype: float32
""",
    "ties": """merge_method: ties
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0, density: 0.5}}
  - {model: ft1, parameters: {weight: 0.7, density: 0.3}}
  - {model: ft2, parameters: {weight: 0.4, density: 0.7}}
parameters: {normalize: true}
dtype: float32
""",
    "breadcrumbs": """merge_method: breadcrumbs
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0, density: 0.8}}
  - {model: ft1, parameters: {weight: 0.5, density: 0.8}}
parameters: {gamma: 0.05}
dtype: float32
""",
    "dare_linear": """merge_method: dare_linear
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0, density: 0.5}}
  - {model: ft1, parameters: {weight: 1.0, density: 0.5}}
dtype: float32
""",
    "breadcrumbs_ties": """merge_method: breadcrumbs_ties
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0, density: 0.8, gamma: 0.05}}
  - {model: ft1, parameters: {weight: 0.5, density: 0.7, gamma: 0.1}}
parameters: {int8_mask: true}
dtype: float32
""",
    "ties_int8_mask": """merge_method: ties
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0, density: 0.5}}
  - {model: ft1, parameters: {weight: 0.7, density: 0.3}}
parameters: {int8_mask: true, lambda: 0.9}
dtype: float32
""",
    "nearswap": """merge_method: nearswap
base_model: base
models:
  - {model: base}
  - {model: ft0}
parameters: {t: 0.01}
dtype: float32
""",
    "nuslerp": """merge_method: nuslerp
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0}}
  - {model: ft1, parameters: {weight: 0.5}}
dtype: float32
""",
    "nuslerp_row_wise": """merge_method: nuslerp
models:
  - {model: ft0, parameters: {weight: 0.3}}
  - {model: ft1, parameters: {weight: 0.7}}
parameters: {nuslerp_flatten: false, nuslerp_row_wise: true}
dtype: float32
""",
    "multislerp": """merge_method: multislerp
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0}}
  - {model: ft1, parameters: {weight: 0.5}}
  - {model: ft2, parameters: {weight: 0.25}}
dtype: float32
""",
    "karcher": """merge_method: karcher
models:
  - {model: ft0}
  - {model: ft1}
  - {model: ft2}
parameters: {max_iter: 20, tol: 1.0e-6}
dtype: float32
""",
    "sce": """merge_method: sce
base_model: base
models:
  - {model: ft0}
  - {model: ft1}
  - {model: ft2}
parameters: {select_topk: 0.5}
dtype: float32
""",
    "passthrough": """merge_method: passthrough
models:
  - {model: ft1, parameters: {scale: 0.5}}
dtype: float32
""",
    "della": """merge_method: della
base_model: base
models:
  - {model: ft0, parameters: {weight: 1.0, density: 0.5, epsilon: 0.1}}
  - {model: ft1, parameters: {weight: 1.0, density: 0.5, epsilon: 0.1}}
dtype: float32
""",
    "slerp_gradient_slices": """slices:
  - sources:
      - {model: base4, layer_range: [0, 4]}
      - {model: ft4_0, layer_range: [0, 4]}
merge_method: slerp
base_model: base4
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
    "passthrough_frankenmerge": """slices:
  - sources: [{model: ft4_0, layer_range: [0, 3]}]
  - sources: [{model: ft4_1, layer_range: [1, 4]}]
merge_method: passthrough
dtype: float32
""",
    "ties_slices": """slices:
  - sources:
      - {model: base4, layer_range: [0, 2]}
      - {model: ft4_0, layer_range: [0, 2], parameters: {weight: 1.0, density: 0.5}}
      - {model: ft4_1, layer_range: [0, 2], parameters: {weight: 0.5, density: 0.5}}
  - sources:
      - {model: base4, layer_range: [2, 4]}
      - {model: ft4_0, layer_range: [2, 4], parameters: {weight: 0.2, density: 0.9}}
      - {model: ft4_1, layer_range: [2, 4], parameters: {weight: 1.0, density: 0.9}}
merge_method: ties
base_model: base4
dtype: float32
""",
    "ties_gradients": """merge_method: ties
base_model: base4
models:
  - {model: ft4_0, parameters: {weight: [1.0, 0.5], density: [0.3, 0.8]}}
  - {model: ft4_1, parameters: {weight: 0.7, density: 0.5}}
parameters: {normalize: true, int8_mask: true}
dtype: float32
""",
    "task_arithmetic_filters": """merge_method: task_arithmetic
base_model: base4
models:
  - model: ft4_0
    parameters:
      weight: [{filter: mlp, value: 0.5}, {value: 1.0}]
  - {model: ft4_1, parameters: {weight: 0.3}}
parameters:
  lambda: [{filter: self_attn, value: 0.6}, {value: 0.9}]
dtype: float32
""",
    "linear_out_dtype": """merge_method: linear
models:
  - {model: ft4_0, parameters: {weight: 1.0}}
  - {model: ft4_1, parameters: {weight: 3.0}}
out_dtype: float16
""",
}


def ensure_mergekit() -> Path:
    """bench/.venv-mergekit's bin folder (mergekit's commands, and PEFT and transformers in its python)."""
    constraints = ["-c", str(ROOT / "constraints.txt")]
    return ensure_venv("mergekit", [[*constraints, "torch==2.13.0"], [*constraints, "mergekit"]], check="mergekit-yaml")


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def write_merges(tool: Path) -> None:
    if GOLDEN.exists():
        shutil.rmtree(GOLDEN)
    base = llama_state_dict(seed=0)
    write_checkpoint(GOLDEN / "base", base)
    for i in range(3):
        write_checkpoint(GOLDEN / f"ft{i}", fine_tune(base, scale=0.02, seed=i + 1))
    deeper = llama_state_dict(layers=4, seed=10)  # for slices and gradients: four layers
    write_checkpoint(GOLDEN / "base4", deeper)
    for i in range(2):
        write_checkpoint(GOLDEN / f"ft4_{i}", fine_tune(deeper, scale=0.02, seed=i + 11))
    for name, text in CONFIGS.items():
        config = GOLDEN / f"{name}.yaml"
        config.write_text(text)
        out = GOLDEN / f"out_{name}"
        # mergekit reads a relative model path as a hub repository: give it absolute paths, offline.
        absolute = GOLDEN / f"{name}.absolute.yaml"
        absolute.write_text(re.sub(r"(model|base_model): (base4|ft4_\d|base|ft\d)", rf"\1: {GOLDEN}/\2", text))
        result = subprocess.run(
            [str(tool / "mergekit-yaml"), str(absolute), str(out), "--no-copy-tokenizer", "--random-seed", "0"],
            capture_output=True,
            text=True,
            env=ENV,
        )
        absolute.unlink()
        if result.returncode != 0:
            raise SystemExit(f"mergekit failed on {name}:\n{result.stderr[-3000:]}")
        merged = sorted(out.glob("*.safetensors"))
        if len(merged) != 1:
            raise SystemExit(f"expected one output file from mergekit for {name}, got {merged}")
        shutil.move(str(merged[0]), GOLDEN / f"{name}.mergekit.safetensors")
        if "slices" in text:  # the layer count it writes
            shutil.move(str(out / "config.json"), GOLDEN / f"{name}.mergekit.config.json")
        shutil.rmtree(out)
        print(f"{name}: golden written")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stderr[-3000:]}")


# PEFT's adapters of the golden base: one with rank and alpha patterns, an embedding and a whole module, one with
# rsLoRA; random factors (init_lora_weights=False), and the weights merge_and_unload gives.
PEFT_ADAPTERS = """
import json, sys
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

golden = sys.argv[1]
settings = {
    "lora_peft": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
                      rank_pattern={"down_proj": 2}, alpha_pattern={"down_proj": 3}, modules_to_save=["lm_head"]),
    "lora_peft_rslora": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["k_proj", "o_proj", "up_proj"]),
}
for seed, (name, options) in enumerate(settings.items()):
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(f"{golden}/base", dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **options))
    with torch.no_grad():  # larger factors than PEFT's initialization, so that every update is clearly non-zero
        for key, parameter in peft_model.named_parameters():
            if "lora_" in key:
                parameter.mul_(3)
            elif "modules_to_save" in key:
                parameter.add_(0.05 * torch.randn_like(parameter))
    peft_model.save_pretrained(f"{golden}/{name}")
    merged = peft_model.merge_and_unload().state_dict()
    save_file({k: v.contiguous() for k, v in merged.items()}, f"{golden}/{name}.peft_merged.safetensors")
"""

MOE_CONFIG = """base_model: {root}/moe_base
gate_mode: {mode}
dtype: float32
experts_per_token: 2
experts:
  - source_model: {root}/moe_ft0
    positive_prompts: ["solve the equation", "add numbers sum"]
  - source_model: {root}/moe_ft1
    positive_prompts: ["write python function", "import class return"]
    negative_prompts: ["poem story love"]
  - source_model: {root}/moe_ft2
    positive_prompts: ["poem story love", "moon river song"]
"""


def write_lora(tool: Path) -> None:
    for folder in ("lora_extract.mergekit", "lora_peft", "lora_peft_rslora"):
        shutil.rmtree(GOLDEN / folder, ignore_errors=True)
    out = GOLDEN / "out_lora_extract"
    _run(
        [str(tool / "mergekit-extract-lora"), "--model", str(GOLDEN / "ft0"), "--base-model", str(GOLDEN / "base")]
        + ["--out-path", str(out), "--max-rank", "4"],
        "mergekit-extract-lora",
    )
    (GOLDEN / "lora_extract.mergekit").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.move(str(out / name), GOLDEN / "lora_extract.mergekit" / name)
    shutil.rmtree(out)
    _run([str(tool / "python"), "-c", PEFT_ADAPTERS, str(GOLDEN)], "PEFT")
    for name in ("lora_peft", "lora_peft_rslora"):  # keep what a PEFT folder holds, not PEFT's model card
        (GOLDEN / name / "README.md").unlink(missing_ok=True)
    print("lora: golden written")


def write_moe(tool: Path) -> None:
    base = llama_state_dict(seed=20)
    for name, state in [("moe_base", base)] + [
        (f"moe_ft{i}", fine_tune(base, scale=0.05, seed=21 + i)) for i in range(3)
    ]:
        shutil.rmtree(GOLDEN / name, ignore_errors=True)
        write_checkpoint(GOLDEN / name, state)
    write_tokenizer(GOLDEN / "moe_base")
    for mode in ("hidden", "cheap_embed"):
        config = GOLDEN / f"moe_{mode}.yaml"
        config.write_text(MOE_CONFIG.format(root=".", mode=mode).replace("./", ""))
        absolute = GOLDEN / f"moe_{mode}.absolute.yaml"
        absolute.write_text(MOE_CONFIG.format(root=GOLDEN, mode=mode))
        out = GOLDEN / f"out_moe_{mode}"
        _run([str(tool / "mergekit-moe"), str(absolute), str(out), "--no-copy-tokenizer"], f"mergekit-moe ({mode})")
        absolute.unlink()
        (merged,) = sorted(out.glob("*.safetensors"))
        shutil.move(str(merged), GOLDEN / f"moe_{mode}.mergekit.safetensors")
        settings = json.loads((out / "config.json").read_text())
        (GOLDEN / f"moe_{mode}.mergekit.config.json").write_text(json.dumps(settings, indent=1) + "\n")
        shutil.rmtree(out)
    print("moe: golden written")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="merges,lora,moe", help="which goldens to (re)write")
    args = parser.parse_args()
    tool = ensure_mergekit()
    parts = args.only.split(",")
    if "merges" in parts:
        write_merges(tool)
    if "lora" in parts:
        write_lora(tool)
    if "moe" in parts:
        write_moe(tool)


if __name__ == "__main__":
    main()
