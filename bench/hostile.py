"""Hostile inputs against the `modelfusion` CLI (and a few Python API calls): every outcome classified.

    .venv/bin/python bench/hostile.py [--src PATH/src] [--only SUBSTRING] [--family NAME] [--json OUT]
                                      [--workdir DIR] [--timeout 120] [--keep] [--list]

Each case runs `python -m modelfusion.cli COMMAND ...` (API cases: `python -c ...`) as its own process with
PYTHONPATH=<src> (the checkout under test; checked before anything runs), OMP_NUM_THREADS=1, an 8 GiB
address-space cap (so that a hostile input cannot take the machine down; an allocation refused by the cap
counts as a `resource` failure) and a timeout, in a fresh folder that is also its working folder. Valid
artifacts (a tiny digits demo: members, predictions, combiners; training predictions; a distillation
checkpoint; small Hugging Face style folders; three 200 MB checkpoints for the interrupted merges; the zip
bombs) are built once, lazily, with the checkout under test, in the work folder (a --workdir given again reuses
what an earlier run built there); hostile files are built per case. Compare two checkouts with two runs:

    .venv/bin/python bench/hostile.py --src /tmp/baseline/src --json /tmp/hostile_before.json
    .venv/bin/python bench/hostile.py --json /tmp/hostile_after.json

Outcome classes, one per case: the first that applies, in this order (the JSON also lists every one that
applies, as `flags`):

    code_run       a payload ran: its marker file appeared, or an attack wrote a file it had no reason to write
    data_lost      a file or folder the user owned before the command (an input, the config, a sentinel) was
                   changed or removed
    hung           the command ran past the timeout
    resource       over 1 GiB of anonymous memory (sampled every 10 ms; memory-mapped inputs do not count), or an
                   allocation refused by the address-space cap (peak RSS, VmHWM, is reported for every case)
    debris         hidden temporary files or folders (`.NAME...`) left behind
    traceback      a Python traceback, an exit code other than 0/2, an error of more than one line, or one that
                   does not name what the case says it must (the output a full disk refused)
    silent         exit 0 although the input must be refused, or a success whose output is wrong or leaks data
    refused_valid  a clear refusal of an input that must be accepted (the control cases)
    usage          exit 2 from typer/click's own argument parsing ("Usage:")
    clear          exit 2 with a one-line `error: ...` (nothing else on stderr), or the documented success

Issue 23's cases belong to families (`--family`, counted per family in the summary and the JSON): skops
callables, names as paths, allocation and time bombs, special files, markup and control codes, silently
accepted, ONNX debris (run with HOME in the case folder, where the runtime's telemetry used to write) and closed
stdout (run with file descriptor 1 closed). Their hostile files come from tests/hostile_files.py, shared with
the security tests. Issue 28's families: API arguments (public functions called with arguments of the wrong
type or out of range), merge values out of range (method parameters, duplicate YAML keys, a tensor in two
shards, NaN/inf in a model, overflowing weights, an unknown user's home), signals (SIGTERM the moment a
temporary output or lock appears; kill -9 during a merge's `align:` step, then a rerun) and full disk (outputs
past a file size limit, RLIMIT_FSIZE).

Running as root, file permissions do not apply: the unwritable-output and unreadable-file cases then run their
command as the user `nobody` (setpriv) in a folder it owns, which emulates a normal user.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import pickle
import random
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
# Anonymous memory above this is a `resource` failure. Anonymous, not all of RSS: a merge's memory-mapped
# inputs (file pages the kernel can drop) are not memory the process allocated.
MEMORY_LIMIT = GIB
ADDRESS_SPACE_CAP = 8 * GIB  # RLIMIT_AS of every command
NOBODY = 65534
PRIORITY = (
    "code_run",
    "data_lost",
    "hung",
    "resource",
    "debris",
    "traceback",
    "silent",
    "refused_valid",
    "usage",
    "clear",
)
ALLOCATION_FAILURES = ("can't allocate memory", "cannot allocate memory", "memoryerror", "bad_alloc")
MEMBER_KEY = "modelfusion"
PREDICTIONS_KEY = "modelfusion.predictions"
COMBINER_KEY = "modelfusion.combiner"
STUDENT_KWARGS = {"in_features": 64, "num_outputs": 10, "hidden": [8]}
STUDENT = ["--student", "modelfusion.models:mlp", "--student-kwargs", json.dumps(STUDENT_KWARGS)]
DISTILL = [*STUDENT, "--epochs", "1", "--no-progress"]
FSIZE_LIMIT = 1500  # bytes: the full-disk cases' RLIMIT_FSIZE (see `full_disk_cases`)
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".pt2", ".skops", ".pkl", ".pickle", ".joblib", ".ts")


# ----------------------------------------------------------------------------------------------- cases


@dataclass
class Ctx:
    """Where one case runs: its folder (also the working folder) and the shared artifacts."""

    name: str
    dir: Path
    art: Artifacts
    evil: str = ""  # the hostile file a `through` case built
    split: str = "test"  # the split a Predictions builder starts from
    stdout: str = ""  # what the command printed (for checks of what reached the terminal)
    stderr: str = ""

    @property
    def marker(self) -> Path:
        return self.dir / f"PWNED_{self.name}"

    def path(self, relative: str) -> Path:
        return self.dir / relative


@dataclass
class Case:
    """One hostile (or control) input: the command, what must happen, and what to check afterwards.

    `args` follow the command; `{dir}`, `{art}` and `{marker}` in them become the case folder, the artifacts
    folder and the payload's marker file. For `command="api"`, `args` is Python code run with `python -c`.
    """

    name: str
    command: str  # demo, predict, ensemble, evaluate, merge, align, distill, or api
    args: list[str]
    must: str = "refuse"  # "refuse", "succeed", or "either" (a clear refusal or a correct success)
    setup: Callable[[Ctx], None] | None = None  # builds the case's inputs in its folder
    owned: tuple[str, ...] = ()  # files/folders (relative) the user owns: must stay as they were
    attack: bool = False  # a payload: its marker must not appear, and nothing but the outputs may be written
    markers: tuple[str, ...] = ()  # more files (relative) whose appearance means the payload ran
    check: Callable[[Ctx], str | None] | None = None  # after exit 0: what is wrong with the result, or None
    as_nobody: bool = False  # run as `nobody` when we are root (permission cases)
    runner: str = "plain"  # "plain", "signal", "signal_rerun", "concurrent"
    signal: int = 0  # for the signal runners
    # for the signal runners: globs (relative to the case folder) whose first match triggers the signal at once;
    # without them, the signal comes 0.5 s after the first new entry
    signal_when: tuple[str, ...] = ()
    timeout: float | None = None
    family: str = ""  # the class of hostile input (the summary counts outcomes per family)
    env: dict[str, str] = field(default_factory=dict)  # environment overrides; `{dir}` is the case folder
    close_stdout: bool = False  # run with file descriptor 1 closed (`>&-`)
    fsize_limit: int | None = None  # RLIMIT_FSIZE of the command in bytes (SIGXFSZ ignored): a full disk
    names: str = ""  # what a refusal's line must name (the output, say); a line without it is not clear

    @property
    def safe_name(self) -> str:
        return "".join(c if c.isalnum() or c in "._-" else "_" for c in self.name)


@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes: the kernel's high-water mark (VmHWM), memory-mapped input pages included
    peak_anon: int = 0  # bytes: the largest anonymous RSS sampled (every 10 ms), what the process allocated
    timed_out: bool = False
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- file builders


class _Payload:
    """Pickles as `exec(<create the marker file>)`: unpickling it runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def payload_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=2)


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rewrite_zip(data: bytes, out: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> None:
    """Copy the zip `data` to `out`, replacing entries whose name ends with a key of `replace`."""
    source = zipfile.ZipFile(io.BytesIO(data))
    prefix = source.namelist()[0].split("/")[0]
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            body = next((v for k, v in replace.items() if info.filename.endswith(k)), None)
            target.writestr(info, body if body is not None else source.read(info))
        for name, body in (add or {}).items():
            target.writestr(f"{prefix}/{name}", body)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | str | None, key: str) -> None:
    metadata = {} if meta is None else {key: meta if isinstance(meta, str) else json.dumps(meta)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def raw_safetensors(path: Path, header: dict, data: bytes = b"", length: int | None = None) -> None:
    """A safetensors file written by hand (header length may lie)."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)


def yaml_list(items: list[str], indent: str = "  ") -> str:
    return "\n".join(f"{indent}- {item}" for item in items)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)
    return target


def deflated_bomb(out: Path, inner: str, size: int, head: bytes = b"", fill: bytes = b"\0", others=()) -> None:
    """A zip whose entry `inner` is `head` + `size` bytes of `fill`, deflated (a few MB on disk)."""
    chunk = fill * (8 * 2**20 // len(fill))
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, body in others:
            archive.writestr(name, body, compress_type=zipfile.ZIP_STORED)
        with archive.open(inner, "w", force_zip64=True) as handle:
            handle.write(head)
            left = size
            while left > 0:
                handle.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)


class Artifacts:
    """Valid inputs built once, lazily, with the checkout under test (members, predictions, models...)."""

    def __init__(self, root: Path, runner: Runner) -> None:
        self.root = root
        self.runner = runner

    def _cli(self, what: str, argv: list[str], cwd: Path) -> None:
        started = time.perf_counter()
        result = self.runner.execute([sys.executable, *argv], cwd, timeout=600)
        if result.rc != 0:
            raise SystemExit(f"building {what} failed (exit {result.rc}):\n{result.stderr[-3000:]}")
        print(f"  built {what} in {time.perf_counter() - started:.1f}s", flush=True)

    @functools.cached_property
    def demo(self) -> Path:
        """runs/demo of `run_demo("digits", epochs=2, n_mlps=2)`: members, predictions, combiners."""
        out = self.root / "demo"
        if out.exists():  # built by an earlier run in this --workdir
            return out
        code = (
            "import sys; from modelfusion.demo import run_demo; "
            "run_demo('digits', out=sys.argv[1], epochs=2, n_mlps=2, progress=False)"
        )
        self._cli("the demo members", ["-c", code, str(out)], self.root)
        return out

    def member(self, name: str) -> Path:
        suffix = ".skops" if name in ("logreg", "random_forest") else ".safetensors"
        return self.demo / "members" / f"{name}{suffix}"

    def preds(self, split: str) -> Path:
        return self.demo / "predictions" / f"{split}.safetensors"

    def combiner(self, name: str) -> Path:
        return self.demo / "combiners" / f"{name}.safetensors"

    @functools.cached_property
    def guard(self) -> Path:
        """An input guard fitted on the digits inputs alone (`guard fit` without members)."""
        out = self.root / "guard.safetensors"
        if out.exists():  # built by an earlier run in this --workdir
            return out
        self._cli("an input guard", ["-m", "modelfusion.cli", "guard", "fit", "--out", str(out)], self.root)
        return out

    @functools.cached_property
    def train_preds(self) -> Path:
        out = self.root / "train_preds.safetensors"
        if out.exists():  # built by an earlier run in this --workdir
            return out
        members = [str(self.member(m)) for m in ("mlp_0", "mlp_1", "cnn", "logreg", "random_forest")]
        self._cli(
            "training predictions",
            ["-m", "modelfusion.cli", "predict", *members, "--split", "train", "--out", str(out)],
            self.root,
        )
        return out

    @functools.cached_property
    def distill_checkpoint(self) -> Path:
        """A folder with the distill_checkpoint.pt of a finished run: teacher mlp_0, student hidden [8], seed 0,
        lr 1e-3, 2 epochs (the settings of the resume cases, which change one of them)."""
        folder = self.root / "ckpt"
        if folder.exists():  # built by an earlier run in this --workdir
            return folder
        argv = [
            "-m",
            "modelfusion.cli",
            "distill",
            "--teacher",
            str(self.member("mlp_0")),
            *STUDENT,
            "--epochs",
            "2",
            "--no-progress",
            "--checkpoint-dir",
            str(folder),
            "--out",
            str(self.root / "ckpt_student.safetensors"),
        ]
        self._cli("a distillation checkpoint", argv, self.root)
        return folder

    @functools.cached_property
    def mlp_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = read_safetensors(self.member("mlp_0"))
        return tensors, json.loads(meta[MEMBER_KEY])

    @functools.cached_property
    def hf(self) -> Path:
        """Hugging Face style folders base/, ft0/, ft1/ (model.safetensors + config.json) of a toy model."""
        root = self.root / "hf"
        if root.exists():  # built by an earlier run in this --workdir
            return root
        generator = torch.Generator().manual_seed(0)
        shapes = {"embed.weight": (32, 16), "layer.weight": (16, 16), "layer.bias": (16,), "head.weight": (4, 16)}
        base = {k: torch.randn(s, generator=generator) for k, s in shapes.items()}
        for name in ("base", "ft0", "ft1"):
            folder = root / name
            folder.mkdir(parents=True)
            noise = 0.0 if name == "base" else 0.1
            tensors = {k: v + noise * torch.randn(v.shape, generator=generator) for k, v in base.items()}
            save_file(tensors, str(folder / "model.safetensors"))
            write(folder / "config.json", json.dumps({"model_type": "toy", "hidden_size": 16}))
        return root

    @functools.cached_property
    def big(self) -> Path:
        """base/, m0/, m1/: 200 MB of float32 each (50 tensors 1000x1000), for the interrupted merges."""
        root = self.root / "big"
        if root.exists():  # built by an earlier run in this --workdir
            return root
        generator = torch.Generator().manual_seed(0)
        for name in ("base", "m0", "m1"):
            (root / name).mkdir(parents=True)
            tensors = {f"layer{i}.weight": torch.randn(1000, 1000, generator=generator) for i in range(50)}
            save_file(tensors, str(root / name / "model.safetensors"))
        print("  built 3 x 200 MB checkpoints", flush=True)
        return root

    @functools.cached_property
    def pt2(self) -> bytes:
        """A valid torch.export program of Linear(64, 10), as .pt2 bytes."""
        program = torch.export.export(torch.nn.Sequential(torch.nn.Linear(64, 10)), (torch.zeros(2, 64),))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        return buffer.getvalue()

    @functools.cached_property
    def torchscript(self) -> bytes:
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(64, 10))), buffer)
        return buffer.getvalue()

    @functools.cached_property
    def zip_bomb_pt(self) -> Path:
        """A torch zip whose storage is declared 2 GiB and stored deflated (about 2 MB on disk)."""
        out = self.root / "bomb.pt"
        if out.exists():  # built by an earlier run in this --workdir
            return out
        numel = 2**29
        small = torch_bytes({"weight": torch.zeros(4)})
        pickled = zipfile.ZipFile(io.BytesIO(small)).read("archive/data.pkl")
        # the pickle records the storage's element count as a pickled int: patch 4 -> 2**29
        patched = pickled.replace(b"K\x04t", b"J" + struct.pack("<i", numel) + b"t", 1)
        patched = patched.replace(b"K\x04\x85", b"J" + struct.pack("<i", numel) + b"\x85", 1)
        source = zipfile.ZipFile(io.BytesIO(small))
        others = [(i.filename, source.read(i)) for i in source.infolist() if not i.filename.endswith("data/0")]
        others = [(n, patched if n.endswith("data.pkl") else b) for n, b in others]
        deflated_bomb(out, "archive/data/0", numel * 4, others=others)
        print(f"  built a zip bomb .pt ({out.stat().st_size / 2**20:.1f} MB on disk, 2 GiB declared)", flush=True)
        return out

    @functools.cached_property
    def zip_bomb_skops(self) -> Path:
        """A skops zip whose schema.json is `{` and 2 GiB of spaces (deflated to a few MB)."""
        out = self.root / "bomb.skops"
        if out.exists():  # built by an earlier run in this --workdir
            return out
        deflated_bomb(out, "schema.json", 2 * GIB, head=b"{", fill=b" " * 64)
        return out

    @functools.cached_property
    def many_tensors(self) -> Path:
        """A safetensors file whose header declares 10^6 (empty) tensors: a 59 MB header."""
        out = self.root / "many.safetensors"
        if out.exists():  # built by an earlier run in this --workdir
            return out
        header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(10**6)}
        raw_safetensors(out, header)
        return out

    @functools.cached_property
    def skops_estimator(self) -> bytes:
        import skops.io as sio
        from sklearn.linear_model import LogisticRegression

        X = torch.randn(40, 64).numpy()
        y = (torch.arange(40) % 10).numpy()
        return sio.dumps(LogisticRegression(max_iter=50).fit(X, y))


# Hostile checkpoint builders: each writes one file into the case folder and returns its name.


def member_with_meta(ctx: Ctx, meta: dict | str | None, name: str = "evil.safetensors", tensors=None) -> str:
    base_tensors, _ = ctx.art.mlp_tensors
    write_safetensors(ctx.path(name), tensors if tensors is not None else base_tensors, meta, MEMBER_KEY)
    return name


def meta(ctx: Ctx, **changes) -> dict:
    """mlp_0's stored metadata with `changes` (a value None removes the key)."""
    stored = dict(ctx.art.mlp_tensors[1])
    stored.update(changes)
    return {k: v for k, v in stored.items() if v is not None}


def mlp_kwargs(**changes) -> dict:
    return {"in_features": 64, "num_outputs": 10, "hidden": [128], **changes}


def evil_meta_load_model_pickle(ctx: Ctx) -> str:
    write(ctx.path("weights.pkl"), payload_pickle(ctx.marker))
    kwargs = {"path": str(ctx.path("weights.pkl")), "trust_pickle": True}
    return member_with_meta(ctx, meta(ctx, factory="modelfusion.io.loading:load_model", factory_kwargs=kwargs))


def evil_meta_load_model_pt(ctx: Ctx) -> str:
    write(ctx.path("weights.pt"), torch_bytes(_Payload(ctx.marker)))
    kwargs = {"path": str(ctx.path("weights.pt")), "trust_pickle": True}
    return member_with_meta(ctx, meta(ctx, factory="modelfusion.io.loading:load_model", factory_kwargs=kwargs))


def evil_meta_write_json(ctx: Ctx) -> str:
    kwargs = {"path": str(ctx.path("written.json")), "data": {}}
    return member_with_meta(ctx, meta(ctx, factory="modelfusion._atomic:write_json", factory_kwargs=kwargs))


def evil_meta_os_system(ctx: Ctx) -> str:
    kwargs = {"command": f"touch {ctx.marker}"}
    return member_with_meta(ctx, meta(ctx, factory="os:system", factory_kwargs=kwargs))


def evil_meta_eval(ctx: Ctx) -> str:
    kwargs = {"source": f"open({str(ctx.marker)!r}, 'w')"}
    return member_with_meta(ctx, meta(ctx, factory="builtins:eval", factory_kwargs=kwargs))


def evil_meta_merge_victim(ctx: Ctx) -> str:
    """A trusted-prefix factory that replaces the folder `victim/` with a merge of the file itself."""
    write(ctx.path("victim/notes.txt"), "the user's notes\n")
    kwargs = {
        "models": [str(ctx.path("evil.safetensors"))],
        "out_dir": str(ctx.path("victim")),
        "method": "linear",
        "progress": False,
    }
    return member_with_meta(ctx, meta(ctx, factory="modelfusion.merge:merge_checkpoints", factory_kwargs=kwargs))


def evil_meta_run_demo(ctx: Ctx) -> str:
    """A trusted-prefix factory that trains and saves a demo over the user's earlier run in `victim/`."""
    copy(ctx.art.member("mlp_0"), ctx.path("victim/members/mlp_0.safetensors"))
    kwargs = {"dataset": "digits", "out": str(ctx.path("victim")), "epochs": 1, "n_mlps": 1, "progress": False}
    return member_with_meta(ctx, meta(ctx, factory="modelfusion.demo:run_demo", factory_kwargs=kwargs))


def evil_meta_cli_main(ctx: Ctx) -> str:
    return member_with_meta(ctx, meta(ctx, factory="modelfusion.cli:main", factory_kwargs={}))


def evil_mlp_kwargs(ctx: Ctx, **changes) -> str:
    return member_with_meta(ctx, meta(ctx, factory_kwargs=mlp_kwargs(**changes)))


def evil_pickle(ctx: Ctx, suffix: str, how: str) -> str:
    name = f"evil{suffix}"
    if how == "torch":
        write(ctx.path(name), torch_bytes(_Payload(ctx.marker)))
    elif how == "joblib":
        import joblib

        joblib.dump(_Payload(ctx.marker), ctx.path(name))
    else:
        write(ctx.path(name), payload_pickle(ctx.marker))
    return name


def evil_state_dict_data_pkl(ctx: Ctx) -> str:
    """A real torch.save'd state dict whose data.pkl is replaced by a payload pickle."""
    tensors, _ = ctx.art.mlp_tensors
    rewrite_zip(torch_bytes(tensors), ctx.path("evil.pt"), {"/data.pkl": payload_pickle(ctx.marker)})
    return "evil.pt"


def evil_nested_payload(ctx: Ctx) -> str:
    """A checkpoint dict with a real state dict under "state_dict" and a payload beside it."""
    tensors, _ = ctx.art.mlp_tensors
    write(ctx.path("evil.pt"), torch_bytes({"state_dict": tensors, "extra": _Payload(ctx.marker)}))
    return "evil.pt"


def evil_torchscript_like(ctx: Ctx, suffix: str) -> str:
    """A zip that looks like TorchScript (a code/ entry) whose data.pkl is a payload."""
    name = f"evil{suffix}"
    with zipfile.ZipFile(ctx.path(name), "w") as archive:
        archive.writestr("evil/data.pkl", payload_pickle(ctx.marker))
        archive.writestr("evil/code/__torch__/evil.py", "x = 1\n")
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil/version", "3\n")
    return name


def evil_real_torchscript_payload(ctx: Ctx) -> str:
    """A real TorchScript archive with its data.pkl replaced by a payload."""
    rewrite_zip(ctx.art.torchscript, ctx.path("evil.pt"), {"/data.pkl": payload_pickle(ctx.marker)})
    return "evil.pt"


def evil_pt2_sample_inputs(ctx: Ctx) -> str:
    """A real .pt2 whose sample inputs are a payload (torch.export falls back to weights_only=False)."""
    rewrite_zip(ctx.art.pt2, ctx.path("evil.pt2"), {"sample_inputs/model.pt": torch_bytes(_Payload(ctx.marker))})
    return "evil.pt2"


def evil_pt2_pickled_weights(ctx: Ctx) -> str:
    """A real .pt2 whose first weight is marked `use_pickle` and is a payload."""
    archive = zipfile.ZipFile(io.BytesIO(ctx.art.pt2))
    entry = next(n for n in archive.namelist() if n.endswith("data/weights/model_weights_config.json"))
    config = json.loads(archive.read(entry))
    for entry in config["config"].values():
        entry["use_pickle"] = True
    payload = torch_bytes(_Payload(ctx.marker))
    replace = {"weights/model_weights_config.json": json.dumps(config).encode(), "weights/weight_0": payload}
    replace["weights/weight_1"] = payload
    rewrite_zip(ctx.art.pt2, ctx.path("evil.pt2"), replace)
    return "evil.pt2"


def evil_skops(ctx: Ctx, module: str, cls: str, loader: str) -> str:
    """A real skops file of a LogisticRegression with one attribute replaced by a node naming `module.cls`."""
    source = zipfile.ZipFile(io.BytesIO(ctx.art.skops_estimator))
    schema = json.loads(source.read("schema.json"))
    node = {"__class__": cls, "__module__": module, "__loader__": loader, "__id__": 1}
    if loader == "ObjectNode":  # as skops writes an object with one attribute
        attribute = {
            "__class__": "str",
            "__module__": "builtins",
            "__loader__": "JsonNode",
            "content": "1",
            "is_json": True,
            "__id__": 2,
        }
        key_type = {"__class__": "str", "__module__": "builtins", "__loader__": "TypeNode", "__id__": 3}
        node["content"] = {
            "__class__": "dict",
            "__module__": "builtins",
            "__loader__": "DictNode",
            "__id__": 4,
            "content": {"a": attribute},
            "key_types": {
                "__class__": "list",
                "__module__": "builtins",
                "__loader__": "ListNode",
                "content": [key_type],
                "__id__": 5,
            },
        }
    schema["content"]["content"]["solver"] = node
    with zipfile.ZipFile(ctx.path("evil.skops"), "w") as archive:
        for info in source.infolist():
            body = json.dumps(schema).encode() if info.filename == "schema.json" else source.read(info)
            archive.writestr(info, body)
    return "evil.skops"


# Predictions and combiners built by hand.


def predictions_file(ctx: Ctx, name: str, split: str = "test", meta_changes=None, raw_meta=None, **tensors) -> str:
    """The demo's Predictions for `split` with tensors replaced (None removes one) and metadata changed."""
    source = ctx.art.train_preds if split == "train" else ctx.art.preds(split)
    stored, header = read_safetensors(source)
    stored.update(tensors)
    stored = {k: v for k, v in stored.items() if v is not None}
    description = json.loads(header[PREDICTIONS_KEY])
    description.update(meta_changes or {})
    write_safetensors(ctx.path(name), stored, raw_meta if raw_meta is not None else description, PREDICTIONS_KEY)
    return name


def split_tensors(ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and labels of the demo's Predictions on `ctx.split`."""
    stored, _ = read_safetensors(ctx.art.train_preds if ctx.split == "train" else ctx.art.preds(ctx.split))
    return stored["outputs"].clone(), stored["labels"].clone()


def with_label(ctx: Ctx, index: int, value) -> torch.Tensor:
    _, labels = split_tensors(ctx)
    labels[index] = value
    return labels


def combiner_file(ctx: Ctx, name: str = "evil_combiner.safetensors", change=None, raw=None, tensors=None) -> str:
    """The demo's fitted `weighted` combiner with its description changed by `change(description)`."""
    stored, header = read_safetensors(ctx.art.combiner("weighted"))
    description = json.loads(header[COMBINER_KEY])
    if change is not None:
        change(description)
    write_safetensors(ctx.path(name), {**stored, **(tensors or {})}, raw or description, COMBINER_KEY)
    return name


# ------------------------------------------------------------------------------------------ running


def snapshot(root: Path) -> dict[str, tuple]:
    """Relative path -> ("d",) | ("f", sha256) | ("l", target) of everything under `root`."""
    entries: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            if path.is_symlink():
                entries[relative] = ("l", os.readlink(path))
            elif path.is_dir():
                entries[relative] = ("d",)
            elif not path.is_file():  # a FIFO or socket a case made: opening it would block
                entries[relative] = ("s", stat.S_IFMT(path.lstat().st_mode))
            else:
                try:
                    digest = hashlib.sha256()
                    with open(path, "rb") as handle:
                        for block in iter(lambda handle=handle: handle.read(2**20), b""):
                            digest.update(block)
                    entries[relative] = ("f", digest.hexdigest())
                except OSError as err:
                    entries[relative] = ("?", str(err))
    return entries


def under(relative: str, root: str) -> bool:
    return root in (".", "") or relative == root or relative.startswith(root.rstrip("/") + "/")


def is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in Path(relative).parts)


def expected_outputs(case: Case) -> list[str]:
    """The files or folders the command itself writes (the rest of a case's new files are suspect)."""
    args = case.args
    named = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--out", "--json", "--checkpoint-dir")}
    defaults = {
        "predict": ["predictions.safetensors"],
        "ensemble": ["runs/ensemble"],
        "demo": ["runs/demo"],
        "distill": ["student.safetensors"],
        "align": [],
        "evaluate": [],
        "merge": [a for a in args if not a.startswith("-")][1:2],
        "api": [],
        "compress": [],
        "cascade": [],
        "guard": ["guard.safetensors"] if args[:1] == ["fit"] else [],
        "auto": ["runs/auto"],
        "report": ["report.html"],
    }[case.command]
    outs = [v for k, v in named.items() if k != "--checkpoint-dir"] or defaults
    if "--checkpoint-dir" in named:
        outs.append(named["--checkpoint-dir"])
    if case.command == "align" and "--out" in named and not Path(named["--out"]).suffix:
        outs.append(named["--out"] + ".safetensors")  # save_member appends the suffix
    return outs


class Runner:
    """Starts commands of the checkout under test with limits, and measures them (exit, output, peak RSS)."""

    def __init__(self, src: Path, workdir: Path, timeout: float) -> None:
        self.src = src
        self.workdir = workdir
        self.timeout = timeout
        self.peaks: dict[int, tuple[int, int]] = {}  # pid -> (peak RSS, peak anonymous RSS) seen so far
        self.home = workdir / "home"
        self.home.mkdir(exist_ok=True)
        os.chmod(self.home, 0o777)
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.root = os.geteuid() == 0
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")},
            "PYTHONPATH": str(src),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HOME": str(self.home),
            "MPLCONFIGDIR": str(self.home),
            "PYTHONDONTWRITEBYTECODE": "1",
            "COLUMNS": "200",
            "TERM": "dumb",
        }
        self.prlimit = shutil.which("prlimit")
        self.setpriv = shutil.which("setpriv")

    def sample(self, pid: int) -> None:
        """Record the running process's peak RSS and peak anonymous memory so far (see `finish`)."""
        rss, anon = memory_now(pid)
        old_rss, old_anon = self.peaks.get(pid, (0, 0))
        self.peaks[pid] = (max(old_rss, rss), max(old_anon, anon))

    def verify_src(self) -> str:
        code = "import modelfusion, sys; sys.stdout.write(modelfusion.__file__)"
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.env, cwd=self.workdir, capture_output=True, text=True, check=False
        )
        where = Path(done.stdout.strip()).resolve()
        if done.returncode != 0 or not where.is_relative_to(self.src.resolve()):
            raise SystemExit(f"modelfusion imports from {where or done.stderr}, not from {self.src}")
        return str(where)

    def start(
        self,
        argv: list[str],
        cwd: Path,
        log: str,
        as_nobody: bool = False,
        env: dict[str, str] | None = None,
        close_stdout: bool = False,
        fsize_limit: int | None = None,
    ) -> subprocess.Popen:
        prefix = [self.prlimit, f"--as={ADDRESS_SPACE_CAP}", "--"] if self.prlimit else []
        if as_nobody and self.root:
            if not self.setpriv:
                raise SystemExit("running as root without setpriv: cannot emulate an unprivileged user")
            prefix += [self.setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        with open(self.logs / f"{log}.out", "wb") as out, open(self.logs / f"{log}.err", "wb") as err:
            return subprocess.Popen(
                prefix + argv,
                cwd=cwd,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=child_setup(close_stdout, fsize_limit),  # noqa: PLW1509 - fork, then exec
            )

    def finish(self, process: subprocess.Popen, log: str, started: float, timeout: float) -> Result:
        """Wait for `process` (killing its process group at the timeout); its exit, output and peak RSS.

        The peak RSS is the kernel's high-water mark of the process's own memory (VmHWM, read while it runs):
        wait4's ru_maxrss would also count this script's memory, which the child inherits at fork.
        """
        timed_out = False
        while True:
            self.sample(process.pid)
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.01)
        process.returncode = os.waitstatus_to_exitcode(status)
        peak, anon = self.peaks.pop(process.pid, (0, 0))
        return Result(
            rc=None if timed_out else process.returncode,
            stdout=(self.logs / f"{log}.out").read_text(errors="replace"),
            stderr=(self.logs / f"{log}.err").read_text(errors="replace"),
            seconds=time.perf_counter() - started,
            peak_rss=peak,
            peak_anon=anon,
            timed_out=timed_out,
        )

    def execute(
        self,
        argv: list[str],
        cwd: Path,
        timeout: float | None = None,
        log: str = "build",
        as_nobody: bool = False,
        env: dict[str, str] | None = None,
        close_stdout: bool = False,
        fsize_limit: int | None = None,
    ) -> Result:
        started = time.perf_counter()
        process = self.start(argv, cwd, log, as_nobody, env, close_stdout, fsize_limit)
        return self.finish(process, log, started, timeout or self.timeout)


