"""Property-based fuzzing of every reader: whatever bytes, header or YAML a file holds, reading it gives a valid
object or a `ModelFusionError`, never another exception (and never runs code: no flag trusts anything here).

Each target runs `FAST_EXAMPLES` examples in the quick suite and `SLOW_EXAMPLES` (1,000 by default, sized so
that the whole suite fits CI on 2 cores; `MODELFUSION_FUZZ_EXAMPLES` sets it, and bench/fuzz.py runs the long
campaigns, 50,000 examples a target) in the slow-marked one.
"""

import functools
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import skops.io as sio
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from modelfusion import ModelFusionError
from modelfusion.cli import app
from modelfusion.datasets import Split
from modelfusion.ensemble import load_combiner, make_combiner, save_combiner
from modelfusion.guard import InputGuard
from modelfusion.io import load_member
from modelfusion.merge import load_config, merge
from modelfusion.merge.lora import read_adapter
from modelfusion.merge.moe import load_moe_config
from modelfusion.merge.per_task import PerTaskMerge, merge_per_task
from modelfusion.models import mlp
from modelfusion.predictions import Predictions
from modelfusion.report import load_results, parse_results, render_report

from .results_samples import auto_results, ensemble_results

# torch warns about the odd pickles mutated files hold; the property is about exceptions, not warnings.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAST_EXAMPLES = 60
SLOW_EXAMPLES = int(os.environ.get("MODELFUSION_FUZZ_EXAMPLES", "1000"))
KWARGS = {"in_features": 4, "num_outputs": 3, "hidden": [5]}

# -- strategies ----------------------------------------------------------------------------------------
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)


def _mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """`original` with a few random edits: overwritten, deleted or inserted bytes, or a truncation."""

    @st.composite
    def mutate(draw) -> bytes:
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["overwrite", "delete", "insert", "truncate"]))
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            if kind == "overwrite" and data:
                data[at] = draw(st.integers(0, 255))
            elif kind == "delete":
                del data[at : at + draw(st.integers(1, 64))]
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            else:
                del data[at:]
        return bytes(data)

    return mutate()


def _file_contents(original: bytes) -> st.SearchStrategy[bytes]:
    return _mutations(original) | st.binary(max_size=512)


# -- valid originals to mutate ---------------------------------------------------------------------------
def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in mlp(**KWARGS).state_dict().items()}


def _safetensors_bytes(tensors: dict[str, torch.Tensor], key: str, description) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={key: description if isinstance(description, str) else json.dumps(description)})


MEMBER = _safetensors_bytes(
    _state(), "modelfusion", {"name": "m", "task": "classification", "factory": "mlp", "factory_kwargs": KWARGS}
)
PREDICTIONS = _safetensors_bytes(
    {"outputs": torch.randn(2, 5, 3), "labels": torch.tensor([0, 1, 2, 0, 1])},
    "modelfusion.predictions",
    {"member_names": ["a", "b"], "task": "classification", "split": "val", "classes": [0, 1, 2]},
)


def _guard_parts() -> tuple[dict, dict]:
    """A guard fitted without members on a small synthetic split: the reader's valid original."""
    generator = torch.Generator().manual_seed(0)
    train = Split("train", torch.randn(60, 4, generator=generator), torch.arange(60) % 3)
    guard = InputGuard().fit(train)
    tensors = {"low": guard.low_, "high": guard.high_, **{f"state.{k}": v for k, v in guard.state_.items()}}
    header = {
        "input_shape": [4],
        "score": guard.score_,
        "threshold": guard.threshold_,
        "fpr": 0.05,
        "range_tolerance": 0.1,
        "seed": 0,
        "member_names": [],
        "val_auroc": guard.val_auroc_,
    }
    return tensors, header


GUARD_TENSORS, GUARD_HEADER = _guard_parts()
GUARD = _safetensors_bytes(GUARD_TENSORS, "modelfusion.guard", GUARD_HEADER)


def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save(_state(), buffer)
    return buffer.getvalue()


def _skops_bytes() -> bytes:
    estimator = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], [0, 1, 1])
    return sio.dumps(estimator)


