"""The code's shape, kept: no import circle between files of src/ (bench/shape.py finds them)."""

import importlib.util
from pathlib import Path

SHAPE = Path(__file__).resolve().parents[1] / "bench" / "shape.py"


def _shape():
    spec = importlib.util.spec_from_file_location("shape", SHAPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle_between_files_of_src():
    shape = _shape()
    assert shape.circles(shape.import_graph()) == []


def test_the_circle_finder_finds_a_planted_circle():
    shape = _shape()
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert shape.circles(graph) == [["a", "b", "c"]]
    graph = shape.import_graph()
    assert "modelfusion.merge.methods.base" in graph["modelfusion.merge.methods.averaging"]


def test_the_command_line_starts_without_torch():
    """`modelfusion --help` stays fast: no command imports torch (or scikit-learn) before it runs."""
    import subprocess
    import sys

    code = "import sys, modelfusion.cli; print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.strip() == "[]"


def test_merging_and_loading_import_neither_scikit_learn_nor_matplotlib():
    """A merge of big checkpoints keeps its memory for tensors: the merge engine and the readers do not pull in
    the evaluation and plotting stack (about 65 MB of it)."""
    import subprocess
    import sys

    code = (
        "import sys, modelfusion.merge, modelfusion.io; "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'modelfusion.features') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.strip() == "[]"