def child_setup(close_stdout: bool, fsize_limit: int | None) -> Callable[[], None] | None:
    """What the child does between fork and exec: close its stdout, cap the size of the files it writes."""
    if not close_stdout and fsize_limit is None:
        return None

    def setup() -> None:
        if close_stdout:
            os.close(1)
        if fsize_limit is not None:  # a write past the limit fails with EFBIG, as on a full disk, not a signal
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return setup


def memory_now(pid: int) -> tuple[int, int]:
    """(peak RSS so far, anonymous RSS now) of a running process in bytes, from /proc; zeros once it exited."""
    values = {"VmHWM:": 0, "RssAnon:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in values:
                values[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values["VmHWM:"], values["RssAnon:"]


def substitute(value: str, ctx: Ctx) -> str:
    for key, replacement in (
        ("{dir}", ctx.dir),
        ("{art}", ctx.art.root),
        ("{marker}", ctx.marker),
        ("{evil}", ctx.evil),
    ):
        value = value.replace(key, str(replacement))
    return value


def case_env(case: Case, ctx: Ctx) -> dict[str, str]:
    return {key: substitute(value, ctx) for key, value in case.env.items()}


def case_argv(case: Case, ctx: Ctx) -> list[str]:
    args = [substitute(a, ctx) for a in case.args]
    if case.command == "api":
        return [sys.executable, "-c", API_PRELUDE + "\n".join(args) + API_EPILOGUE]
    return [sys.executable, "-m", "modelfusion.cli", case.command, *args]


API_PRELUDE = """\
import sys
from modelfusion.errors import ModelFusionError
try:
"""
API_EPILOGUE = """
except ModelFusionError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
"""


def api(*lines: str) -> list[str]:
    """Python statements for an `api` case, indented into the prelude's try block."""
    return ["    " + line for line in lines]


def chown_tree(root: Path, uid: int) -> None:
    for folder, dirs, files in os.walk(root):
        os.chown(folder, uid, uid)
        for name in dirs + files:
            os.chown(Path(folder) / name, uid, uid, follow_symlinks=False)


def run_case(case: Case, runner: Runner, art: Artifacts) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"{case.safe_name[:60]}.", dir=runner.workdir / "cases"))
    ctx = Ctx(case.safe_name, folder, art)
    try:
        if case.setup is not None:
            case.setup(ctx)
    except Exception as err:  # a builder that fails is a bug of this script: reported, not counted
        return {
            "name": case.name,
            "family": case.family,
            "command": case.command,
            "must": case.must,
            "class": "harness_error",
            "flags": [],
            "rc": None,
            "first_line": f"setup failed: {type(err).__name__}: {err}"[:300],
            "error_line": "",
            "peak_rss_mib": 0,
            "peak_anon_mib": 0,
            "seconds": 0,
            "notes": [],
            "argv": [],
            "folder": str(folder),
        }
    if case.as_nobody and runner.root:
        chown_tree(folder, NOBODY)
        for path in folder.rglob("*"):  # the permission cases mark what must stay unreadable/unwritable
            if path.name.startswith("ro_") or path.name.startswith("noread_"):
                os.chmod(path, 0o555 if path.is_dir() else 0o000)
    elif case.as_nobody:
        for path in folder.rglob("*"):
            if path.name.startswith("ro_") or path.name.startswith("noread_"):
                os.chmod(path, 0o555 if path.is_dir() else 0o000)
    before = snapshot(folder)
    timeout = case.timeout or runner.timeout
    argv = case_argv(case, ctx)
    if case.runner == "plain":
        env = case_env(case, ctx)
        limits = (case.close_stdout, case.fsize_limit)
        result = runner.execute(argv, folder, timeout, case.safe_name, case.as_nobody, env, *limits)
    else:
        result = RUNNERS[case.runner](case, ctx, runner, argv, timeout)
    for path in folder.rglob("*"):  # give permissions back so that we can read and remove everything
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    after = snapshot(folder)
    ctx.stdout, ctx.stderr = result.stdout, result.stderr
    verdict, flags, notes = classify(case, ctx, result, before, after)
    record = {
        "name": case.name,
        "family": case.family,
        "command": case.command,
        "must": case.must,
        "class": verdict,
        "flags": flags,
        "rc": result.rc,
        "first_line": first_line(result.stderr) or first_line(result.stdout),
        "error_line": error_line(result.stderr),
        "peak_rss_mib": round(result.peak_rss / 2**20, 1),
        "peak_anon_mib": round(result.peak_anon / 2**20, 1),
        "seconds": round(result.seconds, 2),
        "notes": result.notes + notes,
        "argv": [a for a in argv[1:] if len(a) < 300],
        "folder": str(folder),
    }
    return record


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:300]


def error_line(text: str) -> str:
    """The line that says what went wrong: our `error:` line, else the last line (a traceback's exception, or
    the message inside typer's usage box)."""
    lines = [line.strip(" │╭╮╰╯─") for line in text.splitlines()]
    lines = [line for line in lines if any(c.isalnum() for c in line)]
    ours = [line for line in lines if line.startswith("error:")]
    return (ours[0] if ours else lines[-1] if lines else "")[:300]


# Runners for interrupted and concurrent merges.


def _wait_for_new_entry(runner: Runner, folder: Path, before: set[str], process: subprocess.Popen) -> bool:
    """Wait until something new appears in `folder` (the merge started writing), at most 10 s."""
    started = time.perf_counter()
    while time.perf_counter() - started < 10.0:
        runner.sample(process.pid)
        if set(os.listdir(folder)) - before:
            return True
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False  # it ended (left for `finish` to reap)
        time.sleep(0.01)
    return False


def _wait_for_match(runner: Runner, folder: Path, patterns: tuple[str, ...], process: subprocess.Popen) -> bool:
    """Wait until one of the globs matches under `folder`, polling without sleeping (the moment to hit can be
    a few microseconds wide), at most 60 s."""
    started = time.perf_counter()
    while time.perf_counter() - started < 60.0:
        if any(next(folder.glob(pattern), None) is not None for pattern in patterns):
            return True
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False  # it ended (left for `finish` to reap)
        runner.sample(process.pid)
    return False


