"""Nothing a user owns is destroyed, and interrupted work leaves nothing behind.

Every command that writes refuses an existing non-empty output unless `--overwrite`, and never replaces an
input or the config; folder outputs are all or nothing and locked; a run beside a dead run's debris cleans
it up; SIGTERM cleans up like Ctrl-C.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from modelfusion import OutputError
from modelfusion._atomic import atomic_dir, remove_stale
from modelfusion.cli import app
from modelfusion.io import save_member
from modelfusion.members import TorchMember

from .conftest import MLP_KWARGS, MLP_SPEC
from .limits import HANG_GUARD_S

BIN = Path(sys.executable).parent


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _refused(args: list[str], match: str) -> str:
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert match in lines[0], lines[0]
    return lines[0]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def project(tmp_path):
    """A folder as a user keeps it: two models in their own folders and a merge config beside them."""
    for i in range(2):
        (tmp_path / f"model{i}").mkdir()
        torch.manual_seed(i)
        save_file({"w": torch.randn(8, 4), "b": torch.randn(8)}, str(tmp_path / f"model{i}" / "model.safetensors"))
    (tmp_path / "model0" / "config.json").write_text('{"hidden_size": 4}')
    config = tmp_path / "merge.yaml"
    config.write_text("merge_method: linear\nmodels:\n  - model: model0\n  - model: model1\n")
    return tmp_path


@pytest.mark.parametrize("out", [".", "model0", "model1/model.safetensors", "merge.yaml"])
def test_merge_never_replaces_a_folder_holding_its_inputs_or_an_input(project, out):
    before = _snapshot(project)
    for extra in ([], ["--overwrite"]):
        _refused(["merge", str(project / "merge.yaml"), str(project / out), *extra], "an input of this run")
    assert _snapshot(project) == before


def test_merge_over_an_existing_output_needs_overwrite_and_dry_run_says_so(project):
    taken = project / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    config = str(project / "merge.yaml")
    _refused(["merge", config, str(taken)], "exists and is not empty; pass --overwrite")
    result = CliRunner().invoke(app, ["merge", config, str(taken), "--dry-run"])
    assert result.exit_code == 2 and "output: " in result.output and "REFUSED" in result.output
    assert (taken / "notes.txt").read_text() == "mine"

    plain = project / "plain.txt"
    plain.write_text("mine")
    _refused(["merge", config, str(plain)], "is a file, not a folder")
    assert plain.read_text() == "mine"

    result = CliRunner().invoke(app, ["merge", config, str(taken), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in taken.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in project.iterdir() if ".modelfusion" in p.name]  # no temporary or lock left


def test_file_outputs_refuse_existing_files_folders_inputs_and_other_formats(tmp_path, trained_mlp):
    member = save_member(
        TorchMember(trained_mlp, name="m", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS), tmp_path / "m"
    )
    existing = tmp_path / "preds.safetensors"
    existing.write_bytes(b"mine")
    _refused(["predict", str(member), "--out", str(existing)], "exists; pass --overwrite")
    _refused(["predict", str(member), "--out", str(member), "--overwrite"], "is an input of this run")
    _refused(["predict", str(member), "--out", str(tmp_path)], "name it with .safetensors")
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    _refused(["predict", str(member), "--out", str(folder)], "is a folder, not a file")
    _refused(["align", str(member), str(member), "--out", str(tmp_path / "x.pt")], "name it with .safetensors")
    _refused(["align", str(member), str(member), "--out", str(member), "--overwrite"], "an input of this run")
    _refused(["evaluate", str(existing), "--json", str(existing), "--overwrite"], "name it with .json")
    student = ["--student", MLP_SPEC, "--student-kwargs", '{"in_features": 64, "num_outputs": 10}']
    _refused(["distill", "--teacher", str(member), *student, "--out", str(existing)], "exists; pass --overwrite")
    assert existing.read_bytes() == b"mine"

    result = CliRunner().invoke(app, ["predict", str(member), "--out", str(existing), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert existing.read_bytes() != b"mine"


def test_overwrite_never_replaces_the_working_folder(project, monkeypatch):
    monkeypatch.chdir(project / "model1")
    before = _snapshot(project)
    _refused(["merge", str(project / "merge.yaml"), ".", "--overwrite"], "holds the working folder")
    _refused(["demo", "--out", str(project), "--overwrite"], "holds the working folder")
    assert _snapshot(project) == before


def test_an_unwritable_output_is_one_line(tmp_path, trained_mlp):
    member = save_member(
        TorchMember(trained_mlp, name="m", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS), tmp_path / "m"
    )
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    # A path under a plain file cannot be created, whoever runs the test (root ignores permission bits).
    _refused(["predict", str(member), "--out", str(blocker / "sub" / "p.safetensors")], "cannot write")
    _refused(["ensemble", str(member), "--out", str(blocker / "sub")], "cannot write")


def test_ensemble_output_is_all_or_nothing_with_no_stale_combiners(tmp_path, digits_members, digits):
    from modelfusion.ensemble import fuse_and_evaluate
    from modelfusion.predictions import collect_predictions

    val = collect_predictions(digits_members, digits.val.X, digits.val.y, "val", progress=False)
    test = collect_predictions(digits_members, digits.test.X, digits.test.y, "test", progress=False)
    out = tmp_path / "ensemble"
    fuse_and_evaluate(val, test, ["mean", "weighted"]).save(out)
    with pytest.raises(OutputError, match="exists and is not empty"):
        fuse_and_evaluate(val, test, ["mean"]).save(out)
    fuse_and_evaluate(val, test, ["mean"]).save(out, overwrite=True)
    assert sorted(p.name for p in (out / "combiners").iterdir()) == ["mean.safetensors"]

    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "half") as folder:
        (folder / "combiners").mkdir()
        raise RuntimeError("killed halfway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble"]


def test_debris_of_dead_runs_is_removed_and_an_interrupted_replacement_restored(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".out.modelfusion-{dead}-abc123.tmp").mkdir()
    (tmp_path / f".out.modelfusion-{dead}-abc123.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".x.bin.modelfusion-{dead}-def456.tmp").write_bytes(b"half")
    previous = tmp_path / f".kept.modelfusion-{dead}-0a1b.old"  # killed between the two renames
    previous.mkdir()
    (previous / "results.json").write_text("{}")
    alive = tmp_path / f".other.modelfusion-{os.getpid()}-ffff.tmp"  # a live run's: left alone
    alive.mkdir()
    mine = tmp_path / ".config.tmp"  # not ours: left alone
    mine.write_text("user")

    removed = remove_stale(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config.tmp", alive.name, "kept"]
    assert (tmp_path / "kept" / "results.json").read_text() == "{}"


def test_a_folder_being_written_is_locked_and_a_dead_owners_lock_is_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".out.modelfusion.lock").write_text(str(sleeper.pid))
        with pytest.raises(OutputError, match=f"another modelfusion run \\(process {sleeper.pid}\\)"):
            with atomic_dir(tmp_path / "out"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / ".out.modelfusion.lock").write_text(str(_dead_pid()))
    with atomic_dir(tmp_path / "out") as folder:
        (folder / "done").write_text("yes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _big_models(folder: Path) -> Path:
    """Two models large enough (2 x 128 MB) that a merge of them runs for a while."""
    for i in range(2):
        (folder / f"big{i}").mkdir()
        tensors = {f"layer{j}": torch.full((2048, 4096), float(i + j)) for j in range(4)}
        save_file(tensors, str(folder / f"big{i}" / "model.safetensors"))
    config = folder / "big.yaml"
    config.write_text("merge_method: linear\nmodels:\n  - model: big0\n  - model: big1\nshard_size: 40MB\n")
    return config


def _start_merge(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(BIN / "modelfusion"), "merge", str(config), str(out)]
    return subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(pattern: str, folder: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not list(folder.glob(pattern)):
        assert process.poll() is None and time.monotonic() < deadline, "the merge ended before it was stopped"
        time.sleep(0.005)


@pytest.mark.slow
def test_sigterm_and_kill_during_a_merge_leave_nothing_and_a_second_merge_is_refused(tmp_path):
    config = _big_models(tmp_path)
    out = tmp_path / "merged"
    inputs = _snapshot(tmp_path)

    merge = _start_merge(config, out)
    _wait_for(".merged.modelfusion-*.tmp/model-*", tmp_path, merge)
    second = CliRunner().invoke(app, ["merge", str(config), str(out)])
    assert second.exit_code == 2 and "being written by another modelfusion run" in second.output
    merge.send_signal(signal.SIGTERM)
    _, stderr = merge.communicate(timeout=HANG_GUARD_S)
    assert merge.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM")
    assert _snapshot(tmp_path) == inputs  # no output, no temporary folder, no lock

    merge = _start_merge(config, out)
    _wait_for(".merged.modelfusion-*.tmp/model-*", tmp_path, merge)
    merge.kill()
    merge.wait()
    debris = sorted(p.name for p in tmp_path.iterdir() if ".modelfusion" in p.name)
    assert len(debris) == 2  # kill -9 cannot clean up: its temporary folder and its lock stay behind

    result = subprocess.run([str(BIN / "modelfusion"), "merge", str(config), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not [p for p in tmp_path.iterdir() if ".modelfusion" in p.name]  # the next run removed them
    assert (out / "model.safetensors.index.json").exists()
