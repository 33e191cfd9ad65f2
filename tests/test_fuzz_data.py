"""Property-based fuzzing of the data readers and the transformers folder reader, like tests/test_fuzz.py: whatever
a file holds, load_data / load_member give a valid result or a one-line `ModelFusionError`, never another
exception."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from modelfusion.datasets import load_data, prepare_inputs
from modelfusion.io import load_member
from modelfusion.preprocessing import preprocessing_from_dict

from .test_fuzz import SLOW_EXAMPLES, _file_contents, _fuzz, _mutations, _only_our_errors, _write, json_values

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _npz_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    X, y = rng.random((12, 3)), np.arange(12) % 2
    np.savez_compressed(buffer, X=X[:8], y=y[:8], X_test=X[8:], y_test=y[8:])
    return buffer.getvalue()


def _csv_text() -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["age", "colour", "score", "split", "label"])
    for i in range(12):
        writer.writerow([20 + i if i % 5 else "", ["red", "blue"][i % 2] if i % 7 else "NA", i / 3, "train", i % 2])
    return out.getvalue()


def _parquet_bytes() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    table = pa.table({"a": [1.0, None, 3.0, 4.0] * 3, "b": ["x", "y", None, "x"] * 3, "label": [0, 1, 0, 1] * 3})
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


NPZ, CSV, PARQUET = _npz_bytes(), _csv_text(), _parquet_bytes()
PNG, JPEG = _image_bytes("PNG"), _image_bytes("JPEG")


def _npz_file(folder, data):
    _only_our_errors(lambda: load_data(_write(folder, "d.npz", data)))


def _csv_file(folder, text):
    _only_our_errors(lambda: load_data(_write(folder, "d.csv", text.encode("utf-8", "surrogatepass")), target="label"))


# Tables of odd cells: numbers, words, markers of missing values, empty strings, a split column's values.
cells = (
    st.sampled_from(["", "NA", "nan", "inf", "-inf", "1e400", "?", "train", "test", "val", "x", "0", "1", "1.5"])
    | st.integers(-3, 3).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.text(max_size=5)
)
tables = st.integers(1, 4).flatmap(
    lambda width: st.tuples(
        st.lists(st.sampled_from(["a", "b", "label", "split", "target", "", "a"]), min_size=width, max_size=width),
        st.lists(st.lists(cells, min_size=width, max_size=width), max_size=12),
    )
)


def _csv_table(folder, table):
    header, rows = table
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    _csv_file(folder, out.getvalue())


def _parquet_file(folder, data):
    _only_our_errors(lambda: load_data(_write(folder, "d.parquet", data)))


def _image_folder(folder, data):
    """A two-class image folder in which one image has the fuzzed bytes."""
    root = folder / "images"
    shutil.rmtree(root, ignore_errors=True)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(PNG)
    (root / "b" / "odd.jpg").write_bytes(data)
    _only_our_errors(lambda: load_data(root))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path_factory.mktemp("hf") / "reviews"
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["n", "p"])})
    texts = [f"review number {i} was {'good' if i % 2 else 'bad'}" for i in range(12)]
    datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(12)]}, features=features).save_to_disk(
        str(folder)
    )
    return folder


def _fuzz_folder(template: Path, folder: Path, name: str, data: bytes) -> Path:
    copy = folder / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(template, copy)
    (copy / name).write_bytes(data)
    return copy


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    from .test_transformers_member import _save_bert

    folder = tmp_path_factory.mktemp("bert") / "bert"
    _save_bert(folder, seed=0)
    return folder


test_npz_file, test_npz_file_slow = _fuzz(_file_contents(NPZ), _npz_file)
test_csv_text, test_csv_text_slow = _fuzz(
    st.text(max_size=300) | _mutations(CSV.encode()).map(lambda b: b.decode("utf-8", "replace")), _csv_file
)
test_csv_table, test_csv_table_slow = _fuzz(tables, _csv_table)
test_parquet_file, test_parquet_file_slow = _fuzz(_file_contents(PARQUET), _parquet_file)
test_image_file, test_image_file_slow = _fuzz(
    _file_contents(PNG) | _mutations(JPEG), _image_folder, slow_examples=SLOW_EXAMPLES // 4
)
test_preprocessing_document, test_preprocessing_document_slow = _fuzz(
    json_values
    | st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["standardize", "table", "text", "image"]) | json_values,
            "shape": st.lists(st.integers(-1, 3), max_size=3) | json_values,
            "per_channel": json_values,
            "mean": st.lists(st.floats(), max_size=3) | json_values,
            "std": st.lists(st.floats(), max_size=3) | json_values,
            "numeric": st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["age", "score", "x"]), "median": st.floats()}),
                max_size=2,
            )
            | json_values,
            "categorical": json_values,
        }
    ),
    lambda folder, document: _only_our_errors(
        lambda: prepare_inputs(_write(folder, "new.csv", CSV.encode()), preprocessing_from_dict(document))
    ),
)


# Folders: one file of a valid folder replaced by fuzzed bytes (each example loads a whole dataset or model, so
# the slow half runs a tenth of the examples).
def _folder_fuzz(fixture: str, read, slow_examples=SLOW_EXAMPLES // 10):
    from hypothesis import HealthCheck, given, settings

    def make(examples):
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def test(tmp_path, request, data):
            template = request.getfixturevalue(fixture)
            name = data.draw(st.sampled_from(sorted(p.name for p in template.iterdir())))
            original = (template / name).read_bytes()
            if name.endswith(".json"):
                contents = _file_contents(original) | json_values.map(lambda v: json.dumps(v).encode())
                if name == "config.json":
                    config = json.loads(original)
                    contents |= st.dictionaries(st.sampled_from(sorted(config)), json_values, max_size=3).map(
                        lambda change, config=config: json.dumps({**config, **change}).encode()
                    )
            else:
                contents = _file_contents(original)
            folder = _fuzz_folder(template, tmp_path, name, data.draw(contents))
            _only_our_errors(lambda: read(folder))

        return test

    return make(60), pytest.mark.slow(make(slow_examples))


test_hf_dataset_folder, test_hf_dataset_folder_slow = _folder_fuzz("hf_folder", load_data)
test_transformers_folder, test_transformers_folder_slow = _folder_fuzz(
    "bert_folder", lambda folder: load_member(folder).predict(["good bad", "bad"])
)