def run_signal(case: Case, ctx: Ctx, runner: Runner, argv: list[str], timeout: float, rerun: bool = False) -> Result:
    """Start the command, send `case.signal` once it is writing (+0.5 s; or at once when one of
    `case.signal_when` matches), then look at what is left (and, with `rerun`, run it again beside that)."""
    existing = set(os.listdir(ctx.dir))
    env = case_env(case, ctx)
    started = time.perf_counter()
    process = runner.start(argv, ctx.dir, case.safe_name, env=env)
    if case.signal_when:
        seen = _wait_for_match(runner, ctx.dir, case.signal_when, process)
    else:
        seen = _wait_for_new_entry(runner, ctx.dir, existing, process)
        for _ in range(50):  # 0.5 s more
            runner.sample(process.pid)
            time.sleep(0.01)
    notes = []
    if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        os.kill(process.pid, case.signal)
        notes.append(
            f"sent {signal.Signals(case.signal).name} after {time.perf_counter() - started:.1f}s"
            f"{'' if seen else ' (no output seen yet)'}"
        )
    else:
        notes.append("the command finished before the signal: inconclusive")
    first = runner.finish(process, case.safe_name, started, timeout)
    leftovers = sorted(set(os.listdir(ctx.dir)) - existing)
    notes.append(f"after the signal: exit {first.rc}, new entries {leftovers}")
    if not rerun:
        first.notes = notes
        first.rc = 0  # the exit status of a killed process says nothing; only what it left behind counts
        if "Traceback" not in first.stderr:  # and what it printed, if that was a traceback
            first.stderr = ""
        return first
    if first.rc == 0:  # it completed before the signal took effect: there is no debris to rerun beside
        first.notes = notes + ["the command completed before the signal took effect: inconclusive"]
        return first
    second = runner.execute(argv, ctx.dir, timeout, case.safe_name + ".rerun", env=env)
    second.peak_rss = max(first.peak_rss, second.peak_rss)
    second.peak_anon = max(first.peak_anon, second.peak_anon)
    second.notes = notes + [f"rerun: exit {second.rc}"]
    return second


def run_concurrent(case: Case, ctx: Ctx, runner: Runner, argv: list[str], timeout: float) -> Result:
    """Two merges into one OUT_DIR at once: the second must fail clearly (we classify the second)."""
    existing = set(os.listdir(ctx.dir))
    started = time.perf_counter()
    first = runner.start(argv, ctx.dir, case.safe_name + ".first")
    _wait_for_new_entry(runner, ctx.dir, existing, first)
    second = runner.execute(argv, ctx.dir, timeout, case.safe_name)
    done = runner.finish(first, case.safe_name + ".first", started, timeout)
    second.notes = [f"first merge: exit {done.rc} ({first_line(done.stderr)})"]
    second.peak_rss = max(done.peak_rss, second.peak_rss)
    second.peak_anon = max(done.peak_anon, second.peak_anon)
    if done.rc != 0:
        second.notes.append("the first merge failed")
    return second


RUNNERS = {
    "signal": run_signal,
    "signal_rerun": functools.partial(run_signal, rerun=True),
    "concurrent": run_concurrent,
}


# ---------------------------------------------------------------------------------------- classifier


def classify(case: Case, ctx: Ctx, result: Result, before: dict, after: dict) -> tuple[str, list[str], list[str]]:
    """The case's class (the first of PRIORITY that applies), every class that applies, and why."""
    flags: list[str] = []
    notes: list[str] = []
    new = sorted(set(after) - set(before))
    markers = [ctx.marker.name, *case.markers]
    appeared = [m for m in markers if m in after and m not in before]
    if appeared:
        flags.append("code_run")
        notes.append(f"payload ran: {appeared} appeared")
    outputs = expected_outputs(case)
    stray = [p for p in new if not is_hidden(p) and not any(under(p, o) for o in outputs) and p not in appeared]
    stray = [p for p in stray if not any(under(p, s) for s in stray if s != p)]  # top-most only
    if case.attack and stray:
        flags.append("code_run")
        notes.append(f"an attack wrote {stray[:5]}")
    lost = []
    for root in case.owned:
        for relative, entry in before.items():
            if under(relative, root) and after.get(relative) != entry:
                lost.append(relative if relative in after else f"{relative} (removed)")
    if lost:
        flags.append("data_lost")
        notes.append(f"changed or removed: {lost[:5]}{' ...' if len(lost) > 5 else ''}")
    if result.timed_out:
        flags.append("hung")
    text = (result.stderr + result.stdout).lower()
    if result.peak_anon > MEMORY_LIMIT or any(s in text for s in ALLOCATION_FAILURES):
        flags.append("resource")
        notes.append(f"peak RSS {result.peak_rss / 2**20:.0f} MiB, anonymous {result.peak_anon / 2**20:.0f} MiB")
    debris = sorted({Path(p).parts[0] for p in new if is_hidden(p)})
    if debris:
        flags.append("debris")
        notes.append(f"left behind: {debris[:5]}")
    if not result.timed_out:
        flags.append(exit_class(case, ctx, result, notes))
    verdict = next(c for c in PRIORITY if c in flags)
    return verdict, sorted(set(flags), key=PRIORITY.index), notes


def exit_class(case: Case, ctx: Ctx, result: Result, notes: list[str]) -> str:
    err = result.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err or "Traceback" in result.stdout or result.rc not in (0, 2):
        return "traceback"
    if result.rc == 2:
        if "Usage:" in err:
            return "usage"
        if len(lines) != 1 or not lines[0].startswith("error:"):
            notes.append(f"exit 2 with {len(lines)} lines on stderr")
            return "traceback"
        if case.names not in lines[0]:
            notes.append(f"the error does not name {case.names!r}")
            return "traceback"
        return "refused_valid" if case.must == "succeed" else "clear"
    if case.must == "refuse":
        return "silent"
    if case.check is not None:
        try:
            problem = case.check(ctx)
        except Exception as err:  # an output the check cannot even read is a wrong output
            problem = f"the output is unreadable: {type(err).__name__}: {err}"[:300]
        if problem:
            notes.append(problem)
            return "silent"
    return "clear"


# ------------------------------------------------------------------------------------------- checks


def check_exists(*paths: str) -> Callable[[Ctx], str | None]:
    def check(ctx: Ctx) -> str | None:
        missing = [p for p in paths if not ctx.path(p).exists()]
        return f"exit 0 but no {missing}" if missing else None

    return check


def check_unique_names(path: str) -> Callable[[Ctx], str | None]:
    def check(ctx: Ctx) -> str | None:
        if not ctx.path(path).exists():
            return f"exit 0 but no {path}"
        names = json.loads(read_safetensors(ctx.path(path))[1][PREDICTIONS_KEY])["member_names"]
        return f"duplicate member names in the output: {names}" if len(set(names)) != len(names) else None

    return check


def check_suffix_matches(path: str) -> Callable[[Ctx], str | None]:
    """An output named .pt must be a torch file, one named .safetensors a safetensors file."""

    def check(ctx: Ctx) -> str | None:
        target = ctx.path(path)
        if not target.exists():
            return f"exit 0 but no {path}"
        if target.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(target):
            return f"{path} holds safetensors bytes under a {target.suffix} name"
        return None

    return check


def check_no_leak(path: str, secret: str) -> Callable[[Ctx], str | None]:
    def check(ctx: Ctx) -> str | None:
        target = ctx.path(path)
        if target.exists() and secret in target.read_text(errors="replace"):
            return f"{path} holds the content of a file outside the model folder (data leak)"
        return None

    return check


def check_finite_merge(path: str, allowed: bool = False) -> Callable[[Ctx], str | None]:
    """The merged model holds no NaN/inf; with `allowed` (--allow-nonfinite on a model holding them), it does."""

    def check(ctx: Ctx) -> str | None:
        files = sorted(ctx.path(path).glob("*.safetensors")) if ctx.path(path).is_dir() else []
        if not files:
            return f"exit 0 but no safetensors in {path}"
        bad = []
        for file in files:
            tensors, _ = read_safetensors(file)
            bad += [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if allowed:
            return None if bad else "NaN/inf allowed in the inputs, but the merged model has none: were they dropped?"
        return f"the merged model has NaN/inf in {bad[:3]}" if bad else None

    return check


def check_complete_merge(path: str) -> Callable[[Ctx], str | None]:
    def check(ctx: Ctx) -> str | None:
        folder = ctx.path(path)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            names = set(json.loads(index.read_text())["weight_map"].values())
            missing = [n for n in names if not (folder / n).exists()]
            return f"the merged model misses shards {missing[:3]}" if missing else None
        return None if (folder / "model.safetensors").exists() else f"exit 0 but no model in {path}"

    return check


# --------------------------------------------------------------------------------------------- corpus


def through(
    kind: str,
    build: Callable[[Ctx], str],
    commands=("predict", "ensemble", "align", "distill"),
    attack: bool = True,
    owned=(),
    markers=(),
    must: str = "refuse",
) -> list[Case]:
    """One hostile checkpoint (written by `build`) given to each of `commands` as a member/teacher."""

    def setup(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))
        ctx.evil = build(ctx)  # the file's name, for `{evil}` in the arguments

    cases = []
    for command in commands:
        if command == "predict":
            args = ["predict", "{evil}"]
        elif command == "ensemble":
            args = ["ensemble", "{evil}", "m1.safetensors", "--method", "mean", "--out", "ens"]
        elif command == "align":
            args = ["align", "{evil}", "m1.safetensors", "--out", "aligned.safetensors"]
        else:
            args = ["distill", "--teacher", "{evil}", *DISTILL, "--out", "student.safetensors"]
        cases.append(
            Case(
                f"{command}.{kind}",
                command,
                args[1:],
                must=must,
                setup=setup,
                attack=attack,
                owned=owned,
                markers=markers,
            )
        )
    return cases


def code_execution_cases() -> list[Case]:
    cases: list[Case] = []
    metadata_attacks = {
        "meta_load_model_pickle": evil_meta_load_model_pickle,
        "meta_load_model_pt": evil_meta_load_model_pt,
        "meta_os_system": evil_meta_os_system,
        "meta_builtins_eval": evil_meta_eval,
        "meta_cli_main": evil_meta_cli_main,
        "meta_mlp_dict_hidden": functools.partial(evil_mlp_kwargs, hidden={"a": 1}),
        "meta_mlp_huge_hidden": functools.partial(evil_mlp_kwargs, hidden=[10**9]),
        "meta_mlp_unknown_kwarg": functools.partial(evil_mlp_kwargs, evil=1),
        "meta_mlp_negative_hidden": functools.partial(evil_mlp_kwargs, hidden=[-5]),
        "meta_mlp_dropout_7": functools.partial(evil_mlp_kwargs, dropout=7),
    }
    for kind, build in metadata_attacks.items():
        cases += through(kind, build)
    cases += through("meta_write_json", evil_meta_write_json, markers=("written.json",))
    cases += through("meta_merge_victim", evil_meta_merge_victim, owned=("victim",))
    cases += through("meta_run_demo_victim", evil_meta_run_demo, commands=("predict",), owned=("victim",))
    cases += through("meta_mlp_hidden_1e7", functools.partial(evil_mlp_kwargs, hidden=[10**7]), ("predict",))
    pickles = {
        "pickle_torch_save.pt": functools.partial(evil_pickle, suffix=".pt", how="torch"),
        "pickle_raw.pt": functools.partial(evil_pickle, suffix=".pt", how="raw"),
        "pickle_torch_save.pth": functools.partial(evil_pickle, suffix=".pth", how="torch"),
        "pickle_raw.bin": functools.partial(evil_pickle, suffix=".bin", how="raw"),
        "pickle.pkl": functools.partial(evil_pickle, suffix=".pkl", how="raw"),
        "pickle.pickle": functools.partial(evil_pickle, suffix=".pickle", how="raw"),
        "pickle.joblib": functools.partial(evil_pickle, suffix=".joblib", how="joblib"),
        "state_dict_zip_payload_data_pkl.pt": evil_state_dict_data_pkl,
        "nested_state_dict_with_payload.pt": evil_nested_payload,
        "torchscript_like_zip.pt": functools.partial(evil_torchscript_like, suffix=".pt"),
        "torchscript_like_zip.ts": functools.partial(evil_torchscript_like, suffix=".ts"),
        "torchscript_real_payload_data_pkl.pt": evil_real_torchscript_payload,
        "pt2_payload_sample_inputs.pt2": evil_pt2_sample_inputs,
        "pt2_payload_pickled_weights.pt2": evil_pt2_pickled_weights,
        "skops_os_system.skops": functools.partial(evil_skops, module="os", cls="system", loader="FunctionNode"),
        "skops_custom_class.skops": functools.partial(evil_skops, module="evil", cls="Payload", loader="ObjectNode"),
        "skops_builtins_exec.skops": functools.partial(
            evil_skops, module="builtins", cls="exec", loader="FunctionNode"
        ),
    }
    for kind, build in pickles.items():
        cases += through(kind, build)
    return cases


def output_destruction_cases() -> list[Case]:
    def hf_with_config(ctx: Ctx, out_of: str = "cfg.yaml", base: bool = False) -> None:
        for name in ("base", "ft0", "ft1"):
            copy(ctx.art.hf / name, ctx.path(name))
        if base:
            text = "merge_method: ties\nbase_model: base\nmodels:\n" + yaml_list(
                [
                    "{model: ft0, parameters: {weight: 1.0, density: 0.5}}",
                    "{model: ft1, parameters: {weight: 1.0, density: 0.5}}",
                ]
            )
        else:
            text = "merge_method: linear\nmodels:\n" + yaml_list(["model: ft0", "model: ft1"])
        write(ctx.path(out_of), text + "\n")

    def members_project(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("proj/a.safetensors"))
        copy(ctx.art.member("mlp_1"), ctx.path("proj/b.safetensors"))
        write(
            ctx.path("proj/config.yaml"),
            "merge_method: linear\nmodels:\n" + yaml_list(["model: a.safetensors", "model: b.safetensors"]) + "\n",
        )

    def notes(ctx: Ctx, where: str = "notes.txt") -> None:
        write(ctx.path(where), "the user's notes\n")

    def both(*steps):
        def setup(ctx: Ctx) -> None:
            for step in steps:
                step(ctx)

        return setup

    def preds(ctx: Ctx, folder: str = "") -> None:
        copy(ctx.art.preds("val"), ctx.path(f"{folder}val.safetensors"))
        copy(ctx.art.preds("test"), ctx.path(f"{folder}test.safetensors"))

    def members(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))

    def previous_ensemble(ctx: Ctx) -> None:
        write(ctx.path("prev/results.json"), '{"earlier": "run"}\n')
        copy(ctx.art.combiner("mean"), ctx.path("prev/combiners/mean.safetensors"))

    def previous_demo(ctx: Ctx) -> None:
        copy(ctx.art.demo, ctx.path("prev"))

    stuff = functools.partial(notes, where="stuff/notes.txt")
    hf_ties = functools.partial(hf_with_config, base=True)
    ens = ["--val-preds", "val.safetensors", "--test-preds", "test.safetensors", "--method", "mean", "--out"]
    pr = ["m0.safetensors", "--out"]
    al = ["m0.safetensors", "m1.safetensors", "--out"]
    di = ["--teacher", "m0.safetensors", *DISTILL, "--out"]
    hf_owned = ("base", "ft0", "ft1", "cfg.yaml")
    return [
        Case(
            "merge.out_is_the_folder_of_config_and_inputs",
            "merge",
            ["proj/config.yaml", "proj"],
            setup=members_project,
            owned=("proj",),
        ),
        Case("merge.out_is_an_input_model_folder", "merge", ["cfg.yaml", "ft0"], setup=hf_with_config, owned=hf_owned),
        Case("merge.out_is_the_base_model_folder", "merge", ["cfg.yaml", "base"], setup=hf_ties, owned=hf_owned),
        Case(
            "merge.out_is_a_plain_file",
            "merge",
            ["cfg.yaml", "notes.txt"],
            setup=both(hf_with_config, notes),
            owned=("notes.txt", *hf_owned),
        ),
        Case("merge.out_is_the_config_file", "merge", ["cfg.yaml", "cfg.yaml"], setup=hf_with_config, owned=hf_owned),
        Case(
            "merge.out_is_an_input_file",
            "merge",
            ["proj/config.yaml", "proj/a.safetensors"],
            setup=members_project,
            owned=("proj",),
        ),
        Case(
            "merge.out_is_a_nonempty_unrelated_folder",
            "merge",
            ["cfg.yaml", "stuff"],
            setup=both(hf_with_config, stuff),
            owned=("stuff", *hf_owned),
        ),
        Case(
            "merge.out_is_an_earlier_merge",
            "merge",
            ["cfg.yaml", "prev"],
            setup=both(hf_with_config, lambda ctx: copy(ctx.art.hf / "base", ctx.path("prev"))),
            owned=("prev", *hf_owned),
        ),
        Case("merge.out_is_the_working_folder", "merge", ["cfg.yaml", "."], setup=hf_with_config, owned=(".",)),
        Case(
            "ensemble.out_is_a_nonempty_unrelated_folder",
            "ensemble",
            [*ens, "stuff"],
            setup=both(preds, stuff),
            owned=("stuff",),
        ),
        Case(
            "ensemble.out_is_an_earlier_run",
            "ensemble",
            [*ens, "prev"],
            setup=both(preds, previous_ensemble),
            owned=("prev",),
        ),
        Case(
            "ensemble.out_is_a_plain_file",
            "ensemble",
            [*ens, "notes.txt"],
            setup=both(preds, notes),
            owned=("notes.txt",),
        ),
        Case(
            "ensemble.out_is_an_input_file",
            "ensemble",
            [*ens, "val.safetensors"],
            setup=preds,
            owned=("val.safetensors", "test.safetensors"),
        ),
        Case(
            "ensemble.out_is_the_inputs_folder",
            "ensemble",
            [
                "--val-preds",
                "in/val.safetensors",
                "--test-preds",
                "in/test.safetensors",
                "--method",
                "mean",
                "--out",
                "in",
            ],
            setup=functools.partial(preds, folder="in/"),
            owned=("in",),
        ),
        Case(
            "demo.out_is_an_earlier_run",
            "demo",
            ["--epochs", "1", "--mlps", "1", "--no-progress", "--out", "prev"],
            setup=previous_demo,
            owned=("prev",),
        ),
        Case(
            "demo.out_is_a_plain_file",
            "demo",
            ["--epochs", "1", "--mlps", "1", "--no-progress", "--out", "notes.txt"],
            setup=notes,
            owned=("notes.txt",),
        ),
        Case(
            "demo.out_is_a_nonempty_unrelated_folder",
            "demo",
            ["--epochs", "1", "--mlps", "1", "--no-progress", "--out", "stuff"],
            setup=stuff,
            owned=("stuff",),
        ),
        Case(
            "predict.out_is_an_existing_file",
            "predict",
            [*pr, "notes.txt"],
            setup=both(members, notes),
            owned=("notes.txt",),
        ),
        Case(
            "predict.out_is_an_earlier_predictions_file",
            "predict",
            [*pr, "test.safetensors"],
            setup=both(members, preds),
            owned=("test.safetensors",),
        ),
        Case(
            "predict.out_is_the_input_member",
            "predict",
            [*pr, "m0.safetensors"],
            setup=members,
            owned=("m0.safetensors",),
        ),
        Case(
            "predict.out_is_a_nonempty_folder", "predict", [*pr, "stuff"], setup=both(members, stuff), owned=("stuff",)
        ),
        Case(
            "align.out_is_an_existing_file",
            "align",
            [*al, "notes.txt"],
            setup=both(members, notes),
            owned=("notes.txt", "m0.safetensors", "m1.safetensors"),
        ),
        Case(
            "align.out_is_the_reference",
            "align",
            [*al, "m0.safetensors"],
            setup=members,
            owned=("m0.safetensors", "m1.safetensors"),
        ),
        Case(
            "align.out_is_the_other_input",
            "align",
            [*al, "m1.safetensors"],
            setup=members,
            owned=("m0.safetensors", "m1.safetensors"),
        ),
        Case("align.out_is_a_nonempty_folder", "align", [*al, "stuff"], setup=both(members, stuff), owned=("stuff",)),
        Case(
            "distill.out_is_an_existing_file",
            "distill",
            [*di, "notes.txt"],
            setup=both(members, notes),
            owned=("notes.txt",),
        ),
        Case(
            "distill.out_is_the_teacher", "distill", [*di, "m0.safetensors"], setup=members, owned=("m0.safetensors",)
        ),
        Case(
            "distill.out_is_a_nonempty_folder", "distill", [*di, "stuff"], setup=both(members, stuff), owned=("stuff",)
        ),
        Case(
            "distill.checkpoint_dir_is_a_file",
            "distill",
            ["--teacher", "m0.safetensors", *DISTILL, "--checkpoint-dir", "notes.txt", "--out", "s.safetensors"],
            setup=both(members, notes),
            owned=("notes.txt",),
        ),
        Case(
            "evaluate.json_is_an_existing_file",
            "evaluate",
            ["test.safetensors", "--json", "notes.txt"],
            setup=both(preds, notes),
            owned=("notes.txt",),
        ),
        Case(
            "evaluate.json_is_the_input",
            "evaluate",
            ["test.safetensors", "--json", "test.safetensors"],
            setup=preds,
            owned=("test.safetensors",),
        ),
        Case(
            "evaluate.json_is_a_nonempty_folder",
            "evaluate",
            ["test.safetensors", "--json", "stuff"],
            setup=both(preds, stuff),
            owned=("stuff",),
        ),
    ]


