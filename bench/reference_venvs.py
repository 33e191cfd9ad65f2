"""Reference tools live in their own venvs under bench/, created on first use, never in the project's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_venv(name: str, installs: Sequence[Sequence[str]], *, check: str = "python") -> Path:
    """bench/.venv-NAME with each pip install in `installs` run in order (once); returns its `bin/` folder.

    `check` is the file in `bin/` whose presence means the venv is complete.
    """
    venv = ROOT / "bench" / f".venv-{name}"
    bin_dir = venv / "bin"
    if not (bin_dir / check).exists() or not (venv / "complete").exists():
        print(f"creating {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for packages in installs:
            subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", *packages], check=True)
        (venv / "complete").touch()
    return bin_dir
