"""Hostile files for the security tests: special files that hang or never end, graphs and factory arguments
that allocate without bound, a skops file whose estimator writes a file when it predicts."""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from .limits import HANG_GUARD_S


def finishes(call, seconds: float = HANG_GUARD_S) -> Exception | None:
    """Run `call` in a thread and return what it raised (None if nothing); fail if it is still blocked after
    `seconds` (a reader that opened a FIFO would wait for a writer forever: the guard turns that hang into a
    failure; a slow machine does not)."""
    outcome: dict = {}

    def run():
        try:
            call()
            outcome["error"] = None
        except Exception as err:  # the caller inspects it
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} still blocked after {seconds} s"
    return outcome["error"]


SPECIAL_KINDS = ("fifo", "dev_zero", "dev_urandom")


def special_file(folder: Path, kind: str, name: str) -> Path:
    """`folder/name` as a FIFO, or as a link to /dev/zero or /dev/urandom."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(f"/dev/{kind.removeprefix('dev_')}")
    return path


# -- ONNX graphs whose size or run time their values decide ------------------------------------------------
def _onnx_model(nodes, initializers, output_shape=("batch", 10)) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((64, 10), 0.01, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["mm"]), *nodes],
        "hostile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(output_shape))],
        [weight, *(numpy_helper.from_array(value, name) for name, value in initializers.items())],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def onnx_constant_of_shape(side: int = 40_000) -> bytes:
    """A `side` x `side` float constant made from a two-number shape (6.4 GB for 40,000), summed into the output."""
    from onnx import helper, numpy_helper

    one = numpy_helper.from_array(np.ones(1, dtype=np.float32))
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Add", ["mm", "total"], ["output"]),
    ]
    return _onnx_model(nodes, {"shape": np.array([side, side], dtype=np.int64)})


def onnx_loop(turns: int = 10**15) -> bytes:
    """A `Loop` of `turns` iterations around an identity."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["acc"], ["acc_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
        ],
    )
    node = helper.make_node("Loop", ["turns", "keep_going", "mm"], ["output"], body=body)
    return _onnx_model([node], {"turns": np.array(turns, dtype=np.int64), "keep_going": np.array(True)})


