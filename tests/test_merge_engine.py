import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from modelfusion import CheckpointError, ConfigError, IncompatibleModelsError
from modelfusion.cli import app
from modelfusion.merge import METHODS, Checkpoint, merge, merge_checkpoints, merge_state_dicts
from modelfusion.merge import engine as engine_module
from modelfusion.merge.methods import register_method

from .llama import fine_tune, llama_state_dict, write_checkpoint


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A base and three fine-tunes, one of them sharded."""
    root = tmp_path_factory.mktemp("llama")
    base = llama_state_dict(seed=0)
    tunes = [fine_tune(base, seed=s) for s in (1, 2, 3)]
    write_checkpoint(root / "base", base)
    for i, state in enumerate(tunes):
        write_checkpoint(root / f"ft{i}", state, shards=3 if i == 2 else 1)
    return root, base, tunes


def _load(folder):
    checkpoint = Checkpoint(folder)
    return {name: checkpoint.read(name) for name in checkpoint.inventory()}


@pytest.mark.parametrize(
    "method, params",
    [
        ("linear", {"weight": [1, 2, 1]}),
        ("task_arithmetic", {"lambda_": 0.7}),
        ("ties", {"density": 0.3}),
        ("breadcrumbs", {"density": 0.8, "gamma": 0.05}),
        ("dare_linear", {"density": 0.5}),
    ],
)
def test_streaming_equals_in_memory(llama, tmp_path, method, params):
    root, base, tunes = llama
    uses_base = method != "linear"
    models = [root / f"ft{i}" for i in range(3)]
    merge_checkpoints(
        models,
        tmp_path / "out",
        method,
        base=root / "base" if uses_base else None,
        params=params,
        seed=5,
        progress=False,
    )
    streamed = load_file(str(tmp_path / "out" / "model.safetensors"))
    expected = merge_state_dicts(tunes, method=method, base=base if uses_base else None, seed=5, **params)
    assert streamed.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(streamed[name], expected[name], rtol=0, atol=0)


def test_sharded_output_with_index_and_copied_config(llama, tmp_path):
    root, base, tunes = llama
    merge_checkpoints(
        [root / "ft0", root / "ft1"],
        tmp_path / "out",
        "linear",
        shard_size=4_000,
        out_dtype="bfloat16",
        progress=False,
    )
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted({f for f in index["weight_map"].values()})
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(base)
    merged = _load(tmp_path / "out")
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    expected = merge_state_dicts(tunes[:2], method="linear")
    torch.testing.assert_close(merged["lm_head.weight"], expected["lm_head.weight"].bfloat16())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_dry_run_reads_no_tensor_and_writes_nothing(llama, tmp_path, monkeypatch):
    root, _, _ = llama
    monkeypatch.setattr(Checkpoint, "read", lambda *a: pytest.fail("dry run read a tensor"))
    plan = merge_checkpoints(
        [root / "ft0", root / "ft1"],
        tmp_path / "out",
        "ties",
        base=root / "base",
        params={"density": 0.5},
        dry_run=True,
    )
    assert not (tmp_path / "out").exists()
    assert plan.num_tensors == len(llama_state_dict()) and "compatibility: OK" in plan.describe()


def test_interrupted_merge_leaves_nothing(llama, tmp_path, monkeypatch):
    root, _, _ = llama
    calls = {"n": 0}
    original = engine_module.METHODS["linear"]

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setitem(engine_module.METHODS._items, "linear", dataclasses.replace(original, function=failing))
    with pytest.raises(KeyboardInterrupt):
        merge_checkpoints([root / "ft0", root / "ft1"], tmp_path / "out", "linear", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_incompatible_checkpoints_are_listed_by_name(llama, tmp_path):
    root, _, _ = llama
    write_checkpoint(tmp_path / "wide", llama_state_dict(hidden=24))
    write_checkpoint(tmp_path / "vocab", llama_state_dict(vocab=60))
    with pytest.raises(
        IncompatibleModelsError, match=r"(?s)model\.layers\.0\.self_attn\.q_proj\.weight: shape \(16, 16\)"
    ):
        merge_checkpoints([root / "ft0", tmp_path / "wide"], tmp_path / "out", "linear")
    with pytest.raises(IncompatibleModelsError, match="vocabulary sizes differ: 50 vs 60"):
        merge_checkpoints([root / "ft0", tmp_path / "vocab"], tmp_path / "out", "linear")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        merge_checkpoints([root / "ft0", tmp_path / "missing"], tmp_path / "out", "linear")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="cannot read it as safetensors"):
        merge_checkpoints([root / "ft0", tmp_path / "broken.safetensors"], tmp_path / "out", "linear")
    assert not (tmp_path / "out").exists()


CONFIG = """
merge_method: ties
base_model: base
models:
  - model: ft0
    parameters: {weight: 1.0, density: 0.5}
  - model: ft1
    parameters: {weight: 0.5, density: 0.5}
