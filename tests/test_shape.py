"""The code's shape, kept: imports point down the floors of DESIGN.md, and no import circle between files or
packages of src/ (bench/shape.py finds them, lazy imports included)."""

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


def test_no_import_points_up_a_floor_and_no_circle_between_packages():
    shape = _shape()
    graph = shape.import_graph()
    assert shape.upward_imports(graph) == []
    assert shape.circles(shape.package_graph(graph)) == []


def test_an_upward_import_inside_a_function_is_found(tmp_path):
    """A lazy import hides an arrow from Python, not from the check: a foundation module that imports `auto`
    inside a function, and `report` under TYPE_CHECKING, are both upward."""
    shape = _shape()
    package = tmp_path / "modelfusion"
    (package / "auto").mkdir(parents=True)
    (package / "report").mkdir()
    (package / "__init__.py").write_text("")
    (package / "auto" / "__init__.py").write_text("from ..errors import Oops\n")
    (package / "report" / "__init__.py").write_text("")
    (package / "errors.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .report import Results\n"
        "class Oops(Exception):\n    def hint(self):\n        from .auto import auto\n        return auto\n"
    )
    graph = shape.import_graph(package)
    assert shape.upward_imports(graph) == [
        ("modelfusion.errors", "modelfusion.auto"),
        ("modelfusion.errors", "modelfusion.report"),
    ]
    assert shape.circles(graph) == [["modelfusion.auto", "modelfusion.errors"]]
    assert shape.circles(shape.package_graph(graph)) == [["auto", "errors"]]


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


def test_a_factory_a_family_registers_loads_from_a_file_that_names_it(tmp_path, digits, trained_mlp):
    """`MODELS` (the foundation) never imports a family: a file naming "spliced" imports features/splice.py,
    which registers it, through the entry point that names the module (pyproject.toml)."""
    import subprocess
    import sys

    from modelfusion.features import spliced_member
    from modelfusion.io import save_member
    from modelfusion.members import TorchMember

    from .conftest import MLP_KWARGS

    member = TorchMember(trained_mlp, name="mlp", factory="mlp", factory_kwargs=MLP_KWARGS)
    spliced = spliced_member(member, 3, at="1", example_input=digits.train.X[:2])
    path = save_member(spliced, tmp_path / "spliced.safetensors")
    code = (
        "import sys, torch, modelfusion.io\n"
        "before = 'modelfusion.features' in sys.modules\n"
        f"member = modelfusion.io.load_member({str(path)!r})\n"
        "print(before, 'modelfusion.features' in sys.modules, tuple(member.predict(torch.zeros(2, 64)).shape))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.split() == ["False", "True", "(2,", "3)"]


def test_a_registry_imports_what_an_entry_point_names_on_first_lookup():
    import json
    from importlib.metadata import EntryPoint

    import pytest

    from modelfusion.errors import UnknownNameError
    from modelfusion.registry import Registry

    registry = Registry("thing", plugins="modelfusion.tests")
    registry.__dict__["_entry_points"] = {"dumps": EntryPoint("dumps", "json:dumps", "modelfusion.tests")}
    assert "dumps" in registry and registry.names() == ["dumps"] and registry.registered() == {}
    assert registry["dumps"] is json.dumps and registry.registered() == {"dumps": json.dumps}
    with pytest.raises(UnknownNameError, match="unknown thing 'loads'; valid names: dumps"):
        registry["loads"]


def test_adding_an_auto_family_takes_one_file():
    """bench/shape.py's table: a plugin of one file, outside the package, registers a family that requires the
    output family, and `auto` runs it after that family, in a fresh interpreter."""
    assert _shape().files_to_add_one("an auto family") == "1 (no package file)"
