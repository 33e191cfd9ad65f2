"""Merging speed and memory: `modelfusion merge` against mergekit on generated Llama-style checkpoints.

    .venv/bin/python bench/merge.py [--sizes 40M,170M,500M] [--mergekit-sizes 170M] [--methods all] [--lora-sizes 170M]
        [--workdir /tmp/mf-merge]

For each size: a base and three fine-tunes (base + small noise), fp32, as Hugging Face folders. Every method of
`modelfusion.merge.METHODS` (`--methods all`, the default; or a comma-separated list) runs through
`modelfusion merge` on a YAML config: the base for the methods that take one, as many fine-tunes as the method
takes (slerp, nearswap, passthrough: one; nuslerp: two; else three), weights 1, 0.6, 0.3 and density 0.3 (0.5
for DARE and DELLA, 0.9 for breadcrumbs) where the method has them; WUDI with 10 Adam steps instead of 300 (its
memory does not depend on them, its time does). Linear, task arithmetic, TIES and breadcrumbs also run, at
--mergekit-sizes, through `mergekit-yaml --no-copy-tokenizer` (its own venv, bench/.venv-mergekit, created by
bench/mergekit_golden.py) on the same YAML, when that venv exists. Each run is timed (wall), its peak RSS taken
from the kernel (wait4), and its anonymous memory (RssAnon: not counting memory-mapped input pages) sampled
from /proc every 20 ms. Also: the floor (reading every input once; a plain safetensors loop that averages
tensor by tensor), the largest difference between our output and mergekit's, and the start-up time of both
commands.

LoRA (--lora-sizes): three PEFT adapters of the base (rank 16 on every projection of every layer) merged into one
adapter (`modelfusion merge-adapters`: task arithmetic exactly by concatenating factors, TIES cut back to rank
16 by SVD), against merging the full weights they make (`modelfusion merge` of `base+lora_i`, which applies each
adapter as its tensors are read, and mergekit on the same `base+lora_i` YAML, which writes each adapted model
out first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelfusion.merge import METHODS  # noqa: E402
from tests.llama import fine_tune, llama_state_dict, peft_adapter, write_checkpoint  # noqa: E402

MERGEKIT = ROOT / "bench" / ".venv-mergekit" / "bin" / "mergekit-yaml"
OURS = ROOT / ".venv" / "bin" / "modelfusion"
SIZES = {  # name -> (hidden, layers, vocab, intermediate)
    "40M": (512, 4, 32000, 1376),
    "170M": (1024, 8, 32000, 2752),
    "500M": (1536, 16, 32000, 4096),
}
_DTYPE = "dtype: float32\n"
MERGEKIT_CONFIGS = {  # mergekit's own configs of the methods compared with it
    "linear": "merge_method: linear\nmodels:\n{models_weighted}\n" + _DTYPE,
    "task_arithmetic": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n{models_weighted}\n" + _DTYPE,
    "ties": "merge_method: ties\nbase_model: {base}\nmodels:\n{models_dense}\nparameters: {{normalize: true}}\n"
    + _DTYPE,
    "breadcrumbs": "merge_method: breadcrumbs\nbase_model: {base}\nmodels:\n{models_crumbs}\n"
    "parameters: {{gamma: 0.01}}\n" + _DTYPE,
}


def measure(command: list[str], env: dict | None = None) -> dict:
    """Wall time, peak RSS (kernel's maxrss) and peak RssAnon (sampled every 20 ms) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak_anon = [0]

    def sample():
        status = Path(f"/proc/{process.pid}/status")
        while True:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return {"seconds": wall, "max_rss_mb": usage.ru_maxrss / 1024, "peak_anon_mb": peak_anon[0] / 1024}


def make_models(folder: Path, size: str) -> Path:
    hidden, layers, vocab, intermediate = SIZES[size]
    root = folder / size
    if (root / "ft2" / "model.safetensors").exists():
        return root
    base = llama_state_dict(hidden=hidden, layers=layers, vocab=vocab, intermediate=intermediate, seed=0)
    write_checkpoint(root / "base", base)
    for i in range(3):
        write_checkpoint(root / f"ft{i}", fine_tune(base, scale=0.01, seed=i + 1))
        print(f"  wrote {root / f'ft{i}'}", flush=True)
    return root


TAKES = {"slerp": 1, "nearswap": 1, "passthrough": 1, "nuslerp": 2}  # fine-tunes a method merges; else 3
DENSITY = {"breadcrumbs": 0.9, "breadcrumbs_ties": 0.9}
DENSITY.update(dict.fromkeys(("dare_ties", "dare_linear", "della", "della_linear"), 0.5))
SETTINGS = {"wudi": "parameters: {steps: 10}\n"}  # 300 Adam steps on every matrix would take hours here


def method_config(method: str, root: Path) -> str:
    """A config of any registered method on this size's checkpoints (see the module docstring)."""
    spec = METHODS[method]
    count = TAKES.get(method, 3)
    lines = [f"merge_method: {method}"]
    if spec.base != "none":
        lines.append(f"base_model: {root / 'base'}")
    lines.append("models:")
    for i, weight in zip(range(count), (1.0, 0.6, 0.3), strict=False):
        parameters = {}
        if "weight" in spec.per_model:
            parameters["weight"] = weight
        if "density" in spec.per_model:
            parameters["density"] = DENSITY.get(method, 0.3)
        shown = ", ".join(f"{k}: {v}" for k, v in parameters.items())
        lines.append(f"  - {{model: {root / f'ft{i}'}" + (f", parameters: {{{shown}}}}}" if shown else "}"))
    return "\n".join(lines) + "\n" + SETTINGS.get(method, "") + _DTYPE


def write_configs(root: Path, methods: list[str]) -> dict[str, Path]:
    models = [root / f"ft{i}" for i in range(3)]
    lists = {
        "models_weighted": "\n".join(
            f"  - {{model: {m}, parameters: {{weight: {w}}}}}" for m, w in zip(models, (1.0, 0.6, 0.3), strict=True)
        ),
        "models_dense": "\n".join(f"  - {{model: {m}, parameters: {{weight: 1.0, density: 0.3}}}}" for m in models),
        "models_crumbs": "\n".join(f"  - {{model: {m}, parameters: {{weight: 1.0, density: 0.9}}}}" for m in models),
    }
    paths = {}
    for name in methods:
        path = root / f"{name}.yaml"
        template = MERGEKIT_CONFIGS.get(name)
        path.write_text(template.format(base=root / "base", **lists) if template else method_config(name, root))
        paths[name] = path
    return paths


def read_all(root: Path) -> float:
    start = time.perf_counter()
    for model in ("base", "ft0", "ft1", "ft2"):
        with safe_open(str(root / model / "model.safetensors"), framework="pt") as f:
            for name in f.keys():
                f.get_tensor(name).sum()  # touch every byte: get_tensor alone may only map the file
    return time.perf_counter() - start


PLAIN_LOOP = """
import sys
from safetensors import safe_open
from safetensors.torch import save_file
files = [safe_open(p, framework="pt") for p in sys.argv[2:]]
out = {}
for name in files[0].keys():
    out[name] = sum(f.get_tensor(name) for f in files) / len(files)
save_file(out, sys.argv[1])
"""


def max_difference(a: Path, b: Path) -> float:
    worst = 0.0
    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        for name in fa.keys():
            worst = max(worst, (fa.get_tensor(name) - fb.get_tensor(name)).abs().max().item())
    return worst


def output_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise SystemExit(f"{folder}: expected one safetensors file, got {files}")
    return files[0]


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_WEIGHTS = (1.0, 0.6, 0.3)


def make_adapters(folder: Path, size: str) -> Path:
    """The base of `size` and three rank-16 adapters of it on every projection."""
    hidden, layers, vocab, intermediate = SIZES[size]
    root = folder / f"{size}-lora"
    if (root / "lora2" / "adapter_model.safetensors").exists():
        return root
    base = llama_state_dict(hidden=hidden, layers=layers, vocab=vocab, intermediate=intermediate, seed=0)
    write_checkpoint(root / "base", base)
    for i in range(3):
        peft_adapter(root / f"lora{i}", base, rank=16, alpha=16, targets=LORA_TARGETS, seed=i + 1, scale=0.05)
    return root


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def lora_rows(size: str, workdir: Path, env: dict) -> None:
    root = make_adapters(workdir, size)
    adapters = [str(root / f"lora{i}") for i in range(3)]
    weights = [arg for w in LORA_WEIGHTS for arg in ("--weight", str(w))]
    entries = {
        "task_arithmetic": "\n".join(
            f"  - {{model: {root}/base+{a}, parameters: {{weight: {w}}}}}"
            for a, w in zip(adapters, LORA_WEIGHTS, strict=True)
        ),
        "ties": "\n".join(
            f"  - {{model: {root}/base+{a}, parameters: {{weight: 1.0, density: 0.5}}}}" for a in adapters
        ),
    }
    runs = []
    for method in ("task_arithmetic", "ties"):
        extra = weights if method == "task_arithmetic" else ["--density", "0.5", "--rank", "16"]
        command = [str(OURS), "merge-adapters", *adapters, "--out", str(root / f"adapter_{method}"), "--method", method]
        runs.append(
            (
                method,
                "modelfusion merge-adapters (one adapter)",
                [*command, *extra, "--overwrite"],
                root / f"adapter_{method}",
            )
        )
        config = root / f"{method}.yaml"
        config.write_text(f"merge_method: {method}\nbase_model: {root}/base\nmodels:\n{entries[method]}\n" + _DTYPE)
        out = root / f"full_{method}"
        runs.append(
            (
                method,
                "modelfusion merge, base+lora (full weights)",
                [str(OURS), "merge", str(config), str(out), "--overwrite"],
                out,
            )
        )
        if MERGEKIT.exists():
            theirs = root / f"mergekit_{method}"
            command = [
                str(MERGEKIT),
                str(config),
                str(theirs),
                "--no-copy-tokenizer",
                "--lora-merge-cache",
                str(root / "cache"),
            ]
            runs.append((method, "mergekit, base+lora (full weights)", command, theirs))
    for method, tool, command, out in runs:
        figures = measure(command, env)
        print(
            f"| {size} | {method} | {tool} | {figures['seconds']:.1f} | {figures['max_rss_mb']:.0f} | "
            f"{figures['peak_anon_mb']:.0f} | output {folder_mb(out):.0f} MB |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="40M,170M,500M")
    parser.add_argument("--mergekit-sizes", default="170M")
    parser.add_argument("--methods", default="all", help="'all' (every registered method) or a list")
    parser.add_argument("--lora-sizes", default="", help="sizes for the LoRA rows (e.g. 170M); none by default")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelfusion-merge-bench"))
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    print(f"torch {torch.__version__}, {os.cpu_count()} cores")
    for tool, command in (("modelfusion", [str(OURS), "--help"]), ("mergekit-yaml", [str(MERGEKIT), "--help"])):
        if Path(command[0]).exists():
            print(f"{tool} --help: {measure(command, env)['seconds']:.2f} s")
    methods = METHODS.names() if args.methods == "all" else args.methods.split(",")
    print("| size | method | tool | seconds | peak RSS MB | peak RssAnon MB | max abs diff vs mergekit |")
    print("|---|---|---|---|---|---|---|")
    for size in filter(None, args.lora_sizes.split(",")):
        lora_rows(size, args.workdir, env)
    for size in filter(None, args.sizes.split(",")):
        root = make_models(args.workdir, size)
        configs = write_configs(root, methods)
        read_all(root)  # warm the page cache
        floor = read_all(root)
        inputs = [str(root / m / "model.safetensors") for m in ("ft0", "ft1", "ft2")]
        plain = measure([sys.executable, "-c", PLAIN_LOOP, str(root / "plain.safetensors"), *inputs], env)
        print(f"| {size} | read all 4 inputs once | - | {floor:.2f} | | | |")
        print(
            f"| {size} | linear | plain safetensors loop | {plain['seconds']:.1f} | {plain['max_rss_mb']:.0f} | "
            f"{plain['peak_anon_mb']:.0f} | |",
            flush=True,
        )
        for method in methods:
            ours_out = root / f"out_ours_{method}"
            ours = measure([str(OURS), "merge", str(configs[method]), str(ours_out), "--overwrite"], env)
            difference = ""
            row = None
            if size in args.mergekit_sizes.split(",") and MERGEKIT.exists() and method in MERGEKIT_CONFIGS:
                theirs_out = root / f"out_mergekit_{method}"
                theirs = measure([str(MERGEKIT), str(configs[method]), str(theirs_out), "--no-copy-tokenizer"], env)
                difference = f"{max_difference(output_file(ours_out), output_file(theirs_out)):.1e}"
                row = (
                    f"| {size} | {method} | mergekit | {theirs['seconds']:.1f} | {theirs['max_rss_mb']:.0f} | "
                    f"{theirs['peak_anon_mb']:.0f} | |"
                )
                ratio = f" ({ours['seconds'] / theirs['seconds']:.2f}x mergekit's time)"
            else:
                ratio = ""
            shutil.rmtree(ours_out, ignore_errors=True)  # 2 GB at 500M: the disk holds the inputs, not 18 outputs
            print(
                f"| {size} | {method} | modelfusion{ratio} | {ours['seconds']:.1f} | {ours['max_rss_mb']:.0f} | "
                f"{ours['peak_anon_mb']:.0f} | {difference} |",
                flush=True,
            )
            if row:
                print(row, flush=True)


if __name__ == "__main__":
    main()