def _combiner_bytes(tmp: Path) -> bytes:
    from modelfusion.predictions import Predictions as P

    preds = P(torch.randn(2, 20, 3), torch.arange(20) % 3, ("a", "b"), "classification", "val")
    path = save_combiner(make_combiner("weighted").fit(preds), tmp / "c.safetensors")
    return path.read_bytes()


CONFIG = (
    "merge_method: ties\nbase_model: m0.safetensors\nmodels:\n  - model: m1.safetensors\n"
    "    parameters: {weight: 1.0, density: 0.5}\nparameters: {normalize: true}\ndtype: float32\n"
)


ADAPTER_TENSORS = {
    "base_model.model.w.lora_A.weight": torch.ones(2, 3),
    "base_model.model.w.lora_B.weight": torch.ones(4, 2),
    "base_model.model.e.lora_embedding_A": torch.ones(2, 5),
    "base_model.model.e.lora_embedding_B": torch.ones(3, 2),
    "base_model.model.head.weight": torch.ones(4),
    "base_model.model.w.lora_B.bias": torch.ones(4),
}
ADAPTER_CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "rank_pattern": {"e": 2}, "alpha_pattern": {}}
ADAPTER = _safetensors_bytes(ADAPTER_TENSORS, "format", "pt")


def _per_task_bytes() -> bytes:
    base = {"w": torch.zeros(3, 5), "n": torch.tensor(2)}
    tunes = [{"w": torch.randn(3, 5, generator=torch.Generator().manual_seed(i)), "n": torch.tensor(2)} for i in (1, 2)]
    merged = merge_per_task(tunes, base=base, tasks=["a", "b"])
    tensors = {f"base.{k}": v for k, v in merged.base.items()} | {f"unified.{k}": v for k, v in merged.unified.items()}
    from modelfusion.merge.per_task import _pack

    tensors |= {f"mask.{i}.w": _pack(merged.masks[t]["w"]) for i, t in enumerate(merged.tasks)}
    description = {"method": "emr", "tasks": ["a", "b"], "rescalers": [merged.rescalers["a"], merged.rescalers["b"]]}
    return _safetensors_bytes(tensors, "modelfusion.per_task", description)


PER_TASK = _per_task_bytes()
MOE_CONFIG = (
    "base_model: base\ngate_mode: random\nexperts_per_token: 2\nexperts:\n  - source_model: a\n"
    "    positive_prompts: [x]\n  - {source_model: b, noise_scale: 0.1}\n"
)


# -- the property ----------------------------------------------------------------------------------------
def _only_our_errors(read: Callable[[], object]) -> None:
    try:
        read()
    except ModelFusionError as err:
        assert "\n" not in str(err), str(err)


def _fuzz(strategy, check, *, slow_examples: int = SLOW_EXAMPLES):
    """Two tests of `check` over `strategy`: a quick one and a slow-marked one with `slow_examples` examples."""

    def make(examples: int):
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.function_scoped_fixture,
            ],
        )
        @given(value=strategy)
        def test(tmp_path, value):
            check(tmp_path, value)

        return test

    return make(FAST_EXAMPLES), pytest.mark.slow(make(slow_examples))


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _member_bytes(folder, data):
    _only_our_errors(lambda: load_member(_write(folder, "m.safetensors", data)))


def _member_header(folder, description):
    data = _safetensors_bytes(
        _state(), "modelfusion", description if isinstance(description, str) else json.dumps(description)
    )
    _only_our_errors(lambda: load_member(_write(folder, "h.safetensors", data)))


member_headers = json_values | st.fixed_dictionaries(
    {
        "factory": st.sampled_from(
            ["mlp", "cnn1d", "cnn2d", "spliced", "compressed", "os:system", "modelfusion.models:mlp"]
        )
        | st.text(max_size=8),
        "factory_kwargs": st.dictionaries(
            st.sampled_from([*KWARGS, "dropout", "backbone", "at", "length"]), json_values, max_size=4
        )
        | st.just(KWARGS)
        | st.fixed_dictionaries(  # a compressed checkpoint: the original's factory, a method, shrunk shapes
            {
                "model": st.just("mlp") | json_values,
                "model_kwargs": st.just(KWARGS) | json_values,
                "method": st.sampled_from(["int8", "int4", "prune-structured", "onnx-int8"]) | json_values,
                "params": st.just({}) | json_values,
            },
            optional={"shapes": json_values | st.just({"0.weight": [2, KWARGS["in_features"]]})},
        ),
    },
    optional={"name": json_values, "task": json_values | st.just("regression"), "classes": json_values},
)


