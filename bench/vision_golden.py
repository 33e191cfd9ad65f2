"""Golden file for modelfusion.vision: key names, shapes and outputs of torchvision's and timm's own ResNets and
VGGs on fixed weights and inputs (tests/vision_reference.py), written to tests/golden/vision.json.

    .venv/bin/python bench/vision_golden.py

The reference venv (bench/.venv-vision) holds the pinned CPU torch 2.13.0 with torchvision 0.28.0 (the release
paired with torch 2.13) and timm 1.0.31, installed without their dependencies: torchvision's wheel is compiled
against the CUDA build of torch, so its C++ detection operators (nms, roi_align, ...) cannot load; the runner
declares them as schema-only operators before importing torchvision. The classification models are pure Python
and never call them, so what is compared is torchvision's and timm's own model code.
"""

from __future__ import annotations

import subprocess
import sys

from reference_venvs import ROOT, ensure_venv

RUNNER = ROOT / "bench" / "vision_golden_runner.py"
GOLDEN = ROOT / "tests" / "golden" / "vision.json"


def main() -> None:
    bin_dir = ensure_venv(
        "vision",
        [
            ["torch==2.13.0", "numpy", "pillow"],
            ["--no-deps", "torchvision==0.28.0", "timm==1.0.31", "pyyaml", "huggingface_hub", "safetensors"],
        ],
    )
    subprocess.run([str(bin_dir / "python"), str(RUNNER), str(GOLDEN)], check=True)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    sys.exit(main())