def permission_cases() -> list[Case]:
    """Unwritable output folders (0o555) and unreadable inputs (0o000); run as `nobody` when we are root."""

    def inputs(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))
        copy(ctx.art.preds("val"), ctx.path("val.safetensors"))
        copy(ctx.art.preds("test"), ctx.path("test.safetensors"))
        for name in ("ft0", "ft1"):
            copy(ctx.art.hf / name, ctx.path(name))
        write(ctx.path("cfg.yaml"), "merge_method: linear\nmodels:\n" + yaml_list(["model: ft0", "model: ft1"]))
        ctx.path("ro_out").mkdir()
        copy(ctx.art.member("mlp_0"), ctx.path("noread_m.safetensors"))
        copy(ctx.art.preds("test"), ctx.path("noread_p.safetensors"))
        write(ctx.path("noread_cfg.yaml"), ctx.path("cfg.yaml").read_text())
        copy(ctx.art.hf / "ft1", ctx.path("ftx"))
        os.replace(ctx.path("ftx/model.safetensors"), ctx.path("ftx/noread_model.safetensors"))
        write(
            ctx.path("cfg_noread_model.yaml"),
            "merge_method: linear\nmodels:\n" + yaml_list(["model: ft0", "model: ftx/noread_model.safetensors"]),
        )

    ens = ["--val-preds", "val.safetensors", "--test-preds", "test.safetensors", "--method", "mean"]
    cases = [
        Case("predict.out_in_unwritable_folder", "predict", ["m0.safetensors", "--out", "ro_out/p.safetensors"]),
        Case("ensemble.out_in_unwritable_folder", "ensemble", [*ens, "--out", "ro_out/ens"]),
        Case(
            "demo.out_in_unwritable_folder",
            "demo",
            ["--epochs", "1", "--mlps", "1", "--no-progress", "--out", "ro_out/demo"],
        ),
        Case("merge.out_in_unwritable_folder", "merge", ["cfg.yaml", "ro_out/merged"]),
        Case(
            "align.out_in_unwritable_folder",
            "align",
            ["m0.safetensors", "m1.safetensors", "--out", "ro_out/a.safetensors"],
        ),
        Case(
            "distill.out_in_unwritable_folder",
            "distill",
            ["--teacher", "m0.safetensors", *DISTILL, "--out", "ro_out/s.safetensors"],
        ),
        Case("evaluate.json_in_unwritable_folder", "evaluate", ["test.safetensors", "--json", "ro_out/r.json"]),
        Case("predict.unreadable_member", "predict", ["noread_m.safetensors"]),
        Case("evaluate.unreadable_predictions", "evaluate", ["noread_p.safetensors"]),
        Case(
            "ensemble.unreadable_val_preds",
            "ensemble",
            ["--val-preds", "noread_p.safetensors", "--test-preds", "test.safetensors", "--out", "ens"],
        ),
        Case("merge.unreadable_config", "merge", ["noread_cfg.yaml", "merged"]),
        Case("merge.unreadable_model", "merge", ["cfg_noread_model.yaml", "merged"]),
        Case("distill.unreadable_teacher", "distill", ["--teacher", "noread_m.safetensors", *DISTILL]),
    ]
    for case in cases:
        case.setup = inputs
        case.as_nobody = True
        case.owned = ("m0.safetensors", "test.safetensors", "cfg.yaml")
    return cases


def predictions_cases() -> list[Case]:
    """Predictions files built by hand: bad labels, metadata, shapes; through evaluate, ensemble, distill."""

    def outputs(ctx: Ctx, fill=None, dtype=None) -> torch.Tensor:
        out, _ = split_tensors(ctx)
        if fill is not None:
            out[0, 0, 0] = fill
        return out.to(dtype) if dtype is not None else out

    variants: dict[str, tuple[str, Callable[[Ctx], dict]]] = {
        "labels_out_of_range": ("refuse", lambda ctx: {"labels": with_label(ctx, 0, 10)}),
        "labels_negative": ("refuse", lambda ctx: {"labels": with_label(ctx, 0, -1)}),
        "labels_huge": ("refuse", lambda ctx: {"labels": with_label(ctx, 0, 2**40)}),
        "labels_float": ("refuse", lambda ctx: {"labels": split_tensors(ctx)[1].float() + 0.5}),
        "labels_nan": ("refuse", lambda ctx: {"labels": split_tensors(ctx)[1].float() * float("nan")}),
        "labels_wrong_length": ("refuse", lambda ctx: {"labels": split_tensors(ctx)[1][:-7]}),
        "labels_2d": ("refuse", lambda ctx: {"labels": split_tensors(ctx)[1][:, None]}),
        "labels_missing": ("refuse", lambda ctx: {"labels": None}),
        "outputs_missing": ("refuse", lambda ctx: {"outputs": None}),
        "outputs_nan": ("refuse", lambda ctx: {"outputs": outputs(ctx, fill=float("nan"))}),
        "outputs_inf": ("refuse", lambda ctx: {"outputs": outputs(ctx, fill=float("inf"))}),
        "outputs_2d": ("refuse", lambda ctx: {"outputs": outputs(ctx)[0]}),
        "outputs_4d": ("refuse", lambda ctx: {"outputs": outputs(ctx)[..., None]}),
        "outputs_zero_samples": ("refuse", lambda ctx: {"outputs": torch.zeros(5, 0, 10), "labels": None}),
        "outputs_zero_members": ("refuse", lambda ctx: {"outputs": outputs(ctx)[:0]}),
        "outputs_one_class": ("refuse", lambda ctx: {"outputs": outputs(ctx)[..., :1]}),
        "outputs_float16": ("either", lambda ctx: {"outputs": outputs(ctx, dtype=torch.float16)}),
        "outputs_int8": ("either", lambda ctx: {"outputs": outputs(ctx, dtype=torch.int8)}),
        "outputs_bool": ("refuse", lambda ctx: {"outputs": outputs(ctx, dtype=torch.bool)}),
        "outputs_huge_finite": ("either", lambda ctx: {"outputs": outputs(ctx, fill=3e38)}),
    }
    meta_variants: dict[str, tuple[str, dict | None, str | None]] = {
        "duplicate_member_names": ("refuse", {"member_names": ["a", "a", "b", "c", "d"]}, None),
        "member_names_not_a_list": ("refuse", {"member_names": 5}, None),
        "member_names_not_strings": ("refuse", {"member_names": [1, 2, 3, 4, [5]]}, None),
        "member_names_count_mismatch": ("refuse", {"member_names": ["a", "b"]}, None),
        "task_unknown": ("refuse", {"task": "evil"}, None),
        "task_regression_3d": ("refuse", {"task": "regression"}, None),
        "split_is_a_list": ("refuse", {"split": ["test"]}, None),
        "classes_wrong_length": ("refuse", {"classes": [0, 1, 2]}, None),
        "classes_a_dict": ("refuse", {"classes": {"a": 1}}, None),
        "metadata_corrupt_json": ("refuse", None, '{"member_names": ["a", '),
        "metadata_is_a_list": ("refuse", None, "[1, 2, 3]"),
        "metadata_missing_member_names": ("refuse", None, '{"task": "classification", "split": "test"}'),
        "metadata_is_a_string": ("refuse", None, '"hello"'),
    }
    cases = []

    def tensor_setup(build: Callable[[Ctx], dict], ctx: Ctx, name: str = "p.safetensors", split="test") -> None:
        ctx.split = split
        predictions_file(ctx, name, split=split, **build(ctx))
        copy(ctx.art.preds("test" if split == "val" else "val"), ctx.path("other.safetensors"))

    def meta_setup(changes, raw, ctx: Ctx, name: str = "p.safetensors", split="test") -> None:
        predictions_file(ctx, name, split=split, meta_changes=changes, raw_meta=raw)
        copy(ctx.art.preds("test" if split == "val" else "val"), ctx.path("other.safetensors"))

    builders = {k: (must, functools.partial(tensor_setup, build)) for k, (must, build) in variants.items()}
    builders.update({k: (must, functools.partial(meta_setup, c, r)) for k, (must, c, r) in meta_variants.items()})
    for kind, (must, setup) in builders.items():
        cases.append(
            Case(
                f"evaluate.preds_{kind}",
                "evaluate",
                ["p.safetensors"],
                must=must,
                setup=setup,
                owned=("p.safetensors",),
            )
        )
    for kind in (
        "labels_out_of_range",
        "labels_negative",
        "duplicate_member_names",
        "metadata_corrupt_json",
        "classes_wrong_length",
        "outputs_nan",
    ):
        must, setup = builders[kind]
        cases.append(
            Case(
                f"ensemble.val_preds_{kind}",
                "ensemble",
                ["--val-preds", "p.safetensors", "--test-preds", "other.safetensors", "--out", "ens"],
                must=must,
                setup=functools.partial(setup, split="val"),
                owned=("p.safetensors",),
            )
        )
    for kind in ("labels_out_of_range", "labels_negative", "duplicate_member_names", "metadata_corrupt_json"):
        must, setup = builders[kind]
        cases.append(
            Case(
                f"distill.offline_{kind}",
                "distill",
                ["--offline", "p.safetensors", *DISTILL],
                must=must,
                setup=functools.partial(setup, split="train"),
                owned=("p.safetensors",),
            )
        )

    def mismatch(change: dict, ctx: Ctx) -> None:
        copy(ctx.art.preds("val"), ctx.path("val.safetensors"))
        predictions_file(ctx, "test.safetensors", meta_changes=change)

    def other_task_val(ctx: Ctx) -> None:
        copy(ctx.art.preds("val"), ctx.path("val.safetensors"))
        out, labels = split_tensors(ctx)
        predictions_file(
            ctx, "test.safetensors", outputs=out[:, :, :3], meta_changes={"classes": [0, 1, 2]}, labels=labels % 3
        )

    vt = ["--val-preds", "val.safetensors", "--test-preds", "test.safetensors", "--out", "ens"]
    cases += [
        Case(
            "ensemble.val_test_different_members",
            "ensemble",
            vt,
            setup=functools.partial(mismatch, {"member_names": ["v", "w", "x", "y", "z"]}),
        ),
        Case(
            "ensemble.val_test_different_class_order",
            "ensemble",
            vt,
            setup=functools.partial(mismatch, {"classes": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]}),
        ),
        Case("ensemble.val_test_different_class_count", "ensemble", vt, setup=other_task_val),
        Case(
            "ensemble.test_preds_given_as_val",
            "ensemble",
            ["--val-preds", "test.safetensors", "--test-preds", "test.safetensors", "--out", "ens"],
            setup=lambda ctx: copy(ctx.art.preds("test"), ctx.path("test.safetensors")),
        ),
        Case(
            "ensemble.val_preds_given_as_test",
            "ensemble",
            ["--val-preds", "val.safetensors", "--test-preds", "val.safetensors", "--out", "ens"],
            setup=lambda ctx: copy(ctx.art.preds("val"), ctx.path("val.safetensors")),
        ),
        Case(
            "distill.offline_preds_of_the_test_split",
            "distill",
            ["--offline", "test.safetensors", *DISTILL],
            setup=lambda ctx: copy(ctx.art.preds("test"), ctx.path("test.safetensors")),
        ),
    ]
    return cases


def checkpoint_metadata_cases() -> list[Case]:
    """Members whose JSON header is corrupt or has fields of the wrong type (predict)."""
    variants = {
        "corrupt_json": '{"name": "x", "factory": ',
        "json_list": "[1, 2]",
        "json_string": '"modelfusion.models:mlp"',
        "factory_kwargs_list": {"factory_kwargs": [64, 10]},
        "factory_kwargs_string": {"factory_kwargs": "hidden=128"},
        "factory_int": {"factory": 123},
        "factory_no_colon": {"factory": "modelfusion.models.mlp"},
        "factory_unknown_function": {"factory": "modelfusion.models:nope"},
        "factory_other_model": {"factory": "modelfusion.models:cnn2d", "factory_kwargs": {}},
        "factory_relative_import": {"factory": "modelfusion..models:mlp"},
        "name_list": {"name": ["a", "b"]},
        "name_dict": {"name": {"a": 1}},
        "classes_string": {"classes": "abcdefghij"},
        "classes_wrong_length": {"classes": [0, 1, 2]},
        "classes_dict": {"classes": {"a": 1}},
        "task_unknown": {"task": "evil"},
        "task_list": {"task": ["classification"]},
        "task_regression_for_a_classifier": {"task": "regression"},
        "num_outputs_string": {"num_outputs": "ten"},
        "num_outputs_wrong": {"num_outputs": 3},
    }
    cases = []
    for kind, change in variants.items():

        def setup(ctx: Ctx, change=change) -> None:
            member_with_meta(ctx, change if isinstance(change, str) else meta(ctx, **change), "m.safetensors")

        cases.append(
            Case(f"predict.member_{kind}", "predict", ["m.safetensors"], setup=setup, owned=("m.safetensors",))
        )
    cases.append(
        Case(
            "predict.member_no_metadata",
            "predict",
            ["m.safetensors"],
            setup=lambda ctx: member_with_meta(ctx, None, "m.safetensors"),
        )
    )
    cases.append(
        Case(
            "predict.member_wrong_shapes_for_its_factory",
            "predict",
            ["m.safetensors"],
            setup=lambda ctx: member_with_meta(ctx, meta(ctx, factory_kwargs=mlp_kwargs(hidden=[64])), "m.safetensors"),
        )
    )
    cases.append(
        Case(
            "predict.member_nan_weights",
            "predict",
            ["m.safetensors"],
            setup=lambda ctx: member_with_meta(
                ctx,
                meta(ctx),
                "m.safetensors",
                tensors={k: torch.full_like(v, float("nan")) for k, v in ctx.art.mlp_tensors[0].items()},
            ),
        )
    )
    return cases