def onnx_expand_by_input() -> bytes:
    """`Expand` to a shape computed from the input's values: how large only the data decides."""
    from onnx import helper

    nodes = [
        helper.make_node("Cast", ["input"], ["as_int"], to=7),  # int64
        helper.make_node("ReduceMax", ["as_int"], ["largest"], keepdims=0),
        helper.make_node("Reshape", ["largest", "one_dim"], ["side"]),
        helper.make_node("Concat", ["side", "side"], ["shape"], axis=0),
        helper.make_node("Expand", ["scalar", "shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Add", ["mm", "total"], ["output"]),
    ]
    initializers = {"one_dim": np.array([1], dtype=np.int64), "scalar": np.array(1.0, dtype=np.float32)}
    return _onnx_model(nodes, initializers)


def onnx_broadcast(width: int = 1_000_000) -> bytes:
    """Each sample's 64 inputs broadcast against `width` constants: 64 x `width` numbers per sample."""
    from onnx import helper

    nodes = [
        helper.make_node("Unsqueeze", ["input", "axis"], ["column"]),
        helper.make_node("Add", ["column", "row"], ["wide"]),
        helper.make_node("ReduceSum", ["wide", "axes"], ["summed"], keepdims=0),
        helper.make_node("Unsqueeze", ["summed", "axis1"], ["summed_column"]),
        helper.make_node("Add", ["mm", "summed_column"], ["output"]),
    ]
    initializers = {
        "axis": np.array([2], dtype=np.int64),
        "axis1": np.array([1], dtype=np.int64),
        "row": np.zeros((1, 1, width), dtype=np.float32),
        "axes": np.array([1, 2], dtype=np.int64),
    }
    return _onnx_model(nodes, initializers)


ONNX_BOMBS = {
    "ConstantOfShape 40000 x 40000": (onnx_constant_of_shape, "ConstantOfShape"),
    "Loop of 10^15 turns": (onnx_loop, "Loop"),
    "Expand to a size the input's values decide": (onnx_expand_by_input, "Expand"),
    "a broadcast to 64 x 10^6 numbers per sample": (onnx_broadcast, "Add"),
}


# -- factory arguments that build far more than the file holds -------------------------------------------
def _tensors_and_header(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["modelfusion"])


def _rewrite_member(path: Path, out: Path, change) -> Path:
    from safetensors.torch import save_file

    tensors, header = _tensors_and_header(path)
    change(header["factory_kwargs"])
    save_file(tensors, str(out), metadata={"modelfusion": json.dumps(header)})
    return out


def _small_member():
    import torch

    from modelfusion.io.factory import build_model
    from modelfusion.members import TorchMember

    torch.manual_seed(0)
    kwargs = {"in_features": 64, "num_outputs": 10, "hidden": [16, 16]}
    return TorchMember(build_model("mlp", kwargs), name="small", factory="mlp", factory_kwargs=kwargs)


def spliced_bomb(folder: Path, side: int = 20_000) -> Path:
    """A real spliced checkpoint (kept: the backbone's first layer) whose recorded backbone has two
    `side` x `side` layers after the cut: a few KB on disk, 2 x `side`^2 floats to build the backbone."""
    import torch

    from modelfusion.features import spliced_member
    from modelfusion.io import save_member

    spliced = spliced_member(_small_member(), 3, at="1", example_input=torch.zeros(2, 64))
    valid = save_member(spliced, folder / "spliced_valid.safetensors")

    def grow(kwargs):
        kwargs["backbone_kwargs"]["hidden"] = [16, side, side]

    return _rewrite_member(valid, folder / "spliced_bomb.safetensors", grow)


def compressed_bomb(folder: Path, side: int = 20_000) -> Path:
    """A real structurally pruned checkpoint whose recorded original is `side` x `side`, shrunk back to the
    file's shapes: a few KB on disk, `side`^2 floats to build the original."""
    import torch

    from modelfusion.compress import compress

    result = compress(_small_member(), method="prune-structured", amount=0.5, X=torch.randn(32, 64))
    valid = result.save(folder / "compressed_valid")
    tensors, _ = _tensors_and_header(valid)

    def grow(kwargs):
        kwargs["model_kwargs"]["hidden"] = [side, side]
        kwargs["shapes"] = {key: list(value.shape) for key, value in tensors.items()}

    return _rewrite_member(valid, folder / "compressed_bomb.safetensors", grow)


# -- a skops estimator that writes a file of the attacker's choice when it predicts ---------------------------
def skops_file_writer(path: Path, victim: Path) -> Path:
    """`Pipeline([FunctionTransformer(partial(GzipFile, victim, "wb")), LogisticRegression])`, every type named
    through a scikit-learn module (`sklearn.datasets._rcv1.GzipFile`, `sklearn.metrics.pairwise.partial`), as
    issue 23 found it: predicting with it truncates `victim`."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.random.default_rng(0).random((40, 64))
    y = np.arange(40) % 10  # the ten digits, so that it fuses with any digits member
    step = FunctionTransformer(functools.partial(gzip.GzipFile, str(victim), "wb"))
    pipeline = Pipeline([("writer", step), ("model", LogisticRegression(max_iter=200).fit(X, y))])
    archive = zipfile.ZipFile(io.BytesIO(sio.dumps(pipeline)))
    schema = archive.read("schema.json").decode()
    schema = schema.replace('"__module__": "gzip"', '"__module__": "sklearn.datasets._rcv1"')
    schema = schema.replace('"__module__": "functools"', '"__module__": "sklearn.metrics.pairwise"')
    with zipfile.ZipFile(path, "w") as out:
        for info in archive.infolist():
            out.writestr(info, schema if info.filename == "schema.json" else archive.read(info))
    return path