def _predictions_bytes(folder, data):
    _only_our_errors(lambda: Predictions.load(_write(folder, "p.safetensors", data)))


def _predictions_header(folder, description):
    tensors = {"outputs": torch.randn(2, 3, 3), "labels": torch.tensor([0, 1, 2])}
    data = _safetensors_bytes(tensors, "modelfusion.predictions", json.dumps(description))
    _only_our_errors(lambda: Predictions.load(_write(folder, "ph.safetensors", data)))


predictions_headers = json_values | st.fixed_dictionaries(
    {
        "member_names": json_values | st.just(["a", "b"]),
        "task": json_values | st.just("classification"),
        "split": json_values,
    },
    optional={"classes": json_values},
)


def _torch_file(folder, data):
    _only_our_errors(lambda: load_member(_write(folder, "m.pt", data), factory="mlp", factory_kwargs=KWARGS))


def _skops_file(folder, data):
    _only_our_errors(lambda: load_member(_write(folder, "m.skops", data)))


def _program_file(folder, data):
    for name in ("m.pt2", "m.torchscript"):
        _only_our_errors(lambda name=name: load_member(_write(folder, name, data)))


def _guard_file(folder, data):
    _only_our_errors(lambda: InputGuard.load(_write(folder, "g.safetensors", data)).score(torch.zeros(2, 4)))


def _guard_header(folder, description):
    data = _safetensors_bytes(GUARD_TENSORS, "modelfusion.guard", json.dumps(description))
    _only_our_errors(lambda: InputGuard.load(_write(folder, "gh.safetensors", data)).check(torch.zeros(2, 4)))


def _guard_state(folder, tensors):
    data = _safetensors_bytes(tensors, "modelfusion.guard", GUARD_HEADER)
    _only_our_errors(lambda: InputGuard.load(_write(folder, "gs.safetensors", data)).check(torch.zeros(2, 4)))


_odd_tensors = st.builds(
    lambda dtype, shape, fill: torch.full(shape, fill, dtype=torch.float64).to(dtype),
    st.sampled_from([torch.float64, torch.float32, torch.int64]),
    st.lists(st.integers(0, 5), max_size=3).map(tuple),
    st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, 1.0, -1.0]),
) | st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=6).map(
    lambda values: torch.tensor(values, dtype=torch.float64)
)
# The fitted guard's tensors with some replaced by odd ones, some dropped, and stray state keys added.
guard_states = st.fixed_dictionaries(
    {k: st.just(v) | _odd_tensors for k, v in GUARD_TENSORS.items()},
).flatmap(
    lambda tensors: st.builds(
        lambda dropped, extra: {**{k: v for k, v in tensors.items() if k not in dropped}, **extra},
        st.sets(st.sampled_from(sorted(tensors)), max_size=2),
        st.dictionaries(
            st.sampled_from(["state.combined.", "state.combined.combined", "state.combined.energy"])
            | st.text(max_size=12).map(lambda t: "state.combined." + t),
            _odd_tensors,
            max_size=2,
        ),
    )
)
guard_headers = json_values | st.fixed_dictionaries(
    {k: st.just(v) | json_values for k, v in GUARD_HEADER.items()},
)


def _combiner_file(folder, data):
    _only_our_errors(lambda: load_combiner(_write(folder, "c.safetensors", data)))


def _combiner_description(folder, description):
    tensors = {"weights_": torch.tensor([0.5, 0.5])}
    data = _safetensors_bytes(tensors, "modelfusion.combiner", json.dumps(description))
    _only_our_errors(lambda: load_combiner(_write(folder, "cd.safetensors", data)))


combiner_descriptions = json_values | st.fixed_dictionaries(
    {
        "name": st.sampled_from(["weighted", "mean", "stacking", "temperature", "greedy_selection"])
        | st.text(max_size=6),
        "params": st.dictionaries(st.text(max_size=8), st.fixed_dictionaries({"json": json_values}), max_size=3),
        "fitted": st.dictionaries(
            st.sampled_from(["member_names_", "task_", "classes_", "weights_", "__class__", "fuse"])
            | st.text(max_size=6),
            st.fixed_dictionaries({"json": json_values}) | st.just({"tensor": "weights_"}) | json_values,
            max_size=5,
        ),
    }
)