parameters:
  normalize: true
  lambda: 0.9
dtype: float32
"""


def test_mergekit_style_config_runs_unchanged(llama, tmp_path):
    root, base, tunes = llama
    config = root / "ties.yaml"
    config.write_text(CONFIG)
    merge(config, tmp_path / "out", progress=False)
    expected = merge_state_dicts(
        tunes[:2], method="ties", base=base, weight=[1.0, 0.5], density=[0.5, 0.5], lambda_=0.9
    )
    merged = _load(tmp_path / "out")
    for name in expected:
        torch.testing.assert_close(merged[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "text, match",
    [
        (CONFIG.replace("merge_method", "merge_methd"), "unknown key 'merge_methd'"),
        (
            CONFIG.replace("density: 0.5}", "density: 0.5, dnsity: 1}", 1),
            "unknown key 'models.0.parameters.dnsity'|per-model parameters \\['dnsity'\\]",
        ),
        (CONFIG.replace("ties", "tiez"), "unknown merge method 'tiez'"),
        (CONFIG + "slices:\n  - sources: []\n", "slices.0.sources: List should have at least 1 item"),
        (CONFIG + "slices:\n  - sources: [{model: ft0, layer_range: [0, 2]}]\n", "either models or slices"),
        (CONFIG + "modules: {}\n", "modules .* not supported yet"),
        (CONFIG + "tokenizer_source: union\n", "tokenizer_source 'union' is not supported yet; 'base' is"),
        (CONFIG.replace("lambda: 0.9", "lambda: {fltr: mlp, value: 2}"), "a condition is a mapping with 'value'"),
        (CONFIG.replace("lambda: 0.9", "lambda: [[1, 2]]"), "must be a value or a list of values"),
        (CONFIG.replace("dtype: float32", "dtype: float8"), "dtype"),
        ("merge_method: [", "not valid YAML"),
    ],
)
def test_config_errors_name_the_field(llama, tmp_path, text, match):
    config = llama[0] / f"bad_{abs(hash(text))}.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=match):
        merge(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_merge_and_dry_run(llama, tmp_path):
    root, _, _ = llama
    config = root / "cli.yaml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(app, ["merge", str(config), str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "merge method 'ties' over 2 models" in result.output and not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["merge", str(config), str(tmp_path / "out")])
    assert result.exit_code == 0 and (tmp_path / "out" / "model.safetensors").exists()
    config.write_text(CONFIG.replace("merge_method", "merge_methd"))
    result = CliRunner().invoke(app, ["merge", str(config), str(tmp_path / "again")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "unknown key 'merge_methd'" in result.output


@pytest.mark.parametrize(
    "method, params",
    [
        ("linear", {"weight": [1, 2, 1]}),
        ("task_arithmetic", {"lambda_": 0.5}),
        ("ties", {"density": 0.3}),
        ("breadcrumbs", {"density": 0.8, "gamma": 0.05}),
        ("task_arithmetic", {"sparsification": "magnitude", "density": 0.4, "rescale": "l1"}),
    ],
)
def test_methods_stream_blocks_of_rows(llama, tmp_path, monkeypatch, method, params):
    """Tensors bigger than a block are merged a few rows at a time, with the same result: entry-wise methods
    directly, trimmed task vectors after one pass that ranks the whole |delta| of one model at a time."""
    root, base, tunes = llama
    monkeypatch.setattr(engine_module, "_CHUNK_BYTES", 256)  # 4 rows of 16 floats per block
    reads = []
    original = Checkpoint.read
    monkeypatch.setattr(
        Checkpoint, "read", lambda self, name, rows=None: reads.append(rows) or original(self, name, rows)
    )
    merge_checkpoints(
        [root / f"ft{i}" for i in range(3)],
        tmp_path / "out",
        method,
        base=None if method == "linear" else root / "base",
        params=params,
        progress=False,
    )
    assert any(r is not None and r.stop - r.start == 4 for r in reads)
    expected = merge_state_dicts(tunes, method=method, base=None if method == "linear" else base, **params)
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(merged[name], expected[name], rtol=0, atol=1e-7)


TAKES = {"slerp": 1, "nearswap": 1, "passthrough": 1, "nuslerp": 2}  # models besides the base; else 3


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_streams_tall_tensors_in_blocks_of_rows_as_it_merges_in_memory(llama, tmp_path, monkeypatch, name):
    """Bounded memory for every method: a tensor larger than a block is read a few rows at a time, never whole
    (methods that need whole-tensor statistics gather them in passes over the rows first), and the result is
    the in-memory merge's up to the order of float64 sums."""
    root, base, tunes = llama
    method = METHODS[name]
    count = TAKES.get(name, 3)
    params = {"density": 0.5} if "density" in method.parameters else {}
    if "weight" in method.parameters:
        params["weight"] = [1.0 + i for i in range(count)]
    with_base = method.base != "none"
    monkeypatch.setattr(engine_module, "_CHUNK_BYTES", 256)  # 4 rows of 16 floats per block
    reads = []
    original = Checkpoint.read
    monkeypatch.setattr(
        Checkpoint, "read", lambda self, name, rows=None: reads.append((name, rows)) or original(self, name, rows)
    )
    merge_checkpoints(
        [root / f"ft{i}" for i in range(count)],
        tmp_path / "out",
        name,
        base=root / "base" if with_base else None,
        params=params,
        seed=3,
        progress=False,
    )
    embedding = "model.embed_tokens.weight"  # [50, 16]: 13 blocks of 4 rows
    assert all(rows is not None and rows.stop - rows.start <= 4 for tensor, rows in reads if tensor == embedding)
    expected = merge_state_dicts(tunes[:count], name, base=base if with_base else None, seed=3, **params)
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    for tensor in expected:
        torch.testing.assert_close(merged[tensor], expected[tensor], rtol=0, atol=2e-7, msg=tensor)