def file_format_cases() -> list[Case]:
    """Empty, random, truncated files of every suffix; zip bombs; lying safetensors headers (predict)."""
    cases = []
    rng = random.Random(0)
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    for suffix in SUFFIXES:
        cases.append(
            Case(
                f"predict.empty{suffix}",
                "predict",
                [f"x{suffix}"],
                setup=lambda ctx, s=suffix: write(ctx.path(f"x{s}"), b""),
            )
        )
        cases.append(
            Case(
                f"predict.random_bytes{suffix}",
                "predict",
                [f"x{suffix}"],
                setup=lambda ctx, s=suffix: write(ctx.path(f"x{s}"), noise),
            )
        )

    def truncated(ctx: Ctx, suffix: str) -> None:
        sources = {
            ".safetensors": lambda: ctx.art.member("mlp_0").read_bytes(),
            ".pt": lambda: torch_bytes(ctx.art.mlp_tensors[0]),
            ".pt2": lambda: ctx.art.pt2,
            ".ts": lambda: ctx.art.torchscript,
            ".skops": lambda: ctx.art.member("logreg").read_bytes(),
        }
        data = sources[suffix]()
        write(ctx.path(f"x{suffix}"), data[: len(data) * 2 // 3])

    for suffix in (".safetensors", ".pt", ".pt2", ".ts", ".skops"):
        cases.append(
            Case(
                f"predict.truncated{suffix}",
                "predict",
                [f"x{suffix}", "--factory", "modelfusion.models:mlp", "--factory-kwargs", json.dumps(mlp_kwargs())],
                setup=functools.partial(truncated, suffix=suffix),
            )
        )
    pt_args = ["--factory", "modelfusion.models:mlp", "--factory-kwargs", json.dumps(mlp_kwargs())]
    cases += [
        Case(
            "predict.zip_bomb.pt",
            "predict",
            ["bomb.pt", *pt_args],
            setup=lambda ctx: copy(ctx.art.zip_bomb_pt, ctx.path("bomb.pt")),
        ),
        Case(
            "predict.zip_bomb_schema.skops",
            "predict",
            ["bomb.skops"],
            setup=lambda ctx: copy(ctx.art.zip_bomb_skops, ctx.path("bomb.skops")),
        ),
        Case(
            "predict.safetensors_header_length_2e62",
            "predict",
            ["x.safetensors"],
            setup=lambda ctx: raw_safetensors(ctx.path("x.safetensors"), {"a": 1}, length=2**62),
        ),
        Case(
            "predict.safetensors_header_length_beyond_file",
            "predict",
            ["x.safetensors"],
            setup=lambda ctx: raw_safetensors(ctx.path("x.safetensors"), {}, length=50 * 2**20),
        ),
        Case(
            "predict.safetensors_offsets_beyond_data",
            "predict",
            ["x.safetensors"],
            setup=lambda ctx: raw_safetensors(
                ctx.path("x.safetensors"),
                {"0.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}},
            ),
        ),
        Case(
            "predict.safetensors_1e6_tensors",
            "predict",
            ["x.safetensors"],
            setup=lambda ctx: copy(ctx.art.many_tensors, ctx.path("x.safetensors")),
        ),
        Case(
            "evaluate.safetensors_header_length_2e62",
            "evaluate",
            ["x.safetensors"],
            setup=lambda ctx: raw_safetensors(ctx.path("x.safetensors"), {"a": 1}, length=2**62),
        ),
        Case(
            "evaluate.safetensors_1e6_tensors",
            "evaluate",
            ["x.safetensors"],
            setup=lambda ctx: copy(ctx.art.many_tensors, ctx.path("x.safetensors")),
        ),
        Case("predict.missing_file", "predict", ["nope.safetensors"]),
        Case("predict.a_folder", "predict", ["folder"], setup=lambda ctx: ctx.path("folder").mkdir()),
        Case(
            "predict.unknown_suffix.onnx",
            "predict",
            ["x.onnx"],
            setup=lambda ctx: copy(ctx.art.member("mlp_0"), ctx.path("x.onnx")),
        ),
        Case("predict.no_suffix", "predict", ["x"], setup=lambda ctx: copy(ctx.art.member("mlp_0"), ctx.path("x"))),
        Case(
            "predict.a_predictions_file_as_member",
            "predict",
            ["p.safetensors"],
            setup=lambda ctx: copy(ctx.art.preds("test"), ctx.path("p.safetensors")),
        ),
        Case(
            "evaluate.a_member_as_predictions",
            "evaluate",
            ["m.safetensors"],
            setup=lambda ctx: copy(ctx.art.member("mlp_0"), ctx.path("m.safetensors")),
        ),
        Case(
            "predict.symlink_loop",
            "predict",
            ["loop.safetensors"],
            setup=lambda ctx: os.symlink("loop.safetensors", ctx.path("loop.safetensors")),
        ),
        Case(
            "predict.dev_zero_as_safetensors",
            "predict",
            ["zero.safetensors"],
            setup=lambda ctx: os.symlink("/dev/zero", ctx.path("zero.safetensors")),
            timeout=60,
        ),
    ]
    return cases


def data_and_option_cases() -> list[Case]:
    """Data of the wrong width, odd seeds, unknown names, duplicate member names."""

    def members(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))
        copy(ctx.art.member("logreg"), ctx.path("logreg.skops"))
        copy(ctx.art.member("cnn"), ctx.path("cnn.safetensors"))
        copy(ctx.art.preds("val"), ctx.path("val.safetensors"))
        copy(ctx.art.preds("test"), ctx.path("test.safetensors"))

    def copies(ctx: Ctx) -> None:
        for i in range(6):
            copy(ctx.art.member("mlp_0"), ctx.path(f"copy{i}.safetensors"))

    def same_stored_name(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("a.safetensors"))
        member_with_meta(ctx, meta(ctx), "b.safetensors", tensors=read_safetensors(ctx.art.member("mlp_1"))[0])

    m = ["m0.safetensors", "m1.safetensors"]
    vt = ["--val-preds", "val.safetensors", "--test-preds", "test.safetensors", "--method", "mean", "--out", "ens"]
    al = [*m, "--out", "a.safetensors"]
    di = ["--teacher", "m0.safetensors", *DISTILL]
    demo = ["--epochs", "1", "--mlps", "1", "--no-progress"]
    cases = [
        Case("predict.digits_members_on_breast_cancer", "predict", [*m, "--dataset", "breast_cancer"]),
        Case("predict.sklearn_member_on_breast_cancer", "predict", ["logreg.skops", "--dataset", "breast_cancer"]),
        Case("predict.cnn_on_wine", "predict", ["cnn.safetensors", "--dataset", "wine"]),
        Case(
            "ensemble.digits_members_on_breast_cancer",
            "ensemble",
            [*m, "--dataset", "breast_cancer", "--method", "mean", "--out", "ens"],
        ),
        Case("align.digits_members_on_breast_cancer", "align", [*al, "--dataset", "breast_cancer"]),
        Case("distill.digits_teacher_on_wine", "distill", [*di, "--dataset", "wine"]),
        Case("align.cnn_with_mlp", "align", ["cnn.safetensors", "m0.safetensors", "--out", "a.safetensors"]),
        Case("align.sklearn_member", "align", ["logreg.skops", "m0.safetensors", "--out", "a.safetensors"]),
        Case("align.samples_0", "align", [*al, "--samples", "0"]),
        Case("align.samples_negative", "align", [*al, "--samples", "-5"]),
        Case("align.unknown_method", "align", [*al, "--method", "nope"]),
        Case(
            "align.same_file_twice",
            "align",
            ["m0.safetensors", "m0.safetensors", "--out", "a.safetensors"],
            must="either",
            check=check_exists("a.safetensors"),
        ),
        Case("predict.unknown_dataset", "predict", [*m, "--dataset", "nope"]),
        Case("predict.unknown_split", "predict", [*m, "--split", "nope"]),
        Case("predict.unknown_task", "predict", [*m, "--task", "nope"]),
        Case("ensemble.unknown_method", "ensemble", [*vt, "--method", "nope"]),
        Case("ensemble.checkpoints_and_preds_both", "ensemble", [*m, *vt]),
        Case("ensemble.only_val_preds", "ensemble", ["--val-preds", "val.safetensors", "--out", "ens"]),
        Case("demo.unknown_dataset", "demo", [*demo, "--dataset", "nope", "--out", "d"]),
        Case("demo.epochs_0", "demo", ["--epochs", "0", "--mlps", "1", "--no-progress", "--out", "d"]),
        Case("demo.epochs_negative", "demo", ["--epochs", "-3", "--mlps", "1", "--no-progress", "--out", "d"]),
        Case(
            "demo.mlps_0",
            "demo",
            ["--epochs", "1", "--mlps", "0", "--no-progress", "--out", "d"],
            must="either",
            check=check_exists("d/results.json"),
        ),
        Case("demo.mlps_negative", "demo", ["--epochs", "1", "--mlps", "-2", "--no-progress", "--out", "d"]),
        Case(
            "predict.six_copies_of_one_member",
            "predict",
            [f"copy{i}.safetensors" for i in range(6)],
            must="either",
            setup=copies,
            check=check_unique_names("predictions.safetensors"),
        ),
        Case(
            "ensemble.six_copies_of_one_member",
            "ensemble",
            [*[f"copy{i}.safetensors" for i in range(6)], "--method", "mean", "--out", "ens"],
            must="either",
            setup=copies,
            check=check_exists("ens/results.json"),
        ),
        Case(
            "predict.two_members_one_stored_name",
            "predict",
            ["a.safetensors", "b.safetensors"],
            must="either",
            setup=same_stored_name,
            check=check_unique_names("predictions.safetensors"),
        ),
        Case(
            "predict.out_wrong_kind.pt",
            "predict",
            [*m, "--out", "p.pt"],
            must="either",
            check=check_suffix_matches("p.pt"),
        ),
        Case("predict.out_wrong_kind.json", "predict", [*m, "--out", "p.json"]),
        Case("predict.out_wrong_kind.skops", "predict", [*m, "--out", "p.skops"]),
        Case(
            "align.out_wrong_kind.pt", "align", [*m, "--out", "a.pt"], must="either", check=check_suffix_matches("a.pt")
        ),
        Case("align.out_wrong_kind.skops", "align", [*m, "--out", "a.skops"]),
        Case(
            "align.out_without_suffix", "align", [*m, "--out", "aligned"], must="either", check=check_exists("aligned")
        ),
        Case(
            "distill.out_wrong_kind.pt",
            "distill",
            [*di, "--out", "s.pt"],
            must="either",
            check=check_suffix_matches("s.pt"),
        ),
        Case("distill.out_wrong_kind.skops", "distill", [*di, "--out", "s.skops"]),
        Case("evaluate.json_wrong_kind.safetensors", "evaluate", ["test.safetensors", "--json", "r.safetensors"]),
        Case("ensemble.out_wrong_kind.safetensors", "ensemble", [*vt[:-1], "ens.safetensors"]),
    ]
    seeds = {"seed_negative": "-1", "seed_huge": "99999999999999999999"}
    for kind, seed in seeds.items():
        cases += [
            Case(
                f"demo.{kind}",
                "demo",
                [*demo, "--seed", seed, "--out", "d"],
                must="either",
                check=check_exists("d/results.json"),
            ),
            Case(
                f"predict.{kind}",
                "predict",
                [*m, "--seed", seed],
                must="either",
                check=check_exists("predictions.safetensors"),
            ),
            Case(
                f"ensemble.{kind}",
                "ensemble",
                [*vt, "--seed", seed],
                must="either",
                check=check_exists("ens/results.json"),
            ),
            Case(f"evaluate.{kind}", "evaluate", ["test.safetensors", "--seed", seed], must="either"),
            Case(f"align.{kind}", "align", [*al, "--seed", seed], must="either", check=check_exists("a.safetensors")),
            Case(
                f"distill.{kind}",
                "distill",
                [*di, "--seed", seed],
                must="either",
                check=check_exists("student.safetensors"),
            ),
        ]
    for case in cases:
        if case.setup is None:
            case.setup = members
        case.owned = case.owned or ("m0.safetensors", "m1.safetensors", "val.safetensors", "test.safetensors")
    return cases


def distill_cases() -> list[Case]:
    """Bad training options, resuming from a checkpoint of another run, hostile combiners."""

    def teacher(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))
        copy(ctx.art.train_preds, ctx.path("train.safetensors"))

    def with_checkpoint(ctx: Ctx, content: bytes | None = None) -> None:
        teacher(ctx)
        copy(ctx.art.distill_checkpoint, ctx.path("ckpt"))
        if content is not None:
            write(ctx.path("ckpt/distill_checkpoint.pt"), content)

    def payload_checkpoint(ctx: Ctx) -> None:
        with_checkpoint(ctx, torch_bytes(_Payload(ctx.marker)))

    di = ["--teacher", "m0.safetensors", *STUDENT, "--no-progress"]
    one = [*di, "--epochs", "1"]
    resume = ["--teacher", "m0.safetensors", "--no-progress", "--epochs", "2", "--checkpoint-dir", "ckpt", "--resume"]
    other_student = [
        "--student",
        "modelfusion.models:mlp",
        "--student-kwargs",
        json.dumps({**STUDENT_KWARGS, "hidden": [16]}),
    ]
    cases = [
        Case("distill.batch_size_0", "distill", [*one, "--batch-size", "0"]),
        Case("distill.batch_size_negative", "distill", [*one, "--batch-size", "-4"]),
        Case("distill.epochs_0", "distill", [*di, "--epochs", "0"]),
        Case("distill.epochs_negative", "distill", [*di, "--epochs", "-1"]),
        Case("distill.lr_1e6_diverges", "distill", [*di, "--epochs", "3", "--lr", "1e6"]),
        Case("distill.lr_negative", "distill", [*one, "--lr", "-1"]),
        Case("distill.lr_nan", "distill", [*one, "--lr", "nan"]),
        Case("distill.temperature_0", "distill", [*one, "--temperature", "0"]),
        Case("distill.temperature_negative", "distill", [*one, "--temperature", "-2"]),
        Case("distill.alpha_nan", "distill", [*one, "--alpha", "nan"]),
        Case("distill.mixup_negative", "distill", [*one, "--mixup", "-1"]),
        Case("distill.patience_negative", "distill", [*one, "--patience", "-1"]),
        Case("distill.unknown_loss", "distill", [*one, "--loss", "nope"]),
        Case("distill.weights_count_mismatch", "distill", [*one, "--weights", "1,2,3"]),
        Case("distill.weights_nan", "distill", [*one, "--weights", "nan"]),
        Case("distill.weights_negative", "distill", [*one, "--weights", "-1"]),
        Case("distill.weights_not_numbers", "distill", [*one, "--weights", "a,b"]),
        Case("distill.hint_without_equals", "distill", [*one, "--hint", "0"]),
        Case("distill.hint_unknown_module", "distill", [*one, "--hint", "nope=0"]),
        Case(
            "distill.student_kwargs_invalid_json",
            "distill",
            [
                "--teacher",
                "m0.safetensors",
                "--student",
                "modelfusion.models:mlp",
                "--student-kwargs",
                "{hidden",
                "--epochs",
                "1",
                "--no-progress",
            ],
        ),
        Case(
            "distill.student_kwargs_a_list",
            "distill",
            [
                "--teacher",
                "m0.safetensors",
                "--student",
                "modelfusion.models:mlp",
                "--student-kwargs",
                "[64, 10]",
                "--epochs",
                "1",
                "--no-progress",
            ],
        ),
        Case(
            "distill.student_wrong_output_width",
            "distill",
            [
                "--teacher",
                "m0.safetensors",
                "--student",
                "modelfusion.models:mlp",
                "--student-kwargs",
                json.dumps({**STUDENT_KWARGS, "num_outputs": 3}),
                "--epochs",
                "1",
                "--no-progress",
            ],
        ),
        Case(
            "distill.student_unknown_factory",
            "distill",
            ["--teacher", "m0.safetensors", "--student", "modelfusion.models:nope", "--epochs", "1", "--no-progress"],
        ),
        Case("distill.teacher_and_offline", "distill", [*one, "--offline", "train.safetensors"]),
        Case("distill.offline_with_mixup", "distill", ["--offline", "train.safetensors", *DISTILL, "--mixup", "0.4"]),
        Case("distill.offline_with_hint", "distill", ["--offline", "train.safetensors", *DISTILL, "--hint", "0=0"]),
        Case("distill.resume_without_checkpoint", "distill", [*STUDENT, *resume]),
        Case("distill.resume_other_student", "distill", [*other_student, *resume], setup=with_checkpoint),
        Case("distill.resume_other_seed", "distill", [*STUDENT, *resume, "--seed", "5"], setup=with_checkpoint),
        Case("distill.resume_other_lr", "distill", [*STUDENT, *resume, "--lr", "0.1"], setup=with_checkpoint),
        Case(
            "distill.resume_other_teacher",
            "distill",
            [*STUDENT, *resume[:1], "m1.safetensors", *resume[2:]],
            setup=lambda ctx: (with_checkpoint(ctx), copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))),
        ),
        Case(
            "distill.resume_corrupt_checkpoint",
            "distill",
            [*STUDENT, *resume],
            setup=functools.partial(with_checkpoint, content=b"\x80\x02garbage" * 100),
        ),
        Case(
            "distill.resume_payload_checkpoint", "distill", [*STUDENT, *resume], setup=payload_checkpoint, attack=True
        ),
        Case(
            "distill.resume_empty_checkpoint",
            "distill",
            [*STUDENT, *resume],
            setup=functools.partial(with_checkpoint, content=b""),
        ),
        Case(
            "distill.resume_state_dict_not_a_checkpoint",
            "distill",
            [*STUDENT, *resume],
            setup=lambda ctx: with_checkpoint(ctx, torch_bytes(ctx.art.mlp_tensors[0])),
        ),
    ]

    def combiner(change, ctx: Ctx, raw=None, tensors=None) -> None:
        teacher(ctx)
        combiner_file(ctx, change=change, raw=raw, tensors=tensors)

    def skops_blob(ctx: Ctx) -> None:
        teacher(ctx)
        evil_skops(ctx, module="os", cls="system", loader="FunctionNode")
        blob = torch.frombuffer(bytearray(ctx.path("evil.skops").read_bytes()), dtype=torch.uint8)
        combiner_file(ctx, change=lambda d: d["fitted"].update(extra_={"skops": "blob"}), tensors={"blob": blob})

    def set_key(path: tuple, value):
        def change(description: dict) -> None:
            target = description
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        return change

    offline = ["--offline", "train.safetensors", *DISTILL, "--combiner", "evil_combiner.safetensors"]
    combiners = {
        "unknown_name": ("refuse", set_key(("name",), "nope"), False),
        "unknown_param": ("refuse", set_key(("params", "evil"), {"json": 1}), False),
        "param_wrong_type": ("refuse", set_key(("params", "normalize"), {"json": "yes"}), False),
        "fitted_overrides_a_method": ("refuse", set_key(("fitted", "fuse"), {"json": 1}), False),
        "tensor_key_missing": ("refuse", set_key(("fitted", "weights_"), {"tensor": "nope"}), False),
        "weights_nan": ("refuse", None, False),
        "description_not_a_dict": ("refuse", set_key(("fitted",), [1, 2]), False),
        "other_members": ("refuse", set_key(("fitted", "member_names_"), {"json": ["x"]}), False),
    }
    for kind, (must, change, attack) in combiners.items():
        setup = functools.partial(combiner, change)
        if kind == "weights_nan":
            setup = functools.partial(combiner, None, tensors={"weights_": torch.full((5,), float("nan"))})
        cases.append(Case(f"distill.combiner_{kind}", "distill", offline, must=must, setup=setup, attack=attack))
    cases += [
        Case(
            "distill.combiner_corrupt_json",
            "distill",
            offline,
            setup=functools.partial(combiner, None, raw='{"name": "weighted", '),
        ),
        Case("distill.combiner_skops_blob_os_system", "distill", offline, setup=skops_blob, attack=True),
        Case(
            "distill.combiner_is_a_member_file",
            "distill",
            ["--offline", "train.safetensors", *DISTILL, "--combiner", "m0.safetensors"],
            setup=teacher,
        ),
    ]
    for case in cases:
        if case.setup is None:
            case.setup = teacher
        case.owned = ("m0.safetensors", "train.safetensors")
    return cases


# Merge configs over the toy Hugging Face folders base/, ft0/ and ft1/ (shared by several families).


def hf_models(ctx: Ctx) -> None:
    for name in ("base", "ft0", "ft1"):
        copy(ctx.art.hf / name, ctx.path(name))


def hf_with_yaml(text: str, ctx: Ctx) -> None:
    """The toy folders and `text` as cfg.yaml beside them."""
    hf_models(ctx)
    write(ctx.path("cfg.yaml"), text)


def linear_yaml(params: str = "", top: str = "") -> str:
    entries = [f"{{model: ft0{params}}}", f"{{model: ft1{params}}}"]
    return "merge_method: linear\nmodels:\n" + yaml_list(entries) + "\n" + top


def ties_yaml(params: str = "weight: 1.0, density: 0.5", top: str = "") -> str:
    entries = [f"{{model: ft0, parameters: {{{params}}}}}", f"{{model: ft1, parameters: {{{params}}}}}"]
    return "merge_method: ties\nbase_model: base\nmodels:\n" + yaml_list(entries) + "\n" + top


def slerp_yaml(t: str, method: str = "slerp") -> str:
    return f"merge_method: {method}\nbase_model: base\nmodels:\n  - model: ft0\nparameters: {{t: {t}}}\n"