def _adapter_folder(folder: Path, config: bytes, weights: bytes) -> Path:
    adapter = folder / "adapter"
    adapter.mkdir(exist_ok=True)
    _write(adapter, "adapter_config.json", config)
    _write(adapter, "adapter_model.safetensors", weights)
    return adapter


def _adapter_weights(folder, data):
    _only_our_errors(lambda: read_adapter(_adapter_folder(folder, json.dumps(ADAPTER_CONFIG).encode(), data)))


def _adapter_config(folder, config):
    text = config if isinstance(config, str) else json.dumps(config)
    _only_our_errors(lambda: read_adapter(_adapter_folder(folder, text.encode("utf-8", "surrogatepass"), ADAPTER)))


adapter_configs = json_values | st.fixed_dictionaries(
    {k: st.just(v) | json_values for k, v in ADAPTER_CONFIG.items()},
    optional={"use_rslora": json_values, "fan_in_fan_out": json_values, "use_dora": json_values},
)


def _per_task_file(folder, data):
    _only_our_errors(lambda: PerTaskMerge.load(_write(folder, "t.safetensors", data)).state_dict("a"))


def _moe_config(folder, text):
    _only_our_errors(lambda: load_moe_config(_write(folder, "moe.yaml", text.encode("utf-8", "surrogatepass"))))


def _config_text(folder, text):
    _only_our_errors(lambda: load_config(_write(folder, "c.yaml", text.encode("utf-8", "surrogatepass"))))


def _config_document(folder, document):
    models = folder / "models"
    if not models.exists():
        models.mkdir()
        for i in range(2):
            save_file({"w": torch.full((3, 2), float(i)), "e": torch.zeros(0)}, str(models / f"m{i}.safetensors"))
    text = yaml.safe_dump(document) if not isinstance(document, str) else document
    config = _write(models, "c.yaml", text.encode())
    _only_our_errors(lambda: merge(config, folder / "out", dry_run=True, progress=False))


parameter_settings = (
    json_values
    | st.lists(st.floats(-2, 2) | st.integers(-2, 3), max_size=4)  # gradients
    | st.lists(  # filters
        st.fixed_dictionaries(
            {"value": json_values}, optional={"filter": st.sampled_from(["w", "*", "e"]) | json_values}
        ),
        max_size=3,
    )
)
model_names = st.sampled_from(["m0.safetensors", "m1.safetensors", "../x", "/etc/passwd"]) | st.text(max_size=6)
slice_lists = st.lists(
    st.fixed_dictionaries(
        {
            "sources": st.lists(
                st.fixed_dictionaries(
                    {"model": model_names, "layer_range": st.lists(st.integers(-2, 5), max_size=3) | json_values},
                    optional={
                        "parameters": st.dictionaries(
                            st.sampled_from(["weight", "density"]), parameter_settings, max_size=2
                        )
                    },
                ),
                max_size=3,
            )
        },
        optional={
            "parameters": st.dictionaries(st.sampled_from(["t", "lambda", "weight"]), parameter_settings, max_size=2)
        },
    ),
    max_size=2,
)

config_documents = st.text(max_size=200) | st.fixed_dictionaries(
    {
        "merge_method": st.sampled_from(
            ["linear", "ties", "slerp", "task_arithmetic", "dare_ties", "model_stock", "passthrough", "nuslerp"]
        )
        | st.text(max_size=6)
    },
    optional={
        "models": st.lists(
            st.fixed_dictionaries(
                {"model": model_names},
                optional={
                    "parameters": st.dictionaries(
                        st.sampled_from(["weight", "density", "t", "gamma"]), parameter_settings, max_size=2
                    )
                },
            ),
            max_size=3,
        ),
        "base_model": st.sampled_from(["m0.safetensors", "m1.safetensors"]) | json_values,
        "slices": slice_lists,
        "tokenizer_source": st.sampled_from(["base", "union"]) | json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["t", "normalize", "lambda", "rescale", "int8_mask"]) | st.text(max_size=5),
            parameter_settings,
            max_size=3,
        ),
        "dtype": json_values | st.sampled_from(["float16", "bfloat16"]),
        "random_seed": json_values,
        "shard_size": json_values,
        "align": json_values,
    },
)

