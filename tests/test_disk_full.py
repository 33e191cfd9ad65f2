"""A full disk or a file size limit ends a command in one line naming the output and the space it needs; the
partial temporary file is removed and a checkpoint is never half-replaced (issue 28: these ended in
safetensors' `SafetensorError` and torch's `[enforce fail at inline_container.cc]` tracebacks)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modelfusion import OutputError
from modelfusion._atomic import atomic_path
from modelfusion.cli import app
from modelfusion.io import save_member
from modelfusion.members import TorchMember

from .conftest import MLP_KWARGS, MLP_SPEC
from .limits import HANG_GUARD_S

STUDENT = ["--student", MLP_SPEC, "--student-kwargs", json.dumps({**MLP_KWARGS, "hidden": [8]})]


@pytest.fixture
def member_file(tmp_path, trained_mlp):
    member = TorchMember(trained_mlp, name="mlp", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS)
    return save_member(member, tmp_path / "mlp.safetensors")


@pytest.fixture
def tiny_disk(tmp_path):
    """A folder on a tmpfs of 256 kB: a real full disk (ENOSPC). Mounting needs root; without it, skipped (the
    file size limit tests below cover the same refusals)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None
    if mounted:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)]).returncode == 0
    if not mounted:
        pytest.skip("mounting a small tmpfs needs root")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=False)  # lazy: never left mounted, even if busy


def _commands(member_file: Path, out: Path, work: Path) -> dict[str, list[str]]:
    teacher = ["distill", "--teacher", str(member_file), *STUDENT, "--epochs", "1", "--no-progress"]
    return {
        "predict": ["predict", str(member_file), "--split", "test", "--out", str(out / "p.safetensors")],
        "ensemble": ["ensemble", str(member_file), "--method", "mean", "--out", str(out / "e")],
        "distill --out": [*teacher, "--out", str(out / "s.safetensors")],
        "distill --checkpoint-dir": [
            *teacher,
            "--checkpoint-dir",
            str(out / "ckpt"),
            "--out",
            str(work / "s.safetensors"),
        ],
    }


def _hidden(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".*")]


@pytest.mark.parametrize("command", ["predict", "ensemble", "distill --out", "distill --checkpoint-dir"])
def test_a_full_disk_is_one_line_and_leaves_nothing(member_file, tmp_path, tiny_disk, command):
    # what others left on the disk: less than a kB stays free
    (tiny_disk / "filler").write_bytes(b"x" * (shutil.disk_usage(tiny_disk).free - 800))
    args = _commands(member_file, tiny_disk, tmp_path)[command]
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()  # what the command printed before the write (a leaderboard) aside
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: cannot write "), result.output
    assert "free" in lines[0] and str(tiny_disk) in lines[0]
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"], _hidden(tiny_disk)


@pytest.mark.parametrize("command", ["predict", "ensemble", "distill --out", "distill --checkpoint-dir"])
def test_a_file_size_limit_is_one_line_and_leaves_nothing(member_file, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    args = _commands(member_file, out, tmp_path)[command]

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    result = subprocess.run(
        [sys.executable, "-m", "modelfusion.cli", *args],
        capture_output=True,
        text=True,
        preexec_fn=limit_files,
        timeout=HANG_GUARD_S,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: cannot write "), result.stderr
    assert "ulimit -f" in lines[0]
    assert not _hidden(out)


def test_a_disk_that_fills_while_writing_removes_the_partial_file(tiny_disk):
    """When the estimate was not enough (others write too), the writer's own failure is the same one line."""
    with pytest.raises(OutputError, match=r"cannot write .*big\.bin: its disk filled up"):
        with atomic_path(tiny_disk / "big.bin") as tmp:
            tmp.write_bytes(b"x" * 300_000)
    with pytest.raises(OutputError, match=r"cannot write .*model\.pt: its disk filled up"):
        with atomic_path(tiny_disk / "model.pt") as tmp:
            torch.save({"w": torch.zeros(80_000)}, tmp)  # torch only says its zip position is off
    assert list(tiny_disk.iterdir()) == []


def test_a_checkpoint_is_never_half_replaced(member_file, tmp_path, tiny_disk):
    ckpt = tiny_disk / "ckpt"
    teacher = ["distill", "--teacher", str(member_file), *STUDENT, "--no-progress", "--checkpoint-dir", str(ckpt)]
    first = CliRunner().invoke(app, [*teacher, "--epochs", "1", "--out", str(tmp_path / "one.safetensors")])
    assert first.exit_code == 0, first.output
    saved = (ckpt / "distill_checkpoint.pt").read_bytes()
    free = shutil.disk_usage(tiny_disk).free
    (tiny_disk / "filler").write_bytes(b"x" * (free - 2048))  # the next checkpoint no longer fits beside it
    again = [*teacher, "--epochs", "1", "--seed", "1", "--overwrite", "--out", str(tmp_path / "two.safetensors")]
    result = CliRunner().invoke(app, again)
    assert result.exit_code == 2 and result.stderr.startswith("error: cannot write "), result.output
    assert (ckpt / "distill_checkpoint.pt").read_bytes() == saved
    assert sorted(p.name for p in ckpt.iterdir()) == ["distill_checkpoint.pt"]