def merge_config_cases() -> list[Case]:
    """Merge configs: bad values, bad YAML, alias bombs, zero-size tensors, shard indexes and symlinks that leave
    the model folder."""

    billion_laughs = "\n".join(
        ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    )
    texts = {
        "weight_string_13": ("refuse", linear_yaml(", parameters: {weight: '13'}")),
        "weight_nan": ("refuse", linear_yaml(", parameters: {weight: .nan}")),
        "weight_inf": ("refuse", linear_yaml(", parameters: {weight: .inf}")),
        "weight_1e400": ("refuse", linear_yaml(", parameters: {weight: 1e400}")),
        "weight_negative_sum_zero": (
            "refuse",
            "merge_method: linear\nmodels:\n"
            + yaml_list(["{model: ft0, parameters: {weight: 1}}", "{model: ft1, parameters: {weight: -1}}"])
            + "\n",
        ),
        "weight_bool": ("refuse", linear_yaml(", parameters: {weight: true}")),
        "weight_list": ("refuse", linear_yaml(", parameters: {weight: [1, 2]}")),
        "typo_in_top_level_parameters": ("refuse", ties_yaml(top="parameters: {normalise: true}\n")),
        "unknown_top_level_parameter": ("refuse", linear_yaml(top="parameters: {evil: 1}\n")),
        "typo_in_top_level_key": ("refuse", ties_yaml() + "base_modle: base\n"),
        "unknown_per_model_parameter": ("refuse", ties_yaml("weight: 1.0, density: 0.5, gamma: 0.1")),
        "slerp_t_half_as_word": ("refuse", slerp_yaml("half")),
        "slerp_t_nan": ("refuse", slerp_yaml(".nan")),
        "slerp_t_2": ("either", slerp_yaml("2")),
        "ties_density_2": ("refuse", ties_yaml("weight: 1.0, density: 2")),
        "ties_density_negative": ("refuse", ties_yaml("weight: 1.0, density: -0.5")),
        "ties_density_string": ("refuse", ties_yaml("weight: 1.0, density: half")),
        "unknown_merge_method": ("refuse", "merge_method: nope\nmodels:\n  - model: ft0\n"),
        "merge_method_a_list": ("refuse", "merge_method: [linear]\nmodels:\n  - model: ft0\n"),
        "no_models": ("refuse", "merge_method: linear\nmodels: []\n"),
        "models_not_a_list": ("refuse", "merge_method: linear\nmodels: ft0\n"),
        "model_missing": ("refuse", "merge_method: linear\nmodels:\n  - model: nope\n  - model: ft0\n"),
        "model_is_an_empty_folder": ("refuse", "merge_method: linear\nmodels:\n  - model: base\n  - model: empty\n"),
        "model_path_absolute_etc": ("refuse", "merge_method: linear\nmodels:\n  - model: /etc\n  - model: ft0\n"),
        "shard_size_zero": ("either", linear_yaml(top="shard_size: 0\n")),
        "shard_size_negative": ("refuse", linear_yaml(top="shard_size: -5\n")),
        "shard_size_words": ("refuse", linear_yaml(top="shard_size: lots\n")),
        "dtype_unknown": ("refuse", linear_yaml(top="dtype: float8\n")),
        "random_seed_negative": ("either", ties_yaml(top="random_seed: -1\n").replace("ties", "dare_ties")),
        "random_seed_huge": (
            "either",
            ties_yaml(top="random_seed: 99999999999999999999\n").replace("ties", "dare_ties"),
        ),
        "yaml_is_a_list": ("refuse", "- merge_method: linear\n- models: []\n"),
        "yaml_is_a_scalar": ("refuse", "linear\n"),
        "yaml_is_empty": ("refuse", ""),
        "yaml_invalid": ("refuse", "merge_method: linear\nmodels: [\n"),
        "yaml_binary_garbage": ("refuse", "\x00\x01\x02\xff"),
        "yaml_python_tag": ("refuse", "merge_method: !!python/object/apply:os.system ['touch {marker}']\n"),
        "yaml_alias_bomb_in_parameters": ("refuse", billion_laughs + "\n" + linear_yaml(top="parameters: {x: *a8}\n")),
        "yaml_alias_bomb_in_models": ("refuse", billion_laughs + "\nmerge_method: linear\nmodels: *a8\n"),
        "yaml_alias_bomb_as_unknown_key": ("refuse", billion_laughs + "\n" + linear_yaml()),
        "yaml_alias_bomb_in_base_model": (
            "refuse",
            billion_laughs + "\n" + ties_yaml().replace("base_model: base", "base_model: *a8"),
        ),
        "align_on_hf_folders": ("refuse", linear_yaml(top="align: {method: weight_matching}\n")),
        "align_unknown_dataset": ("refuse", linear_yaml(top="align: {dataset: nope}\n")),
        "slices": ("refuse", "merge_method: linear\nslices:\n  - sources: []\n"),
    }
    cases = []
    for kind, (must, text) in texts.items():

        def setup(ctx: Ctx, text=text) -> None:
            hf_with_yaml(text.replace("{marker}", str(ctx.marker)), ctx)
            ctx.path("empty").mkdir()

        check = check_finite_merge("merged") if must == "either" else None
        attack = kind == "yaml_python_tag"
        cases.append(
            Case(
                f"merge.config_{kind}",
                "merge",
                ["cfg.yaml", "merged"],
                must=must,
                setup=setup,
                check=check,
                attack=attack,
                owned=("cfg.yaml", "base", "ft0", "ft1"),
            )
        )

    def huge_yaml(ctx: Ctx) -> None:
        hf_models(ctx)
        entries = "".join(f"  - {{model: ft{i % 2}, parameters: {{weight: {i}}}}}\n" for i in range(400_000))
        write(ctx.path("cfg.yaml"), "merge_method: linear\nmodels:\n" + entries)

    def zero_size(method: str, ctx: Ctx) -> None:
        generator = torch.Generator().manual_seed(1)
        for name in ("zb", "z0", "z1"):
            tensors = {
                "empty": torch.zeros(0),
                "empty2d": torch.zeros(0, 8),
                "w": torch.randn(8, 8, generator=generator),
            }
            ctx.path(name).mkdir()
            save_file(tensors, str(ctx.path(f"{name}/model.safetensors")))
        base = "base_model: zb\n" if method != "linear" else ""
        models = (
            ["model: z0"]
            if method == "slerp"
            else [
                "{model: z0, parameters: {weight: 1.0, density: 0.5}}",
                "{model: z1, parameters: {weight: 1.0, density: 0.5}}",
            ]
        )
        if method in ("linear", "model_stock"):
            models = ["model: z0", "model: z1"]
        params = "parameters: {t: 0.5}\n" if method == "slerp" else ""
        write(ctx.path("cfg.yaml"), f"merge_method: {method}\n{base}models:\n{yaml_list(models)}\n{params}")

    def outside_shard(ctx: Ctx, absolute: bool = False) -> None:
        hf_models(ctx)
        tensors, _ = read_safetensors(ctx.art.hf / "ft1" / "model.safetensors")
        save_file(tensors, str(ctx.path("outside.safetensors")))
        ctx.path("ft1/model.safetensors").unlink()
        target = str(ctx.path("outside.safetensors")) if absolute else "../outside.safetensors"
        index = {"metadata": {}, "weight_map": {k: target for k in tensors}}
        write(ctx.path("ft1/model.safetensors.index.json"), json.dumps(index))
        write(ctx.path("cfg.yaml"), linear_yaml())

    def bad_index(content: str, ctx: Ctx) -> None:
        hf_models(ctx)
        ctx.path("ft1/model.safetensors").unlink()
        write(ctx.path("ft1/model.safetensors.index.json"), content)
        write(ctx.path("cfg.yaml"), linear_yaml())

    def symlinked_config(ctx: Ctx) -> None:
        hf_models(ctx)
        write(ctx.path("secret.json"), '{"api_key": "SECRET-7f3a"}\n')
        ctx.path("base/config.json").unlink()
        os.symlink(ctx.path("secret.json"), ctx.path("base/config.json"))
        write(ctx.path("cfg.yaml"), ties_yaml())

    def symlinked_tokenizer(ctx: Ctx) -> None:
        hf_models(ctx)
        write(ctx.path("secret.txt"), "SECRET-7f3a\n")
        os.symlink("../secret.txt", ctx.path("base/tokenizer.txt"))
        write(ctx.path("cfg.yaml"), ties_yaml())

    def symlinked_weights(ctx: Ctx) -> None:
        hf_models(ctx)
        os.replace(ctx.path("ft1/model.safetensors"), ctx.path("elsewhere.safetensors"))
        os.symlink(ctx.path("elsewhere.safetensors"), ctx.path("ft1/model.safetensors"))
        write(ctx.path("cfg.yaml"), linear_yaml())

    def many_tensors_model(ctx: Ctx) -> None:
        for name in ("m0", "m1"):
            ctx.path(name).mkdir()
            copy(ctx.art.many_tensors, ctx.path(f"{name}/model.safetensors"))
        write(ctx.path("cfg.yaml"), "merge_method: linear\nmodels:\n  - model: m0\n  - model: m1\n")

    def header_2e62(ctx: Ctx) -> None:
        hf_models(ctx)
        raw_safetensors(ctx.path("ft1/model.safetensors"), {"a": 1}, length=2**62)
        write(ctx.path("cfg.yaml"), linear_yaml())

    def truncated_model(ctx: Ctx) -> None:
        hf_models(ctx)
        data = ctx.path("ft1/model.safetensors").read_bytes()
        write(ctx.path("ft1/model.safetensors"), data[: len(data) * 2 // 3])
        write(ctx.path("cfg.yaml"), linear_yaml())

    owned = ("cfg.yaml", "base", "ft0", "ft1")
    cases += [
        Case("merge.config_huge_yaml_20MB", "merge", ["cfg.yaml", "merged"], setup=huge_yaml, owned=owned),
        Case(
            "merge.shard_index_points_outside_folder", "merge", ["cfg.yaml", "merged"], setup=outside_shard, owned=owned
        ),
        Case(
            "merge.shard_index_absolute_path",
            "merge",
            ["cfg.yaml", "merged"],
            setup=functools.partial(outside_shard, absolute=True),
            owned=owned,
        ),
        Case(
            "merge.shard_index_corrupt_json",
            "merge",
            ["cfg.yaml", "merged"],
            setup=functools.partial(bad_index, '{"weight_map": '),
            owned=owned,
        ),
        Case(
            "merge.shard_index_weight_map_a_list",
            "merge",
            ["cfg.yaml", "merged"],
            setup=functools.partial(bad_index, '{"weight_map": ["a"]}'),
            owned=owned,
        ),
        Case(
            "merge.shard_index_missing_shard",
            "merge",
            ["cfg.yaml", "merged"],
            setup=functools.partial(bad_index, '{"weight_map": {"layer.weight": "nope.safetensors"}}'),
            owned=owned,
        ),
        Case(
            "merge.base_config_json_symlink_outside",
            "merge",
            ["cfg.yaml", "merged"],
            must="either",
            setup=symlinked_config,
            check=check_no_leak("merged/config.json", "SECRET-7f3a"),
            owned=(*owned, "secret.json"),
        ),
        Case(
            "merge.base_tokenizer_symlink_outside",
            "merge",
            ["cfg.yaml", "merged"],
            must="either",
            setup=symlinked_tokenizer,
            check=check_no_leak("merged/tokenizer.txt", "SECRET-7f3a"),
            owned=(*owned, "secret.txt"),
        ),
        Case(
            "merge.model_weights_symlink_outside",
            "merge",
            ["cfg.yaml", "merged"],
            must="either",
            setup=symlinked_weights,
            check=check_finite_merge("merged"),
            owned=("cfg.yaml", "elsewhere.safetensors"),
        ),
        Case(
            "merge.model_with_1e6_tensors",
            "merge",
            ["cfg.yaml", "merged"],
            must="either",
            setup=many_tensors_model,
            check=check_complete_merge("merged"),
        ),
        Case("merge.model_header_length_2e62", "merge", ["cfg.yaml", "merged"], setup=header_2e62, owned=owned),
        Case("merge.model_truncated", "merge", ["cfg.yaml", "merged"], setup=truncated_model, owned=owned),
        Case("merge.missing_config", "merge", ["nope.yaml", "merged"]),
        Case("merge.config_is_a_folder", "merge", ["ft0", "merged"], setup=hf_models),
    ]
    for method in ("linear", "ties", "slerp", "model_stock", "dare_ties", "breadcrumbs", "task_arithmetic"):
        cases.append(
            Case(
                f"merge.zero_size_tensors_{method}",
                "merge",
                ["cfg.yaml", "merged"],
                must="either",
                setup=functools.partial(zero_size, method),
                check=check_complete_merge("merged"),
                owned=("cfg.yaml", "z0", "z1", "zb"),
            )
        )
    return cases


def big_config(ctx: Ctx) -> None:
    """cfg.yaml: a ties merge of the three 200 MB checkpoints, in 20 MB shards."""
    big = ctx.art.big
    write(
        ctx.path("cfg.yaml"),
        f"merge_method: ties\nbase_model: {big / 'base'}\nmodels:\n"
        + yaml_list(
            [
                f"{{model: {big / 'm0'}, parameters: {{weight: 1.0, density: 0.5}}}}",
                f"{{model: {big / 'm1'}, parameters: {{weight: 1.0, density: 0.5}}}}",
            ]
        )
        + "\nshard_size: 20MB\n",
    )


def interrupt_cases() -> list[Case]:
    """Merges of 3 x 200 MB stopped by a signal; a rerun beside the debris; two merges into one folder."""

    def with_earlier_output(ctx: Ctx) -> None:
        big_config(ctx)
        copy(ctx.art.hf / "base", ctx.path("merged"))

    cases = []
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
        name = sig.name.lower()
        cases += [
            Case(
                f"merge.interrupted_by_{name}",
                "merge",
                ["cfg.yaml", "merged"],
                must="either",
                setup=big_config,
                runner="signal",
                signal=sig,
                owned=("cfg.yaml",),
            ),
            Case(
                f"merge.interrupted_by_{name}_over_earlier_output",
                "merge",
                ["cfg.yaml", "merged"],
                must="either",
                setup=with_earlier_output,
                runner="signal",
                signal=sig,
                owned=("cfg.yaml", "merged"),
            ),
            Case(
                f"merge.rerun_after_{name}",
                "merge",
                ["cfg.yaml", "merged"],
                must="succeed",
                setup=big_config,
                runner="signal_rerun",
                signal=sig,
                check=check_complete_merge("merged"),
                owned=("cfg.yaml",),
            ),
        ]
    cases.append(
        Case(
            "merge.two_merges_into_one_folder",
            "merge",
            ["cfg.yaml", "merged"],
            setup=big_config,
            runner="concurrent",
            owned=("cfg.yaml",),
        )
    )
    return cases


def api_cases() -> list[Case]:
    """A few Python API calls on hostile inputs (a ModelFusionError counts as a clear refusal)."""

    def member_attack(ctx: Ctx) -> None:
        evil_meta_write_json(ctx)

    def pt2_attack(ctx: Ctx) -> None:
        evil_pt2_sample_inputs(ctx)

    def traversal(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("outside/m0.safetensors"))
        copy(ctx.art.combiner("mean"), ctx.path("ens/combiner.safetensors"))
        manifest = {
            "task": "classification",
            "members": [{"name": "mlp_0", "file": "../outside/m0.safetensors"}],
            "combiner": "combiner.safetensors",
        }
        write(ctx.path("ens/ensemble.json"), json.dumps(manifest))

    def inputs_folder(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("proj/a.safetensors"))
        copy(ctx.art.member("mlp_1"), ctx.path("proj/b.safetensors"))

    def corrupt_preds(ctx: Ctx) -> None:
        predictions_file(ctx, "p.safetensors", raw_meta='{"member_names": ')

    def combiner_kwarg(ctx: Ctx) -> None:
        combiner_file(ctx, change=lambda d: d["params"].update(evil={"json": 1}))

    load_member = "from modelfusion.io import load_member"
    return [
        Case(
            "api.load_member_metadata_write_json",
            "api",
            api(load_member, "load_member('evil.safetensors')"),
            setup=member_attack,
            attack=True,
            markers=("written.json",),
        ),
        Case(
            "api.load_model_pt2_payload",
            "api",
            api("from modelfusion.io import load_model", "load_model('evil.pt2')"),
            setup=pt2_attack,
            attack=True,
        ),
        Case(
            "api.ensemble_module_load_path_traversal",
            "api",
            api("from modelfusion.ensemble import EnsembleModule", "EnsembleModule.load('ens')"),
            setup=traversal,
        ),
        Case(
            "api.merge_checkpoints_into_the_inputs_folder",
            "api",
            api(
                "from modelfusion.merge import merge_checkpoints",
                "merge_checkpoints(['proj/a.safetensors', 'proj/b.safetensors'], 'proj', 'linear', progress=False)",
            ),
            setup=inputs_folder,
            owned=("proj",),
        ),
        Case(
            "api.merge_state_dicts_nan_weight",
            "api",
            api(
                "import torch",
                "from modelfusion.merge import merge_state_dicts",
                "sd = {'w': torch.ones(3)}",
                "merge_state_dicts([sd, sd], method='linear', weight=[float('nan'), 1.0])",
            ),
        ),
        Case(
            "api.merge_state_dicts_unknown_param",
            "api",
            api(
                "import torch",
                "from modelfusion.merge import merge_state_dicts",
                "sd = {'w': torch.ones(3)}",
                "merge_state_dicts([sd, sd], method='linear', normalise=True)",
            ),
        ),
        Case(
            "api.predictions_load_corrupt_metadata",
            "api",
            api("from modelfusion.predictions import Predictions", "Predictions.load('p.safetensors')"),
            setup=corrupt_preds,
        ),
        Case(
            "api.load_combiner_unknown_param",
            "api",
            api("from modelfusion.ensemble import load_combiner", "load_combiner('evil_combiner.safetensors')"),
            setup=combiner_kwarg,
        ),
        Case(
            "api.align_checkpoints_out_is_an_input",
            "api",
            api(
                "from modelfusion.align import align_checkpoints",
                "from modelfusion.datasets import load_dataset",
                "X = load_dataset('digits').train.X[:256]",
                "align_checkpoints(['proj/a.safetensors', 'proj/b.safetensors'], [None, 'proj/a.safetensors'], X)",
            ),
            setup=inputs_folder,
            owned=("proj",),
        ),
        Case(
            "api.save_member_over_an_input",
            "api",
            api(
                load_member,
                "from modelfusion.io import save_member",
                "save_member(load_member('proj/b.safetensors'), 'proj/a.safetensors')",
            ),
            setup=inputs_folder,
            owned=("proj",),
        ),
    ]


def control_cases() -> list[Case]:
    """Valid inputs that must work: if one fails, the harness (or the build) is broken."""

    def inputs(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))
        copy(ctx.art.preds("val"), ctx.path("val.safetensors"))
        copy(ctx.art.preds("test"), ctx.path("test.safetensors"))
        copy(ctx.art.train_preds, ctx.path("train.safetensors"))
        copy(ctx.art.combiner("weighted"), ctx.path("weighted.safetensors"))
        for name in ("base", "ft0", "ft1"):
            copy(ctx.art.hf / name, ctx.path(name))
        write(ctx.path("cfg.yaml"), "merge_method: linear\nmodels:\n" + yaml_list(["model: ft0", "model: ft1"]))

    def resume_setup(ctx: Ctx) -> None:
        inputs(ctx)
        copy(ctx.art.distill_checkpoint, ctx.path("ckpt"))

    cases = [
        Case(
            "demo.control",
            "demo",
            ["--epochs", "1", "--mlps", "1", "--no-progress", "--out", "d"],
            check=check_exists("d/results.json"),
        ),
        Case(
            "predict.control",
            "predict",
            ["m0.safetensors", "m1.safetensors"],
            check=check_exists("predictions.safetensors"),
        ),
        Case(
            "ensemble.control",
            "ensemble",
            ["--val-preds", "val.safetensors", "--test-preds", "test.safetensors", "--method", "mean", "--out", "ens"],
            check=check_exists("ens/results.json"),
        ),
        Case(
            "ensemble.control_checkpoints",
            "ensemble",
            ["m0.safetensors", "m1.safetensors", "--method", "weighted", "--out", "ens"],
            check=check_exists("ens/results.json"),
        ),
        Case("evaluate.control", "evaluate", ["test.safetensors", "--json", "r.json"], check=check_exists("r.json")),
        Case("merge.control", "merge", ["cfg.yaml", "merged"], check=check_complete_merge("merged")),
        Case(
            "align.control",
            "align",
            ["m0.safetensors", "m1.safetensors", "--out", "a.safetensors"],
            check=check_exists("a.safetensors"),
        ),
        Case(
            "distill.control",
            "distill",
            ["--teacher", "m0.safetensors", *DISTILL],
            check=check_exists("student.safetensors"),
        ),
        Case(
            "distill.control_offline_combiner",
            "distill",
            ["--offline", "train.safetensors", *DISTILL, "--combiner", "weighted.safetensors"],
            check=check_exists("student.safetensors"),
        ),
        Case(
            "distill.control_resume",
            "distill",
            [
                "--teacher",
                "m0.safetensors",
                *STUDENT,
                "--no-progress",
                "--epochs",
                "2",
                "--checkpoint-dir",
                "ckpt",
                "--resume",
            ],
            setup=resume_setup,
            check=check_exists("student.safetensors"),
        ),
    ]
    for case in cases:
        case.must = "succeed"
        case.setup = case.setup or inputs
        case.owned = ("m0.safetensors", "m1.safetensors", "val.safetensors", "test.safetensors", "cfg.yaml", "ft0")
    return cases


# -- issue 23: callables in skops trees, names as paths, bombs, special files, terminal text, silent accepts,
# ONNX debris and closed streams. Each case names its family; the summary counts outcomes per family.

SKOPS_CALLABLES = "skops callables"
NAMES_AS_PATHS = "names as paths"
BOMBS = "allocation and time bombs"
SPECIAL_FILES = "special files"
TERMINAL_TEXT = "markup and control codes"
SILENT_ACCEPTS = "silently accepted"
ONNX_DEBRIS = "ONNX debris"
CLOSED_STREAMS = "closed stdout"
CONTROL_CODES = ("\x1b", "\x07", "\r", "\u202e")


def hostile_builders():
    """The builders tests/hostile_files.py shares with the security tests (skops writer, ONNX and factory bombs)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import hostile_files

    return hostile_files


def check_no_control_codes(*outputs: str, shown: str | None = None) -> Callable[[Ctx], str | None]:
    """The command's output holds no raw control character (a name's ESC sequence must be shown escaped) and,
    given `shown`, that text as it is (markup printed, not obeyed); its outputs exist."""

    def check(ctx: Ctx) -> str | None:
        raw = [repr(c) for c in CONTROL_CODES if c in ctx.stdout + ctx.stderr]
        if raw:
            return f"raw control characters reached the terminal: {', '.join(raw)}"
        if shown is not None and shown not in ctx.stdout:
            return f"{shown!r} is not shown as it is: its markup was obeyed"
        missing = [p for p in outputs if not ctx.path(p).exists()]
        return f"exit 0 but no {missing}" if missing else None

    return check


def check_safe_file_names(folder: str) -> Callable[[Ctx], str | None]:
    """Every file the command wrote into `folder` has a plain name (no control characters, not hidden)."""

    def check(ctx: Ctx) -> str | None:
        root = ctx.path(folder)
        if not root.is_dir():
            return f"exit 0 but no {folder}"
        odd = [p.name for p in root.rglob("*") if p.name.startswith(".") or not p.name.isprintable()]
        return f"files with unsafe names in {folder}: {[repr(n) for n in odd[:3]]}" if odd else None

    return check


def skops_callable_cases() -> list[Case]:
    """The issue's payload: a skops Pipeline whose FunctionTransformer truncates `victim.txt` when it predicts,
    its types named through scikit-learn modules; given to every command that reads .skops."""

    def setup(ctx: Ctx) -> None:
        build = hostile_builders()
        write(ctx.path("victim.txt"), "the user's notes\n")
        copy(ctx.art.member("logreg"), ctx.path("good.skops"))
        build.skops_file_writer(ctx.path("evil.skops"), ctx.path("victim.txt"))
        stored, header = read_safetensors(ctx.art.combiner("stacking"))
        description = json.loads(header[COMBINER_KEY])
        key = description["fitted"]["meta_learner_"]["skops"]
        stored[key] = torch.frombuffer(bytearray(ctx.path("evil.skops").read_bytes()), dtype=torch.uint8)
        description["fitted"]["linear_head_"] = {"json": None}
        write_safetensors(ctx.path("evil_stacking.safetensors"), stored, description, COMBINER_KEY)
        copy(ctx.art.train_preds, ctx.path("train.safetensors"))

    def numpy_transformer(ctx: Ctx) -> None:
        import numpy as np
        import skops.io as sio
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer

        X = np.random.default_rng(0).random((40, 64))
        y = np.arange(40) % 10
        sio.dump(
            make_pipeline(FunctionTransformer(np.tanh), LogisticRegression(max_iter=50)).fit(X, y), ctx.path("f.skops")
        )

    combiner_args = ["--offline", "train.safetensors", *DISTILL, "--combiner", "evil_stacking.safetensors"]
    commands = {
        "predict": ("predict", ["evil.skops"]),
        "ensemble": ("ensemble", ["evil.skops", "good.skops", "--method", "mean", "--out", "ens"]),
        "cascade": ("cascade", ["good.skops", "evil.skops"]),
        "guard_fit": ("guard", ["fit", "evil.skops"]),
        "auto": ("auto", ["evil.skops", "good.skops", "--out", "a", "--no-report", "--no-progress"]),
        "distill_teacher": ("distill", ["--teacher", "evil.skops", *DISTILL]),
        "distill_combiner": ("distill", combiner_args),
        "ensemble_combiner_file": (
            "api",
            api(
                "from modelfusion.ensemble import load_combiner",
                "import torch",
                "c = load_combiner('evil_stacking.safetensors')",
                "c.predict_proba(torch.zeros(5, 4, 10))",
            ),
        ),
    }
    cases = [
        Case(
            f"{command}.skops_function_transformer_writes_a_file" + (f"_{kind}" if kind != command else ""),
            command,
            args,
            setup=setup,
            attack=True,
            owned=("victim.txt",),
            family=SKOPS_CALLABLES,
        )
        for kind, (command, args) in commands.items()
    ]
    cases.append(
        Case(
            "predict.skops_function_transformer_numpy",
            "predict",
            ["f.skops"],
            setup=numpy_transformer,
            family=SKOPS_CALLABLES,
        )
    )
    cases.append(
        Case(
            "predict.skops_function_transformer_trusted",
            "predict",
            ["f.skops", "--trust-code"],
            must="succeed",
            setup=numpy_transformer,
            check=check_exists("predictions.safetensors"),
            family=SKOPS_CALLABLES,
        )
    )
    cases.append(
        Case(
            "predict.skops_valid_members_control",
            "predict",
            ["logreg.skops", "forest.skops"],
            must="succeed",
            setup=lambda ctx: [
                copy(ctx.art.member(m), ctx.path(f"{n}.skops"))
                for m, n in (("logreg", "logreg"), ("random_forest", "forest"))
            ],
            check=check_exists("predictions.safetensors"),
            family=SKOPS_CALLABLES,
        )
    )
    return cases


def name_path_cases() -> list[Case]:
    """A member whose recorded name is a path (or NUL, newline, very long, reserved): `compress` names its
    output file after it. Run from work/deep/ with --out c, so that a traversal lands inside the case folder."""
    names = {
        "absolute": "{dir}/outside/victim",
        "traversal": "../../outside/victim",
        "nul": "vic\x00tim",
        "newline": "vic\ntim",
        "long_256": "v" * 256,
        "reserved_con": "CON",
        "dot_dot": "..",
        "hidden": ".hidden",
        "empty": "",
    }
    cases = []
    for kind, name in names.items():

        def setup(ctx: Ctx, name=name) -> None:
            ctx.path("work/deep").mkdir(parents=True)
            ctx.path("outside").mkdir()
            member_with_meta(ctx, meta(ctx, name=substitute(name, ctx)), "work/deep/m.safetensors")

        cases.append(
            Case(
                f"compress.member_name_{kind}",
                "compress",
                ["work/deep/m.safetensors", "--method", "fp16", "--out", "work/deep/c"],
                must="either",
                setup=setup,
                attack=True,
                owned=("outside", "work/deep/m.safetensors"),
                check=check_safe_file_names("work/deep/c"),
                family=NAMES_AS_PATHS,
            )
        )
    return cases


def bomb_cases() -> list[Case]:
    """A few KB that would allocate gigabytes or loop for ever: factory arguments of spliced and compressed
    checkpoints, ONNX graphs (ConstantOfShape, Loop, Expand by input values, a broadcast)."""

    def factory_bomb(ctx: Ctx, kind: str) -> None:
        build = hostile_builders()
        made = (build.spliced_bomb if kind == "spliced" else build.compressed_bomb)(ctx.path("build"))
        shutil.move(made, ctx.path("bomb.safetensors"))
        shutil.rmtree(ctx.path("build"))

    def onnx_bomb(ctx: Ctx, kind: str) -> None:
        build = hostile_builders()
        graphs = {"constant_of_shape": build.onnx_constant_of_shape, "loop": build.onnx_loop}
        graphs.update(expand=build.onnx_expand_by_input, broadcast=build.onnx_broadcast)
        write(ctx.path("bomb.onnx"), graphs[kind]())
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))

    cases = []
    for kind in ("spliced", "compressed"):
        setup = functools.partial(factory_bomb, kind=kind)
        for command, args in (
            ("predict", ["bomb.safetensors"]),
            ("compress", ["bomb.safetensors", "--method", "int8", "--out", "c"]),
        ):
            cases.append(Case(f"{command}.{kind}_factory_bomb", command, args, setup=setup, family=BOMBS, timeout=90))
    for kind in ("constant_of_shape", "loop", "expand", "broadcast"):
        setup = functools.partial(onnx_bomb, kind=kind)
        for command, args in (
            ("predict", ["bomb.onnx"]),
            ("ensemble", ["bomb.onnx", "m1.safetensors", "--method", "mean", "--out", "ens"]),
        ):
            cases.append(Case(f"{command}.onnx_{kind}_bomb", command, args, setup=setup, family=BOMBS, timeout=90))
    return cases


def special_file_cases() -> list[Case]:
    """FIFOs and links to /dev/zero and /dev/urandom under the names every reader takes."""

    def special(ctx: Ctx, kind: str, name: str) -> None:
        if kind == "socket":
            import socket

            socket.socket(socket.AF_UNIX).bind(str(ctx.path(name)))
        else:
            hostile_builders().special_file(ctx.dir, kind, name)
        copy(ctx.art.preds("test"), ctx.path("test.safetensors"))
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))
        copy(ctx.art.guard, ctx.path("g.safetensors"))

    readers = {
        "member.safetensors": ("predict", ["x.safetensors"], "x.safetensors"),
        "member.onnx": ("predict", ["x.onnx"], "x.onnx"),
        "member.pt": ("predict", ["x.pt", "--factory", "modelfusion.models:mlp"], "x.pt"),
        "member.skops": ("predict", ["x.skops"], "x.skops"),
        "predictions": ("evaluate", ["x.safetensors"], "x.safetensors"),
        "val_predictions": (
            "ensemble",
            ["--val-preds", "x.safetensors", "--test-preds", "test.safetensors", "--out", "ens"],
            "x.safetensors",
        ),
        "merge_config": ("merge", ["x.yaml", "merged"], "x.yaml"),
        "results_json": ("report", ["x.json", "--out", "r.html"], "x.json"),
        "guard_inputs": ("guard", ["check", "g.safetensors", "--inputs", "x.npy"], "x.npy"),
        "combiner": (
            "distill",
            ["--teacher", "m1.safetensors", *DISTILL, "--combiner", "x.safetensors"],
            "x.safetensors",
        ),
        "ensemble_manifest": ("compress", ["ens", "--method", "fp16", "--out", "c"], "ens/ensemble.json"),
    }
    kinds = {
        "fifo": list(readers),
        "dev_zero": ["member.safetensors", "member.onnx", "member.pt", "member.skops", "predictions", "merge_config"],
        "dev_urandom": ["member.onnx", "member.pt", "results_json"],
        "socket": ["member.safetensors"],
    }
    cases = []
    for kind, names in kinds.items():
        for reader in names:
            command, args, target = readers[reader]
            setup = functools.partial(special, kind=kind, name=target)
            cases.append(
                Case(f"{command}.{kind}_as_{reader}", command, args, setup=setup, family=SPECIAL_FILES, timeout=90)
            )
    return cases


def terminal_text_cases() -> list[Case]:
    """Member, split and output names holding rich markup or terminal control sequences."""
    hostile = {
        "markup_close": "a[/]b",
        "markup_style": "[red]x[/red][link=file:///]y",
        "escape_title_clear": "c\x1b]0;PWNED\x07\x1b[2J\x1b[31md",
        "carriage_return_bidi": "ok\rEVIL\u202eabc",
    }

    def members(ctx: Ctx, name: str) -> None:
        tensors = read_safetensors(ctx.art.member("mlp_1"))[0]
        member_with_meta(ctx, meta(ctx, name=name), "m0.safetensors")
        member_with_meta(ctx, meta(ctx, name=name + "2"), "m1.safetensors", tensors=tensors)
        predictions_file(ctx, "p.safetensors", meta_changes={"member_names": [name + str(i) for i in range(5)]})
        predictions_file(ctx, "s.safetensors", meta_changes={"split": name})

    m = ["m0.safetensors", "m1.safetensors"]
    cases = []
    for kind, name in hostile.items():
        setup = functools.partial(members, name=name)
        runs = {
            "predict": ("predict", m, ("predictions.safetensors",)),
            "evaluate": ("evaluate", ["p.safetensors"], ()),
            "evaluate_split": ("evaluate", ["s.safetensors"], ()),
            "ensemble": ("ensemble", [*m, "--method", "mean", "--out", "ens"], ("ens/results.json",)),
            "cascade": ("cascade", m, ()),
        }
        literal = name if kind.startswith("markup") else None  # control codes are shown escaped, not as they are
        for run, (command, args, outputs) in runs.items():
            cases.append(
                Case(
                    f"{command}.{kind}_in_{'split' if run.endswith('split') else 'member'}_names",
                    command,
                    args,
                    must="succeed",
                    setup=setup,
                    check=check_no_control_codes(*outputs, shown=None if run == "predict" else literal),
                    family=TERMINAL_TEXT,
                )
            )
    for kind, out in (("markup", "o[/]x.safetensors"), ("escape", "o\x1b[2Jx.safetensors")):
        cases.append(
            Case(
                f"predict.{kind}_in_out_argument",
                "predict",
                ["m0.safetensors", "--out", out],
                must="succeed",
                setup=lambda ctx: copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors")),
                check=check_no_control_codes(out, shown=out if kind == "markup" else None),
                family=TERMINAL_TEXT,
            )
        )
    cases.append(
        Case(
            "evaluate.escape_in_missing_file_name",
            "evaluate",
            ["x\x1b]0;PWNED\x07\x1b[2J.safetensors"],
            family=TERMINAL_TEXT,
            check=check_no_control_codes(),
        )
    )
    return cases


def silent_accept_cases() -> list[Case]:
    """Inputs that are wrong but used to be used: repeated or NaN classes, one checkpoint twice, test
    predictions relabelled as validation, validation of one class or none."""

    def class_member(ctx: Ctx, classes) -> None:
        member_with_meta(ctx, meta(ctx, classes=classes), "m.safetensors")

    def class_preds(ctx: Ctx, classes) -> None:
        predictions_file(ctx, "p.safetensors", meta_changes={"classes": classes})
        predictions_file(ctx, "test.safetensors", meta_changes={"classes": classes})
        ctx.split = "val"
        predictions_file(ctx, "val.safetensors", split="val", meta_changes={"classes": classes})

    def twice(ctx: Ctx, how: str) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))
        if how == "link":
            ctx.path("m0_link.safetensors").symlink_to("m0.safetensors")
        elif how == "copy":
            copy(ctx.art.member("mlp_0"), ctx.path("m0_copy.safetensors"))

    def relabelled(ctx: Ctx, split: str, shuffle: bool = False) -> None:
        outputs, labels = split_tensors(ctx)
        if shuffle:
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
            outputs, labels = outputs[:, order], labels[order]
        predictions_file(ctx, "val.safetensors", outputs=outputs, labels=labels, meta_changes={"split": split})
        copy(ctx.art.preds("test"), ctx.path("test.safetensors"))

    def validation(ctx: Ctx, kind: str) -> None:
        ctx.split = "val"
        outputs, labels = split_tensors(ctx)
        if kind == "one_class":
            labels = torch.full_like(labels, 3)
        else:
            outputs, labels = outputs[:, :0], labels[:0]
        predictions_file(ctx, "val.safetensors", split="val", outputs=outputs, labels=labels)
        copy(ctx.art.preds("test"), ctx.path("test.safetensors"))

    ten = list(range(10))
    vt = ["--val-preds", "val.safetensors", "--test-preds", "test.safetensors", "--out", "ens"]
    cases = []
    for kind, classes in {
        "duplicate": [0, 0, *ten[2:]],
        "nan": [float("nan"), *ten[1:]],
        "int_and_string": [1, "1", *ten[2:]],
    }.items():
        for name, command, args, build in (
            ("predict.member_classes", "predict", ["m.safetensors"], class_member),
            ("evaluate.predictions_classes", "evaluate", ["p.safetensors"], class_preds),
            ("ensemble.val_predictions_classes", "ensemble", [*vt, "--method", "mean"], class_preds),
        ):
            setup = functools.partial(build, classes=classes)
            cases.append(Case(f"{name}_{kind}", command, args, setup=setup, family=SILENT_ACCEPTS))
    for how, second in (
        ("same_path", "m0.safetensors"),
        ("link", "m0_link.safetensors"),
        ("copy", "m0_copy.safetensors"),
    ):
        setup = functools.partial(twice, how=how)
        for command, extra in (("predict", []), ("ensemble", ["--method", "weighted", "--out", "ens"])):
            cases.append(
                Case(
                    f"{command}.one_checkpoint_twice_{how}",
                    command,
                    ["m0.safetensors", second, *extra],
                    setup=setup,
                    family=SILENT_ACCEPTS,
                )
            )
    for kind, split, shuffle in (
        ("relabelled_val", "val", False),
        ("relabelled_zero_width_val", "val\u200b", False),
        ("relabelled_validation", "Validation", False),
        ("shuffled_val", "val", True),
        ("zero_width_test", "test\u200b", False),
        ("fullwidth_test", "ｔｅｓｔ", False),
    ):
        cases.append(
            Case(
                f"ensemble.test_predictions_as_{kind}",
                "ensemble",
                [*vt, "--method", "weighted"],
                setup=functools.partial(relabelled, split=split, shuffle=shuffle),
                family=SILENT_ACCEPTS,
            )
        )
    for kind in ("one_class", "no_samples"):
        for method in ("stacking", "all"):
            cases.append(
                Case(
                    f"ensemble.validation_{kind}_{method}",
                    "ensemble",
                    [*vt, "--method", method],
                    setup=functools.partial(validation, kind=kind),
                    family=SILENT_ACCEPTS,
                )
            )
    return cases


def onnx_debris_cases() -> list[Case]:
    """ONNX members, valid and refused, with HOME in the case folder: whatever the runtime writes there is
    debris beside the user's files (its telemetry database used to land in ~/.cache)."""

    def members(ctx: Ctx) -> None:
        from onnx import TensorProto, helper, numpy_helper

        weight, bias = ctx.art.mlp_tensors[0]["0.weight"], ctx.art.mlp_tensors[0]["0.bias"]
        head_w, head_b = ctx.art.mlp_tensors[0]["2.weight"], ctx.art.mlp_tensors[0]["2.bias"]
        graph = helper.make_graph(
            [
                helper.make_node("Gemm", ["input", "w0", "b0"], ["h"], transB=1),
                helper.make_node("Relu", ["h"], ["r"]),
                helper.make_node("Gemm", ["r", "w1", "b1"], ["output"], transB=1),
            ],
            "mlp",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
            [
                numpy_helper.from_array(t.numpy(), n)
                for n, t in (("w0", weight), ("b0", bias), ("w1", head_w), ("b1", head_b))
            ],
        )
        write(
            ctx.path("m.onnx"),
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        )
        write(ctx.path("bomb.onnx"), hostile_builders().onnx_constant_of_shape())
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))
        copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))

    home = {"HOME": "{dir}", "XDG_CACHE_HOME": ""}
    runs = [
        ("predict.onnx_member_home_beside_the_files", "predict", ["m.onnx"], "succeed", ("predictions.safetensors",)),
        (
            "ensemble.onnx_member_home_beside_the_files",
            "ensemble",
            ["m.onnx", "m1.safetensors", "--method", "mean", "--out", "ens"],
            "succeed",
            ("ens/results.json",),
        ),
        (
            "compress.onnx_int8_home_beside_the_files",
            "compress",
            ["m0.safetensors", "--method", "onnx-int8", "--out", "c"],
            "succeed",
            ("c/results.json",),
        ),
        ("predict.refused_onnx_home_beside_the_files", "predict", ["bomb.onnx"], "refuse", ()),
    ]
    return [
        Case(name, command, args, must=must, setup=members, env=home, check=check_exists(*outputs), family=ONNX_DEBRIS)
        for name, command, args, must, outputs in runs
    ]