COMMANDS = [
    "predict",
    "ensemble",
    "evaluate",
    "merge",
    "extract-lora",
    "merge-adapters",
    "moe",
    "align",
    "distill",
    "splice",
    "finetune",
    "cascade",
    "compress",
    "report",
    "guard",  # with "fit" and "check" among the values; "clean" and "auto" train members, too slow to fuzz
]
OPTIONS = [
    "--out",
    "--seed",
    "--dataset",
    "--split",
    "--method",
    "--factory",
    "--factory-kwargs",
    "--trust-type",
    "--val-preds",
    "--test-preds",
    "--json",
    "--dry-run",
    "--overwrite",
    "--report",
    "--student",
    "--teacher",
    "--offline",
    "--epochs",
    "--lr",
    "--batch-size",
    "--loss",
    "--hint",
    "--weights",
    "--combiner",
    "--samples",
    "--resume",
    "--checkpoint-dir",
    "--no-progress",
    "--loss-params",
    "--at",
    "--num-outputs",
    "--schedule",
    "--per-class",
    "--costs",
    "--target-accuracy",
    "--budget",
    "--amount",
    "--group-size",
    "--recover-epochs",
    "--fpr",
    "--score",
    "--inputs",
]
VALUES = [
    "fit",
    "check",
    "-1",
    "0",
    "1",
    "1e400",
    "nan",
    "digits",
    "wine",
    "nope",
    "x.safetensors",
    "out",
    "{}",
    "[1]",
    '{"hidden": [1]}',
    "a=b",
    "mlp",
    "os:system",
    "",
    "..",
    "/",
    "val",
    "all",
    "weighted",
    "99999999999999999999",
    "\x00",
]


def _cli_arguments(folder, argv):
    for name, data in (("bad.safetensors", b"\x08" + bytes(7) + b"{}"), ("bad.yaml", b"merge_method: [")):
        if not (folder / name).exists():
            _write(folder, name, data)
    argv = [
        a.replace("FILE", str(folder / "bad.safetensors")).replace("CONFIG", str(folder / "bad.yaml")) for a in argv
    ]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(app, argv)
    finally:
        os.chdir(cwd)
    assert result.exit_code in (0, 2), (argv, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, result.exception)
    assert "Traceback" not in result.output


def _results_bytes(folder, data):
    _only_our_errors(lambda: load_results(_write(folder, "results.json", data)))


def _results_document(folder, document):
    _only_our_errors(lambda: parse_results(document))


def _with_replacement(original, key_path: list, value):
    """A deep copy of `original` with the entry at `key_path` (dict keys, list indices) set to `value`."""
    copy = json.loads(json.dumps(original))
    target = copy
    for key in key_path[:-1]:
        target = target[key]
    target[key_path[-1]] = value
    return copy


def _entries(document, path=()):
    """The path to every entry of a JSON document."""
    yield list(path)
    children = (
        document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    )
    for key, child in children:
        yield from _entries(child, (*path, key))


# The real writers' results (results_samples.py), made when a test first draws from them, not at collection.
RESULTS = {"auto": auto_results, "ensemble": ensemble_results}


@functools.cache
def _results_entries(shape: str) -> tuple[dict, list]:
    """The results of `shape` and the path to each of their entries (walked once)."""
    document = RESULTS[shape]()
    return document, list(_entries(document))[1:]


odd_numbers = st.sampled_from([float("nan"), float("inf"), -float("inf"), 0, -1, 1e308, 10**400, True, ""])
results_documents = (
    st.sampled_from(sorted(RESULTS))
    .flatmap(
        lambda shape: st.tuples(st.just(shape), st.sampled_from(_results_entries(shape)[1]), json_values | odd_numbers)
    )
    .map(lambda drawn: _with_replacement(_results_entries(drawn[0])[0], drawn[1], drawn[2]))
    | json_values
)


cli_argvs = st.tuples(
    st.sampled_from(COMMANDS),
    st.lists(st.sampled_from(OPTIONS) | st.sampled_from([*VALUES, "FILE", "CONFIG"]) | st.text(max_size=6), max_size=8),
).map(lambda parts: [parts[0], *parts[1]])