def test_a_method_registered_outside_the_package_runs_streamed_in_memory_and_from_a_config(llama, tmp_path):
    root, _, tunes = llama

    def elementwise_max(tensors, base=None, *, margin: float = 0.0):
        return torch.stack(tensors).amax(0) + margin

    register_method("test_max", rows_separable=True, reference="this test")(elementwise_max)
    try:
        merge_checkpoints(
            [root / "ft0", root / "ft1"], tmp_path / "out", "test_max", params={"margin": 0.5}, progress=False
        )
        merged = _load(tmp_path / "out")
        for name, tensor in tunes[0].items():
            if tensor.is_floating_point():
                torch.testing.assert_close(merged[name], torch.maximum(tensor, tunes[1][name]) + 0.5)
        in_memory = merge_state_dicts(tunes[:2], method="test_max", margin=0.5)
        assert all(torch.equal(in_memory[name], merged[name]) for name in merged)
        config = tmp_path / "max.yaml"
        config.write_text(
            f"merge_method: test_max\nmodels:\n  - model: {root / 'ft0'}\n  - model: {root / 'ft1'}\n"
            "parameters: {margin: 0.5}\n"
        )
        merge(config, tmp_path / "from_config", progress=False)
        assert all(torch.equal(_load(tmp_path / "from_config")[name], merged[name]) for name in merged)
        with pytest.raises(ConfigError, match="'test_max' has no parameter 'weight'; it takes margin"):
            merge_checkpoints([root / "ft0"], tmp_path / "bad", "test_max", params={"weight": 1}, progress=False)
    finally:
        METHODS.unregister("test_max")


def test_slice_errors_name_the_config_file(tmp_path):
    golden = Path(__file__).parent / "golden" / "mergekit"
    config = tmp_path / "frankenmerge.yaml"
    config.write_text(
        f"slices: [{{sources: [{{model: {golden / 'ft4_0'}, layer_range: [0, 9]}}]}}]\nmerge_method: passthrough\n"
    )
    with pytest.raises(
        ConfigError, match=r"frankenmerge.yaml: slice 0: layer_range \[0, 9\] of .* outside its 4 layers"
    ):
        merge(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