def closed_stream_cases() -> list[Case]:
    """Commands run with standard output closed (`>&-`): they do their work, or refuse in one line."""

    def inputs(ctx: Ctx) -> None:
        copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))
        copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))
        copy(ctx.art.preds("test"), ctx.path("test.safetensors"))
        copy(ctx.art.preds("val"), ctx.path("val.safetensors"))

    runs = [
        ("evaluate.stdout_closed", "evaluate", ["test.safetensors", "--json", "r.json"], "succeed", ("r.json",)),
        (
            "predict.stdout_closed",
            "predict",
            ["m0.safetensors", "m1.safetensors"],
            "succeed",
            ("predictions.safetensors",),
        ),
        (
            "ensemble.stdout_closed",
            "ensemble",
            ["--val-preds", "val.safetensors", "--test-preds", "test.safetensors", "--method", "mean", "--out", "ens"],
            "succeed",
            ("ens/results.json",),
        ),
        ("evaluate.stdout_closed_missing_file", "evaluate", ["missing.safetensors"], "refuse", ()),
    ]
    return [
        Case(
            name,
            command,
            args,
            must=must,
            setup=inputs,
            close_stdout=True,
            check=check_exists(*outputs),
            family=CLOSED_STREAMS,
        )
        for name, command, args, must, outputs in runs
    ]