test_member_bytes, test_member_bytes_slow = _fuzz(_file_contents(MEMBER), _member_bytes)
test_member_header, test_member_header_slow = _fuzz(member_headers, _member_header)
test_predictions_bytes, test_predictions_bytes_slow = _fuzz(_file_contents(PREDICTIONS), _predictions_bytes)
test_predictions_header, test_predictions_header_slow = _fuzz(predictions_headers, _predictions_header)
test_torch_file, test_torch_file_slow = _fuzz(_file_contents(_torch_zip()), _torch_file)
test_skops_file, test_skops_file_slow = _fuzz(_file_contents(_skops_bytes()), _skops_file)
test_program_file, test_program_file_slow = _fuzz(_file_contents(_torch_zip()), _program_file)
test_guard_file, test_guard_file_slow = _fuzz(_file_contents(GUARD), _guard_file)
test_guard_header, test_guard_header_slow = _fuzz(guard_headers, _guard_header)
test_guard_state, test_guard_state_slow = _fuzz(guard_states, _guard_state)
test_combiner_description, test_combiner_description_slow = _fuzz(combiner_descriptions, _combiner_description)
test_config_text, test_config_text_slow = _fuzz(
    st.text(max_size=300) | _mutations(CONFIG.encode()).map(lambda b: b.decode("utf-8", "replace")), _config_text
)
test_config_document, test_config_document_slow = _fuzz(config_documents, _config_document)
test_adapter_weights, test_adapter_weights_slow = _fuzz(_file_contents(ADAPTER), _adapter_weights)
test_adapter_config, test_adapter_config_slow = _fuzz(adapter_configs, _adapter_config)
test_per_task_file, test_per_task_file_slow = _fuzz(_file_contents(PER_TASK), _per_task_file)
test_moe_config, test_moe_config_slow = _fuzz(
    st.text(max_size=300) | _mutations(MOE_CONFIG.encode()).map(lambda b: b.decode("utf-8", "replace")), _moe_config
)
# Each example runs a whole command (186 s for 10,000 in CI); a quarter keeps the suite within its 15 minutes.
test_cli_arguments, test_cli_arguments_slow = _fuzz(cli_argvs, _cli_arguments, slow_examples=SLOW_EXAMPLES // 4)
test_results_bytes, test_results_bytes_slow = _fuzz(
    st.deferred(lambda: st.one_of(*(_file_contents(json.dumps(made()).encode()) for made in RESULTS.values()))),
    _results_bytes,
)
test_results_document, test_results_document_slow = _fuzz(results_documents, _results_document)


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(document=results_documents.filter(lambda d: isinstance(d, dict) and "chosen" in d))
def test_results_that_read_also_render(document):
    """Rendering (matplotlib for each figure, so few examples) of results the reader accepts, odd numbers and all."""
    try:
        results = parse_results(document)
    except ModelFusionError:
        return
    _only_our_errors(lambda: render_report(results))


@pytest.fixture(scope="module")
def combiner_original(tmp_path_factory):
    return _combiner_bytes(tmp_path_factory.mktemp("combiner"))


@settings(max_examples=FAST_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_combiner_file(tmp_path, combiner_original, data):
    _combiner_file(tmp_path, data.draw(_file_contents(combiner_original)))


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_combiner_file_slow(tmp_path, combiner_original, data):
    _combiner_file(tmp_path, data.draw(_file_contents(combiner_original)))


@pytest.fixture(scope="module")
def onnx_original():
    from modelfusion.compress.onnx import export_int8
    from modelfusion.io.onnx import with_metadata

    torch.manual_seed(0)
    graph = export_int8(mlp(**KWARGS).eval(), torch.randn(4, KWARGS["in_features"]))
    return with_metadata(graph.model_bytes, {"name": "m", "task": "classification", "classes": [0, 1, 2]})


def _onnx_file(folder, data):
    def read_and_run():
        load_member(_write(folder, "m.onnx", data)).predict(torch.zeros(2, KWARGS["in_features"]))

    _only_our_errors(read_and_run)


@settings(max_examples=FAST_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_onnx_file(tmp_path, onnx_original, data):
    _onnx_file(tmp_path, data.draw(_file_contents(onnx_original)))


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_onnx_file_slow(tmp_path, onnx_original, data):
    _onnx_file(tmp_path, data.draw(_file_contents(onnx_original)))
