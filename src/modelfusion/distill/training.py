"""The distillation loop: plain PyTorch, seeded, with early stopping, atomic checkpoints and a bit-exact resume."""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._atomic import atomic_path, check_output
from .._checks import MAX_SEED, check_count, check_number, check_seed, checked
from .._distributed import gather_over_processes, process_rank, sum_over_processes
from .._files import check_readable
from .._modules import output_width
from .._progress import progress_bar
from ..datasets import Split
from ..errors import CheckpointError, ConfigError, OutputError, TrainingDivergedError
from ..training import mixup_weight, score_classifier
from .losses import LOSSES, FeatureHints, resolve_loss_params
from .options import DistillOptions
from .teachers import Teacher

__all__ = ["distill", "DistillResult", "DistillOptions", "process_rank"]

CHECKPOINT_NAME = "distill_checkpoint.pt"


@dataclass
class DistillResult:
    """The student (weights of its best validation epoch) and one history entry per epoch."""

    student: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0


def _evaluate(student: nn.Module, split: Split) -> dict[str, float]:
    scores = score_classifier(student, split)
    return {"val_nll": scores["loss"], "val_accuracy": scores["accuracy"]}


@checked
def distill(
    student: nn.Module,
    teacher: Teacher,
    train: Split,
    val: Split,
    options: DistillOptions | None = None,
    *,
    feature_hints: FeatureHints | None = None,
    **changes,
) -> DistillResult:
    """Train `student` to match `teacher` on `train`, choosing the epoch on `val` (never on test).

    AdamW with a cosine schedule over all steps. With `mixup > 0`, each batch is mixed with a shuffled copy of
    itself (weight ~ Beta(mixup, mixup)) and the teacher labels the mixed inputs: more transfer data than the
    training set has; it needs a live teacher and a pure distillation loss (`alpha=1`).

    Args:
        student: trained in place (as `fit` trains an estimator); the returned one is the same module, with
            its best validation epoch's weights.
        teacher: a `ModelTeacher` or `OfflineTeacher`.
        train, val: the splits (an offline teacher's logits must be of `train`, in order).
        options: how to train (`DistillOptions`: loss and its parameters, epochs, learning rate, batch size,
            mixup, patience, time limit, seed, checkpoints, progress); `changes` replace some of them
            (`distill(..., epochs=20)`, or `distill(..., options, lr=3e-3)`).
        feature_hints: FitNets hint losses between the student and the (live) teacher's modules; their
            adapters train with the student, and `options.feature_weight` times their loss joins the total.

    The seed gives the same student, byte for byte, whatever the caller's random state was (which is left as
    it was): batch order and mixup draw from a generator seeded with it, dropout from torch's global
    generator, seeded with it inside `torch.random.fork_rng`. A checkpoint (`checkpoint_dir`) is written
    after each epoch, atomically; `resume=True` continues from it with the same result as an uninterrupted
    run, byte for byte (the checkpoint holds the states of both random generators). The checkpoint records
    the run's settings and a resume with other ones (student, teacher, data, seed, learning rate, ...) is
    refused, as is one written before checkpoints held the generators' states; a fresh run replaces an
    existing checkpoint only with `overwrite`.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite; the message names the epoch, and the
            checkpoint of the last good epoch (if any) is left in place.

    Under `torchrun` (torch.distributed initialized), each process takes its share of every global batch and
    DDP averages the gradients, so the result matches one process with the same `batch_size`; only rank 0
    writes checkpoints.

    Returns:
        A `DistillResult` with the student and its history (loss parts, validation NLL and accuracy per epoch).
    """
    options = (options or DistillOptions()).training_options().updated(**changes)
    run = _setup(student, teacher, train, val, options, feature_hints)
    epochs, seed = options.epochs, options.seed
    state, started = run.state, time.perf_counter()
    with torch.random.fork_rng(), progress_bar(options.progress and run.rank == 0) as bar:
        # Dropout draws from torch's global generator: seeded (per process, so that the processes' shares of a
        # batch get independent masks) or restored from the checkpoint; `fork_rng` gives the caller's back.
        if run.global_rng is None:
            torch.manual_seed(seed + run.rank * (MAX_SEED + 1))
        else:
            torch.set_rng_state(run.global_rng)
        task = bar.add_task("distilling", total=epochs, completed=state["epoch"])
        while state["epoch"] < epochs:
            record = {"epoch": state["epoch"] + 1, **_one_epoch(run), **_evaluate(student, val)}
            state["history"].append(record)
            if record["val_nll"] < state["best_nll"]:
                state["best_nll"], state["best_epoch"] = record["val_nll"], record["epoch"]
                state["best_student"] = copy.deepcopy(student.state_dict())
            state["epoch"] += 1
            bar.update(
                task,
                advance=1,
                description=f"distilling  loss {record['total']:.3f}  val acc {record['val_accuracy']:.3f}",
            )
            _save_checkpoint(run)
            if options.patience is not None and state["epoch"] - state["best_epoch"] >= options.patience:
                break
            if _out_of_time(started, options.time_limit_s):
                break
    student.load_state_dict(state["best_student"])
    return DistillResult(student.eval(), state["history"], state["best_epoch"])


