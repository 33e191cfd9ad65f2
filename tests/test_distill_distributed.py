import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelfusion.io import save_member
from modelfusion.members import TorchMember

from .conftest import MLP_KWARGS, MLP_SPEC
from .limits import HANG_GUARD_S

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(trained_mlp, tmp_path):
    """`torchrun --nproc_per_node=2 -m modelfusion.distill` (gloo, CPU) against a single process, with mixup
    and a FitNets hint whose adapter DDP must keep in sync across the processes, and a checkpoint."""
    teacher = save_member(
        TorchMember(trained_mlp, name="teacher", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS),
        tmp_path / "teacher.safetensors",
    )
    args = [
        "--teacher",
        str(teacher),
        "--student",
        "modelfusion.models:mlp",
        "--student-kwargs",
        '{"in_features": 64, "num_outputs": 10, "hidden": [16]}',
        "--epochs",
        "2",
        "--lr",
        "0.01",
        "--mixup",
        "0.4",
        "--alpha",
        "1",
        "--hint",
        "1=1",
        "--no-progress",
    ]
    two = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "modelfusion.distill",
            *args,
            "--out",
            str(tmp_path / "two.safetensors"),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("validation accuracy") == 1  # only rank 0 reports and writes
    # Rank 0's checkpoint holds both processes' global generators (gathered), which differ: each process seeds
    # its own, so that the two shares of a batch get independent dropout masks.
    rngs = torch.load(tmp_path / "ckpt" / "distill_checkpoint.pt", weights_only=True)["torch_rng"]
    assert rngs.dtype == torch.uint8 and rngs.shape == (2, torch.get_rng_state().numel())
    assert not torch.equal(rngs[0], rngs[1])
    one = subprocess.run(
        [sys.executable, "-m", "modelfusion.distill", *args, "--out", str(tmp_path / "one.safetensors")],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_file(str(tmp_path / "two.safetensors")), load_file(str(tmp_path / "one.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5)
