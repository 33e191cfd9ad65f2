"""Prediction collection on several processes (gloo on CPU) gives what one process gives, bit for bit: through
the Python API in processes started here, and through `torchrun -m modelfusion predict`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from torch import nn

from modelfusion.io import save_member
from modelfusion.io.factory import build_model
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.predictions import Predictions, collect_predictions

from .conftest import MLP_KWARGS, MLP_SPEC
from .limits import HANG_GUARD_S

BIN = Path(sys.executable).parent
WORLD = 2


def _in_a_process_group(rank: int, init: str, jobs: list, out: Path) -> None:
    """One process of a gloo group: runs each job (members, X, y, batch size) through collect_predictions and
    saves what it got back (or the error it raised) as `out/rank{rank}-{job}.pt`."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        for index, (members, X, y, batch_size) in enumerate(jobs):
            try:
                preds = collect_predictions(members, X, y, "test", batch_size=batch_size, progress=False)
                got = {"outputs": preds.outputs, "labels": preds.labels, "names": preds.member_names}
            except Exception as err:  # the test compares the errors of both processes
                got = {"error": (type(err).__name__, str(err))}
            torch.save(got, out / f"rank{rank}-{index}.pt")
    finally:
        dist.destroy_process_group()


def _run_in_two_processes(jobs: list, tmp_path: Path) -> list[list[dict]]:
    """Each process's results of `jobs`, `[rank][job]`."""
    mp.start_processes(
        _in_a_process_group,
        args=(f"file://{tmp_path / 'rendezvous'}", jobs, tmp_path),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    return [
        [torch.load(tmp_path / f"rank{rank}-{index}.pt", weights_only=True) for index in range(len(jobs))]
        for rank in range(WORLD)
    ]


@pytest.mark.slow
def test_two_processes_collect_what_one_collects(digits, trained_mlp, tmp_path):
    """An MLP and a scikit-learn member, on rows that two processes do not share evenly (359 rows: 8 batches of
    up to 50 split 4 and 4, 180 and 179 rows; one batch of 1024 that the second process has no share of), and a
    regression member: every process returns the one-process outputs, bit for bit (with one thread per process
    in both runs: the MLP's last row of 9 rounds differently on two threads)."""
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    members = [
        TorchMember(trained_mlp, name="mlp"),
        SklearnMember(LogisticRegression(max_iter=300).fit(X, y), name="logreg"),
    ]
    torch.manual_seed(0)
    regressors = [TorchMember(nn.Linear(64, 1), name=f"r{i}", task="regression") for i in range(2)]
    rows, targets = digits.test.X[:359], digits.test.y[:359]
    jobs = [
        (members, rows, targets, 50),
        (members, rows, targets, 1024),
        (regressors, rows, targets.float(), 13),
    ]
    gathered = _run_in_two_processes(jobs, tmp_path)
    threads = torch.get_num_threads()
    for index, (job_members, job_X, job_y, batch_size) in enumerate(jobs):
        torch.set_num_threads(1)  # as in each process: a CPU kernel's rounding may depend on its thread count
        try:
            one = collect_predictions(job_members, job_X, job_y, "test", batch_size=batch_size, progress=False)
        finally:
            torch.set_num_threads(threads)
        for rank in range(WORLD):
            got = gathered[rank][index]
            assert "error" not in got, got
            assert got["outputs"].shape == one.outputs.shape
            assert torch.equal(got["outputs"], one.outputs), (rank, batch_size)
            assert torch.equal(got["labels"], one.labels) and got["names"] == one.member_names


@pytest.mark.slow
def test_an_error_on_one_process_is_raised_on_both(trained_mlp, digits, tmp_path):
    """Rows that only the second process predicts make the MLP give NaN: that process raises the error, and the
    first raises the same error instead of waiting for the other's outputs (the spawn would hang otherwise)."""
    rows = digits.test.X[:100].clone()
    rows[90:] = float("nan")  # in the second process's share of 4 batches of 25
    gathered = _run_in_two_processes([([TorchMember(trained_mlp, name="mlp")], rows, None, 25)], tmp_path)
    errors = [gathered[rank][0].get("error") for rank in range(WORLD)]
    assert errors[0] is not None and errors[0] == errors[1], errors
    assert errors[0][0] == "InvalidInputError" and "member 'mlp' produced" in errors[0][1]


def _predict(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    # One thread per process, as torchrun sets it: a CPU kernel's rounding may depend on its thread count.
    return subprocess.run(
        [*launcher, "-m", "modelfusion", "predict", *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_predict_under_torchrun_writes_the_one_process_file(trained_mlp, digits, tmp_path):
    """`torchrun --nproc_per_node=2 -m modelfusion predict` (gloo, CPU): the first process writes one file whose
    tensors and metadata are the one-process run's (`python -m modelfusion`); one line of output; an error is
    one `error:` line from our processes, a failed exit, and no file."""
    mlp = save_member(
        TorchMember(trained_mlp, name="mlp", factory=MLP_SPEC, factory_kwargs=MLP_KWARGS), tmp_path / "mlp.safetensors"
    )
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    logreg = save_member(
        SklearnMember(LogisticRegression(max_iter=300).fit(X, y), name="logreg"), tmp_path / "logreg.skops"
    )
    torchrun = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={WORLD}"]
    args = [str(mlp), str(logreg), "--dataset", "digits", "--batch-size", "47"]  # 360 rows: 8 batches, 7 full
    two = _predict(torchrun, [*args, "--out", str(tmp_path / "two.safetensors")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved predictions of 2 members on 360 test samples") == 1, two.stdout
    one = _predict([sys.executable], [*args, "--out", str(tmp_path / "one.safetensors")])
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_file(str(tmp_path / "two.safetensors")), load_file(str(tmp_path / "one.safetensors"))
    assert a.keys() == b.keys() == {"outputs", "labels"}
    assert all(torch.equal(a[name], b[name]) for name in a)
    first, second = Predictions.load(tmp_path / "two.safetensors"), Predictions.load(tmp_path / "one.safetensors")
    assert (first.member_names, first.split, first.classes) == (second.member_names, second.split, second.classes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logreg.skops", "mlp.safetensors", "one.safetensors",
                                                          "two.safetensors"]  # fmt: skip
    # a member that cannot run on these rows fails in both processes' shares: one line, from one process
    kwargs = {**MLP_KWARGS, "in_features": 32}
    narrow = TorchMember(build_model(MLP_SPEC, kwargs), name="narrow", factory=MLP_SPEC, factory_kwargs=kwargs)
    narrow = save_member(narrow, tmp_path / "narrow.safetensors")
    failed = _predict(
        torchrun, [str(mlp), str(narrow), "--dataset", "digits", "--out", str(tmp_path / "e.safetensors")]
    )
    assert failed.returncode != 0
    ours = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "member 'narrow' cannot run on inputs" in ours[0], failed.stderr[-3000:]
    assert not (tmp_path / "e.safetensors").exists()
    # a command that does not share its work is refused on several processes (each would write all of it)
    refused = subprocess.run(
        [*torchrun, "-m", "modelfusion", "evaluate", str(tmp_path / "one.safetensors")],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    ours = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and ours == [
        "error: 'evaluate' runs on one process; under torchrun run predict or distill, and the others as "
        "`python -m modelfusion evaluate` alone"
    ], refused.stderr[-3000:]