@dataclass
class _Run:
    """Everything one distillation run trains with, and its progress (`state`, what a checkpoint restores)."""

    student: nn.Module
    teacher: Teacher
    train: Split
    model: nn.Module  # the student, or the DDP module around it and the hint adapters
    feature_hints: FeatureHints | None
    loss_fn: object
    loss_params: dict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # batch order and mixup: the same in every process
    batch_size: int
    mixup: float
    feature_weight: float
    lr: float
    rank: int
    world: int
    settings: dict
    checkpoint: Path | None
    global_rng: torch.Tensor | None = None  # the restored global generator of a resumed run
    state: dict = field(
        default_factory=lambda: {
            "epoch": 0,
            "best_nll": float("inf"),
            "best_epoch": 0,
            "history": [],
            "best_student": None,
        }
    )


def _setup(
    student: nn.Module,
    teacher: Teacher,
    train: Split,
    val: Split,
    options: DistillOptions,
    feature_hints: FeatureHints | None,
) -> _Run:
    """Check every setting, build the optimizer and schedule, and restore a checkpoint when resuming."""
    loss_fn = LOSSES[options.loss]
    loss_params = resolve_loss_params(options.loss, options.loss_params)
    _check_numbers(options)
    _check_teaching(student, teacher, train, options, loss_params, feature_hints)
    mixup, batch_size = options.mixup, options.batch_size
    rank, world = process_rank()
    if world > 1 and len(train) % batch_size and len(train) % batch_size < world:
        raise ConfigError(
            f"the last batch ({len(train) % batch_size} samples) is smaller than the {world} processes; "
            "pick another batch size"
        )
    # Under torch.distributed each process takes its share of every global batch; DDP averages gradients
    # (the hint adapters' too: they train inside the same DDP module as the student).
    model = nn.parallel.DistributedDataParallel(_Trained(student, feature_hints)) if world > 1 else student
    steps_per_epoch = -(-len(train) // batch_size)
    trained = list(student.parameters()) + (list(feature_hints.parameters()) if feature_hints is not None else [])
    optimizer = torch.optim.AdamW(trained, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs * steps_per_epoch)
    checkpoint = Path(options.checkpoint_dir) / CHECKPOINT_NAME if options.checkpoint_dir is not None else None
    settings = _settings(
        student,
        teacher,
        train,
        val,
        feature_hints,
        loss=options.loss,
        loss_params=sorted((str(k), float(v)) for k, v in loss_params.items()),
        epochs=options.epochs,
        lr=float(options.lr),
        weight_decay=float(options.weight_decay),
        batch_size=batch_size,
        mixup=float(mixup),
        feature_weight=float(options.feature_weight),
        seed=int(options.seed),
        world_size=world,
    )
    run = _Run(
        student=student,
        teacher=teacher,
        train=train,
        model=model,
        feature_hints=feature_hints,
        loss_fn=loss_fn,
        loss_params=loss_params,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(options.seed),
        batch_size=batch_size,
        mixup=float(mixup),
        feature_weight=float(options.feature_weight),
        lr=options.lr,
        rank=rank,
        world=world,
        settings=settings,
        checkpoint=checkpoint,
    )
    _open_checkpoint(run, options)
    return run


def _check_teaching(student, teacher: Teacher, train: Split, options: DistillOptions, loss_params: dict, hints):
    """Refuse what cannot teach, in one line each: augmentation or hints with an offline teacher, mixup with a
    label loss, no training samples, a student or teacher for other inputs."""
    if options.mixup and not teacher.augmentable:
        raise ConfigError(
            "an offline teacher's logits belong to the original inputs, so it cannot be combined with data "
            "augmentation (mixup); use a live ModelTeacher or mixup=0"
        )
    if options.mixup and loss_params["alpha"] != 1.0:
        raise ConfigError("mixup labels the mixed inputs with the teacher only: set loss_params alpha=1")
    if len(train) == 0:
        raise ConfigError("distillation needs training samples")
    output_width(student, train.X, "the student")  # a student built for other inputs fails here, in one line
    if hints is not None and not teacher.augmentable:
        raise ConfigError("feature hints need a live teacher: an offline teacher runs no forward pass")
    teacher.check(train)


def _open_checkpoint(run: _Run, options: DistillOptions) -> None:
    """Make sure the checkpoint can be written; refuse to replace an earlier run's without `overwrite`; restore
    it with `resume`."""
    checkpoint = run.checkpoint
    if checkpoint is not None:
        check_output(checkpoint, kind="file", overwrite=True)  # a folder that cannot be made fails now, not later
    if checkpoint is not None and not options.resume and checkpoint.exists() and not options.overwrite:
        raise OutputError(
            f"{checkpoint} holds an earlier run; pass --resume to continue it, --overwrite (overwrite=True) to "
            "start afresh over it, or choose another --checkpoint-dir"
        )
    if options.resume:
        if checkpoint is None or not checkpoint.exists():
            raise CheckpointError(f"nothing to resume: no {CHECKPOINT_NAME} in {options.checkpoint_dir}")
        _restore(run, _wrap_load(checkpoint))


def _out_of_time(started: float, limit_s: float | None) -> bool:
    """Whether the time limit has passed, as the first process measured it: under torchrun every process stops
    after the same epoch."""
    if limit_s is None:
        return False
    passed = torch.tensor([float(time.perf_counter() - started >= limit_s) if process_rank()[0] == 0 else 0.0])
    return bool(sum_over_processes(passed).item() > 0)


def _check_numbers(options: DistillOptions) -> None:
    check_seed(options.seed)
    check_count(options.epochs, "epochs")
    check_count(options.batch_size, "batch_size")
    check_number(options.lr, "lr", low=0.0, open_low=True)
    check_number(options.weight_decay, "weight_decay", low=0.0)
    check_number(options.mixup, "mixup", low=0.0)
    check_number(options.feature_weight, "feature_weight", low=0.0)
    if options.patience is not None:
        check_count(options.patience, "patience")
    if options.time_limit_s is not None:
        check_number(options.time_limit_s, "time_limit_s", low=0.0, open_low=True)


def _one_epoch(run: _Run) -> dict[str, float]:
    """Train one epoch; the mean of each loss part over the training samples."""
    train, batch_size, world, rank = run.train, run.batch_size, run.world, run.rank
    run.student.train()
    sums: dict[str, float] = {}
    order = torch.randperm(len(train), generator=run.generator)
    for start in range(0, len(train), batch_size):
        index = order[start : start + batch_size]
        x, y = train.X[index], train.y[index]
        if run.mixup:  # on the global batch, with the generator every process shares
            weight = mixup_weight(run.mixup, run.generator)
            x = weight * x + (1 - weight) * x[torch.randperm(len(x), generator=run.generator)]
            index = None
        mine = torch.arange(len(x)).tensor_split(world)[rank]
        local_index = None if index is None else index[mine]
        target = run.teacher.logits(x[mine], local_index)
        parts = run.loss_fn(run.model(x[mine]), target, None if run.mixup else y[mine], **run.loss_params)
        if run.feature_hints is not None:
            parts["feature"] = run.feature_hints.loss()
            parts["total"] = parts["total"] + run.feature_weight * parts["feature"]
        if not torch.isfinite(parts["total"].detach()):
            raise _diverged(run.state["epoch"], parts["total"].detach().item(), run.lr, run.checkpoint)
        run.optimizer.zero_grad()
        # Scaled so that DDP's mean over processes is the mean over the global batch.
        (parts["total"] * (len(mine) * world / len(x))).backward()
        try:
            run.optimizer.step()
        except RuntimeError as err:  # an update too large for float32 ("without overflow")
            if "overflow" not in str(err):
                raise
            raise _diverged(run.state["epoch"], float("inf"), run.lr, run.checkpoint) from None
        run.scheduler.step()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value.item() * len(mine)
    sums = _sum_over_processes(sums) if world > 1 else sums
    return {k: v / len(train) for k, v in sums.items()}


def _save_checkpoint(run: _Run) -> None:
    """Write the run's state atomically (the first process), with both random generators' states."""
    if run.checkpoint is None:
        return
    # A collective (every process sends its global generator's state, (world, 5056) uint8), so before the rank
    # test.
    global_rngs = gather_over_processes(torch.get_rng_state())
    if run.rank != 0:
        return
    saved = {
        **run.state,
        "settings": run.settings,
        "student": run.student.state_dict(),
        "feature_hints": run.feature_hints.state_dict() if run.feature_hints is not None else {},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "generator": run.generator.get_state(),
        "torch_rng": global_rngs,  # (world, 5056) uint8: each process's global generator
    }
    # never half-replaced: the new checkpoint is written beside the old one, which stays until it is complete
    with atomic_path(run.checkpoint, size=_tensor_bytes(saved) + 2**16) as tmp:
        torch.save(saved, tmp)


def _tensor_bytes(value) -> int:
    """The bytes of every tensor in a (nested) checkpoint: about what `torch.save` writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _restore(run: _Run, saved: dict) -> None:
    """Continue `run` from a checkpoint written with the same settings."""
    _check_same_settings(saved.get("settings"), run.settings, run.checkpoint)
    run.student.load_state_dict(saved["student"])
    if run.feature_hints is not None:
        run.feature_hints.load_state_dict(saved["feature_hints"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.generator.set_state(saved["generator"])
    run.global_rng = _saved_global_rng(saved, run.checkpoint, run.rank, run.world)
    run.state = {k: saved[k] for k in run.state}


_PROBE = 64  # training samples the teacher labels for its fingerprint


def _fingerprint(tensors: dict, *, values: bool = True) -> str:
    """A short hash of named tensors (names, shapes and, with `values`, their values to 3 decimals, which
    thread counts do not change): tells two students, teachers or datasets apart without storing them."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = torch.as_tensor(tensors[name]).detach().cpu()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        if values:
            rounded = value.double().round(decimals=3) if value.is_floating_point() else value
            digest.update(rounded.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _settings(student, teacher: Teacher, train: Split, val: Split, feature_hints, **numbers) -> dict:
    """What a checkpoint must share with the run resuming it: the student's and hints' architecture, the
    teacher (its logits on the first training samples), both splits, and every number of the recipe."""
    probe = min(_PROBE, len(train))
    return {
        "student": _fingerprint(student.state_dict(), values=False),
        "teacher": _fingerprint({"logits": teacher.logits(train.X[:probe], torch.arange(probe))}),
        "train": _fingerprint({"X": train.X, "y": train.y}),
        "val": _fingerprint({"X": val.X, "y": val.y}),
        "feature_hints": _fingerprint(feature_hints.state_dict(), values=False) if feature_hints is not None else "",
        **numbers,
    }


def _wrap_load(checkpoint: Path) -> dict:
    check_readable(checkpoint, "distillation checkpoint")
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError.unreadable(checkpoint, "a distillation checkpoint", err) from None
    if not isinstance(saved, dict) or "student" not in saved:
        raise CheckpointError(f"{checkpoint} is not a distillation checkpoint")
    return saved


def _check_same_settings(saved: dict | None, current: dict, checkpoint: Path) -> None:
    """Refuse to resume a run with settings other than the checkpoint's: the result would be neither run."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{checkpoint} records no settings (an older version wrote it); start afresh")
    differing = [key for key in current if saved.get(key) != current[key]]
    if differing:
        details = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {current[k]!r})" for k in differing)
        raise CheckpointError(
            f"cannot resume from {checkpoint}: it was written with other settings: {details}; rerun with the "
            "same settings, or start afresh without --resume"
        )


def _saved_global_rng(saved: dict, checkpoint: Path, rank: int, world: int) -> torch.Tensor:
    """This process's global generator state from the checkpoint; a checkpoint without one (written by an
    earlier version) is refused: its run's dropout masks cannot be continued, so the result would be neither run."""
    states = saved.get("torch_rng")
    if states is None:
        raise CheckpointError(
            f"{checkpoint} holds no random-number generator state (an earlier version of modelfusion wrote it), so "
            "resuming could not reproduce the uninterrupted run; rerun without --resume and with --overwrite "
            "(overwrite=True) to start afresh"
        )
    width = torch.get_rng_state().numel()
    if not isinstance(states, torch.Tensor) or states.dtype != torch.uint8 or tuple(states.shape) != (world, width):
        found = f"{states.dtype} {list(states.shape)}" if isinstance(states, torch.Tensor) else type(states).__name__
        raise CheckpointError(
            f"{checkpoint}: its random-number generator state is {found}, expected torch.uint8 [{world}, {width}]; "
            "the file is corrupt or was written by another torch; rerun without --resume and with --overwrite"
        )
    return states[rank].clone()


def _diverged(done: int, loss: float, lr: float, checkpoint: Path | None) -> TrainingDivergedError:
    """The error for a loss that left the finite numbers in the epoch after the `done` finished ones; the
    checkpoint (if any) holds the last of those."""
    if checkpoint is not None and done > 0:
        kept = f"the checkpoint in {checkpoint.parent} holds epoch {done}, the last good one"
    else:
        kept = "nothing was written"
    return TrainingDivergedError(
        f"distillation diverged in epoch {done + 1}: the loss became {loss}; {kept}. Lower the learning rate "
        f"(now {lr:g}) or check the teacher's outputs"
    )


class _Trained(nn.Module):
    """The student and its hint adapters as one module, so that DDP synchronizes both; runs the student."""

    def __init__(self, student: nn.Module, feature_hints: FeatureHints | None) -> None:
        super().__init__()
        self.student = student
        self.feature_hints = feature_hints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def _sum_over_processes(sums: dict[str, float]) -> dict[str, float]:
    keys = sorted(sums)
    values = sum_over_processes(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
    return dict(zip(keys, values.tolist(), strict=True))