def issue23_cases() -> list[Case]:
    return (
        skops_callable_cases()
        + name_path_cases()
        + bomb_cases()
        + special_file_cases()
        + terminal_text_cases()
        + silent_accept_cases()
        + onnx_debris_cases()
        + closed_stream_cases()
    )


# -- issue 28: wrong arguments to the Python API, merge values out of range, signals at the moment a temporary
# appears, and full disks (a file size limit).

API_ARGUMENTS = "API arguments"
MERGE_RANGES = "merge values out of range"
SIGNALS = "signals"
FULL_DISK = "full disk"


def two_members(ctx: Ctx) -> None:
    copy(ctx.art.member("mlp_0"), ctx.path("m0.safetensors"))
    copy(ctx.art.member("mlp_1"), ctx.path("m1.safetensors"))


def api_argument_cases() -> list[Case]:
    """The issue's calls of public functions with arguments of the wrong type or out of range: each must raise a
    ModelFusionError (one line), never TypeError, AttributeError or ValueError, and never be taken silently."""
    two = yaml_list(["model: m0.safetensors", "model: m1.safetensors"])

    def inputs(ctx: Ctx) -> None:
        two_members(ctx)
        copy(ctx.art.preds("test"), ctx.path("p.safetensors"))
        write(ctx.path("cfg.yaml"), f"merge_method: linear\nmodels:\n{two}\n")

    load = "from modelfusion.io import load_member"
    test_x = ("from modelfusion.datasets import load_dataset", "X = load_dataset('digits').test.X[:32]")
    preds = ("from modelfusion.predictions import Predictions", "p = Predictions.load('p.safetensors')")
    fields = "labels=p.labels, task=p.task, split=p.split, classes=p.classes"
    merge = "from modelfusion.merge import merge"
    as_dict = "{'merge_method': 'linear', 'models': [{'model': 'm0.safetensors'}, {'model': 'm1.safetensors'}]}"

    def loaded(arguments: str) -> tuple[str, ...]:
        """load_member with `arguments`, then a prediction (where a wrong value taken silently shows)."""
        return (load, *test_x, f"load_member('m0.safetensors', {arguments}).predict(X)")

    calls = {
        "load_member_none": (load, "load_member(None)"),
        "load_member_int": (load, "load_member(123)"),
        "load_member_bytes": (load, "load_member(b'/x')"),
        "load_member_factory_kwargs_text": loaded("factory_kwargs='str'"),
        "load_member_factory_kwargs_list": loaded("factory_kwargs=[1]"),
        "load_member_batch_size_0": loaded("batch_size=0"),
        "load_member_batch_size_text": loaded("batch_size='8'"),
        "load_member_batch_size_negative": loaded("batch_size=-1"),
        "load_member_classes_int": loaded("classes=5"),
        "load_member_2_classes_for_10_outputs": loaded("classes=[1, 2]"),
        "predictions_load_none": ("from modelfusion.predictions import Predictions", "Predictions.load(None)"),
        "predictions_outputs_a_list": (
            *preds,
            f"Predictions(outputs=p.outputs.tolist(), member_names=p.member_names, {fields})",
        ),
        "predictions_member_names_text": (*preds, f"Predictions(outputs=p.outputs[:2], member_names='ab', {fields})"),
        "combiner_fit_none": ("from modelfusion.ensemble import make_combiner", "make_combiner('mean').fit(None)"),
        "merge_config_an_int": (merge, "merge(123, 'out', progress=False)"),
        "merge_config_a_dict_of_wrong_fields": (merge, "merge({'merge_method': 'linear', 'models': 5}, 'out')"),
        "merge_out_dir_none": (merge, "merge('cfg.yaml', None, progress=False)"),
        "merge_state_dicts_of_lists": (
            "from modelfusion.merge import merge_state_dicts",
            "merge_state_dicts([{'w': [1.0]}, {'w': [2.0]}], method='linear')",
        ),
        "evaluate_none": ("from modelfusion.evaluate import evaluate", "evaluate(None)"),
        "collect_predictions_x_text": (
            load,
            "from modelfusion.predictions import collect_predictions",
            "collect_predictions([load_member('m0.safetensors')], X='text', progress=False)",
        ),
        "input_guard_load_none": ("from modelfusion.guard import InputGuard", "InputGuard.load(None)"),
        "distill_student_none": (
            load,
            "from modelfusion.datasets import load_dataset",
            "from modelfusion.distill import ModelTeacher, distill",
            "d = load_dataset('digits')",
            "teacher = ModelTeacher(load_member('m0.safetensors').module)",
            "distill(student=None, teacher=teacher, train=d.train, val=d.val, epochs=1, progress=False)",
        ),
        "save_member_overwrite_no_over_a_file": (
            load,
            "from modelfusion.io import save_member",
            "save_member(load_member('m1.safetensors'), 'm0.safetensors', overwrite='no')",
        ),
    }
    owned = ("m0.safetensors", "m1.safetensors", "p.safetensors", "cfg.yaml")
    cases = [
        Case(f"api.{kind}", "api", api(*lines), setup=inputs, owned=owned, family=API_ARGUMENTS)
        for kind, lines in calls.items()
    ]
    cases.append(  # a mapping of MergeConfig's fields is a MergeConfig: merged as the same YAML would be
        Case(
            "api.merge_config_a_dict_of_valid_fields",
            "api",
            api(merge, f"merge({as_dict}, 'out', progress=False)"),
            must="either",
            setup=inputs,
            owned=owned,
            check=check_finite_merge("out"),
            family=API_ARGUMENTS,
        )
    )
    return cases


def merge_range_cases() -> list[Case]:
    """Merge values out of their method's range, duplicate YAML keys, a tensor in two shards, models holding NaN
    or inf (refused unless --allow-nonfinite), weights that overflow, a home folder of an unknown user."""
    weighted = ["{model: ft0, parameters: {weight: 1.0}}", "{model: ft1, parameters: {weight: 1.0}}"]
    texts = {
        "slerp_t_1.7": slerp_yaml("1.7"),
        "slerp_t_-0.5": slerp_yaml("-0.5"),
        "nearswap_t_-1": slerp_yaml("-1", method="nearswap"),
        "multislerp_eps_-1": "merge_method: multislerp\nmodels:\n" + yaml_list(weighted) + "\nparameters: {eps: -1}\n",
        "random_seed_text": ties_yaml(top="random_seed: '5'\n").replace("ties", "dare_ties"),
        "models_key_twice": linear_yaml() + "models:\n  - model: base\n",
        "weight_1e308_on_two_models": linear_yaml(", parameters: {weight: 1.0e+308}"),
        "model_in_an_unknown_users_home": "merge_method: linear\nmodels:\n  - model: ~nosuchuser/x\n  - model: ft0\n",
    }

    def in_two_shards(ctx: Ctx) -> None:
        """ft1 as two shards that both hold layer.weight (the index names one of them)."""
        hf_with_yaml(linear_yaml(), ctx)
        tensors, _ = read_safetensors(ctx.path("ft1/model.safetensors"))
        first = {k: tensors[k] for k in ("embed.weight", "layer.weight")}
        second = {k: tensors[k] for k in ("layer.weight", "layer.bias", "head.weight")}
        second["layer.weight"] = torch.zeros_like(second["layer.weight"])
        names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
        for name, shard in zip(names, (first, second), strict=True):
            save_file(shard, str(ctx.path(f"ft1/{name}")))
        ctx.path("ft1/model.safetensors").unlink()
        weight_map = {k: names[0] for k in first} | {k: names[1] for k in second if k not in first}
        write(ctx.path("ft1/model.safetensors.index.json"), json.dumps({"metadata": {}, "weight_map": weight_map}))

    def nonfinite(ctx: Ctx, value: float) -> None:
        hf_with_yaml(linear_yaml(), ctx)
        tensors, _ = read_safetensors(ctx.path("ft1/model.safetensors"))
        tensors["layer.weight"][0, 0] = value
        save_file(tensors, str(ctx.path("ft1/model.safetensors")))

    owned = ("cfg.yaml", "base", "ft0", "ft1")
    setups = {kind: functools.partial(hf_with_yaml, text) for kind, text in texts.items()}
    setups |= {
        "tensor_in_two_shards": in_two_shards,
        "nan_in_a_model": functools.partial(nonfinite, value=float("nan")),
        "inf_in_a_model": functools.partial(nonfinite, value=float("inf")),
    }
    cases = [
        Case(f"merge.{kind}", "merge", ["cfg.yaml", "merged"], setup=setup, owned=owned, family=MERGE_RANGES)
        for kind, setup in setups.items()
    ]
    cases.append(
        Case(
            "merge.inf_in_a_model_allowed_control",
            "merge",
            ["cfg.yaml", "merged", "--allow-nonfinite"],
            must="succeed",
            setup=setups["inf_in_a_model"],
            check=check_finite_merge("merged", allowed=True),
            owned=owned,
            family=MERGE_RANGES,
        )
    )
    return cases


def signal_cases() -> list[Case]:
    """SIGTERM the moment a temporary output (or a folder's lock) appears, where a stop used to leave it behind
    or end in a library's traceback; kill -9 during a merge's `align:` step, then the same merge again: its
    aligned copies must be gone (the system's temporary folder is .systmp in the case folder, so that copies
    left there count as debris; torch's own compile cache, which importing torch._dynamo creates in the system's
    temporary folder, goes to the artifacts folder instead)."""

    def align_config(ctx: Ctx) -> None:
        two_members(ctx)
        models = yaml_list(["model: m0.safetensors", "model: m1.safetensors"])
        write(ctx.path("cfg.yaml"), f"merge_method: linear\nmodels:\n{models}\nalign: {{method: weight_matching}}\n")
        ctx.path(".systmp").mkdir()

    members = ("m0.safetensors", "m1.safetensors")
    ensemble = ["m0.safetensors", "m1.safetensors", "--method", "mean", "--out", "ens"]
    stops = [
        ("ensemble.sigterm_when_its_temporary_output_appears", "ensemble", ensemble, ".ens.modelfusion-*.tmp"),
        ("ensemble.sigterm_when_its_lock_appears", "ensemble", ensemble, ".ens.modelfusion.lock"),
        ("merge.sigterm_when_its_temporary_output_appears", "merge", ["cfg.yaml", "merged"], ".merged.*.tmp"),
    ]
    cases = [
        Case(
            name,
            command,
            args,
            must="either",
            setup=big_config if command == "merge" else two_members,
            owned=("cfg.yaml",) if command == "merge" else members,
            runner="signal",
            signal=signal.SIGTERM,
            signal_when=(pattern,),
            family=SIGNALS,
        )
        for name, command, args, pattern in stops
    ]
    cases.append(
        Case(
            "merge.align_step_killed_then_rerun",
            "merge",
            ["cfg.yaml", "merged"],
            must="succeed",
            setup=align_config,
            owned=("cfg.yaml", *members),
            runner="signal_rerun",
            signal=signal.SIGKILL,
            signal_when=(".systmp/*/1_*.safetensors", ".merged.modelfusion-*.tmp/1_*.safetensors"),
            env={"TMPDIR": "{dir}/.systmp", "TORCHINDUCTOR_CACHE_DIR": "{art}/torchinductor"},
            check=check_exists("merged"),
            family=SIGNALS,
        )
    )
    return cases


def full_disk_cases() -> list[Case]:
    """Commands whose output does not fit under a file size limit (RLIMIT_FSIZE, as a full disk): one line
    naming the output, no partial temporary file. The limit is above what they print (their stdout and stderr
    are files here) and below what they write."""
    teacher = ["--teacher", "m0.safetensors", *DISTILL]
    runs = {
        "predict.past_the_file_size_limit": ["m0.safetensors", "--split", "test", "--out", "out/p.safetensors"],
        "ensemble.past_the_file_size_limit": ["m0.safetensors", "m1.safetensors", "--method", "mean", "--out", "out/e"],
        "distill.out_past_the_file_size_limit": [*teacher, "--out", "out/s.safetensors"],
        "distill.checkpoint_past_the_file_size_limit": [
            *teacher,
            "--checkpoint-dir",
            "out/ckpt",
            "--out",
            "s.safetensors",
        ],
    }

    def inputs(ctx: Ctx) -> None:
        two_members(ctx)
        ctx.path("out").mkdir()

    return [
        Case(
            name,
            name.split(".")[0],
            args,
            setup=inputs,
            owned=("m0.safetensors", "m1.safetensors"),
            fsize_limit=FSIZE_LIMIT,
            names="out/",
            family=FULL_DISK,
        )
        for name, args in runs.items()
    ]


def issue28_cases() -> list[Case]:
    return api_argument_cases() + merge_range_cases() + signal_cases() + full_disk_cases()


def corpus() -> list[Case]:
    cases = (
        control_cases()
        + code_execution_cases()
        + output_destruction_cases()
        + permission_cases()
        + predictions_cases()
        + checkpoint_metadata_cases()
        + file_format_cases()
        + data_and_option_cases()
        + distill_cases()
        + merge_config_cases()
        + interrupt_cases()
        + api_cases()
        + issue23_cases()
        + issue28_cases()
    )
    names = Counter(case.name for case in cases)
    duplicates = [name for name, count in names.items() if count > 1]
    if duplicates:
        raise SystemExit(f"duplicate case names: {duplicates}")
    return cases


# ------------------------------------------------------------------------------------------- report


def shown_line(record: dict, width: int) -> str:
    """The first stderr line, and the error itself when that is not the first line (tracebacks, warnings)."""
    first, error = record["first_line"], record.get("error_line", "")
    if error and error != first:
        return f"{first[: width // 3]} ... {error[: width - width // 3]}"
    return first[:width]


def print_report(records: list[dict]) -> None:
    classes = list(reversed(PRIORITY))
    total = Counter(r["class"] for r in records)
    print(f"\n{len(records)} cases")
    print("  " + "  ".join(f"{c}: {total[c]}" for c in classes if total[c]))
    shown = [c for c in classes if total[c]]
    width = max(len(c) for c in shown)
    for key, label, pad in (("command", "command", 10), ("family", "family", 28)):
        groups = sorted({r.get(key) or "(earlier battery)" for r in records})
        if key == "family" and groups == ["(earlier battery)"]:
            continue
        print("\n" + label.ljust(pad) + "".join(c.rjust(width + 2) for c in shown) + "total".rjust(8))
        for group in groups:
            counts = Counter(r["class"] for r in records if (r.get(key) or "(earlier battery)") == group)
            row = "".join(str(counts[c]).rjust(width + 2) for c in shown)
            print(group.ljust(pad) + row + str(sum(counts.values())).rjust(8))
    by_class = defaultdict(list)
    for record in records:
        by_class[record["class"]].append(record)
    for cls in PRIORITY:
        if cls == "clear" or not by_class[cls]:
            continue
        print(f"\n{cls} ({len(by_class[cls])}):")
        for r in by_class[cls]:
            detail = "; ".join(r["notes"])[:200]
            print(f"  {r['name']:<58} rc={r['rc']!s:<4} {shown_line(r, 220)}" + (f"  [{detail}]" if detail else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the `src` folder of the checkout under test")
    parser.add_argument("--only", action="append", help="run only cases whose name contains this (repeatable)")
    parser.add_argument("--family", action="append", help="run only the cases of this family (repeatable)")
    parser.add_argument("--json", type=Path, help="write every case's record here")
    parser.add_argument("--workdir", type=Path, help="artifacts and case folders (default: a new temp folder)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as hung")
    parser.add_argument("--keep", action="store_true", help="keep the case folders (else removed after each case)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()

    cases = corpus()
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    if args.family:
        cases = [c for c in cases if c.family in args.family]
    if args.list:
        for case in cases:
            print(f"{case.name:<60} {case.must:<7} {case.family}")
        print(f"{len(cases)} cases")
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelfusion-hostile."))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # `nobody` runs the permission cases in folders below it
    (workdir / "cases").mkdir(exist_ok=True)
    os.chmod(workdir / "cases", 0o755)
    runner = Runner(args.src.resolve(), workdir, args.timeout)
    print(f"modelfusion under test: {runner.verify_src()}")
    print(f"work folder: {workdir}")
    if runner.root:
        print("running as root: permission cases run as `nobody` (setpriv) to emulate a normal user")
    art_root = workdir / "artifacts"
    art_root.mkdir(exist_ok=True)
    os.chmod(art_root, 0o755)
    art = Artifacts(art_root, runner)
    records = []
    started = time.perf_counter()
    for i, case in enumerate(cases, 1):
        record = run_case(case, runner, art)
        records.append(record)
        print(
            f"[{i}/{len(cases)}] {record['class']:<13} {case.name:<58} rc={record['rc']!s:<4} "
            f"{record['seconds']:5.1f}s {record['peak_rss_mib']:6.0f}MiB  {shown_line(record, 100)}",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(record["folder"], ignore_errors=True)
    print(f"\n{len(cases)} cases in {time.perf_counter() - started:.0f}s")
    print_report(records)
    if args.json:
        summary = {
            "src": str(args.src.resolve()),
            "imported": runner.verify_src(),
            "root_emulated_with_nobody": runner.root,
            "counts": dict(Counter(r["class"] for r in records)),
            "per_command": {
                command: dict(Counter(r["class"] for r in records if r["command"] == command))
                for command in sorted({r["command"] for r in records})
            },
            "per_family": {
                family: dict(Counter(r["class"] for r in records if r["family"] == family))
                for family in sorted({r["family"] for r in records if r["family"]})
            },
            "cases": records,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nJSON -> {args.json}")


if __name__ == "__main__":
    main()
