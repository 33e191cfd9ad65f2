"""load_data and Dataset.from_arrays: every format, splits, preprocessing fitted on train only, bad input."""

import csv
import os
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from modelfusion import ConfigError, DataError, MissingExtraError
from modelfusion.datasets import Dataset, _raw, load_data, load_dataset, prepare_inputs
from modelfusion.preprocessing import preprocessing_from_dict
from modelfusion.readers import files as reader_files
from modelfusion.texts import Texts


def _table_rows(n=240, seed=0):
    """Rows of a small mixed table: a number with gaps, a category with gaps, a plain number, a label."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = "" if i % 7 == 0 else str(int(rng.integers(20, 60)))
        colour = "NA" if i % 11 == 0 else str(rng.choice(["red", "blue", "green"]))
        score = f"{rng.normal() + i * 1e-3:.6f}"  # distinct, so that a row can be found again by its score
        label = "yes" if (float(score) > 0) ^ (colour == "red") else "no"
        rows.append([age, colour, score, label])
    return ["age", "colour", "score", "label"], rows


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("name", ["digits", "wine", "diabetes", "mnist1d"])
def test_an_npz_of_an_embedded_dataset_gives_the_same_splits_and_numbers(tmp_path, name):
    raw = _raw(name)
    arrays = {"X": raw.X, "y": raw.y}
    if raw.X_test is not None:
        arrays.update(X_test=raw.X_test, y_test=raw.y_test)
    np.savez(tmp_path / "mine.npz", **arrays)
    mine, embedded = load_data(tmp_path / "mine.npz", seed=2, task=raw.task), load_dataset(name, seed=2)
    for split in ("train", "val", "test"):
        assert torch.equal(mine.split(split).X, embedded.split(split).X)
        assert torch.equal(mine.split(split).y, embedded.split(split).y)
    assert mine.task == embedded.task and mine.name == "mine"


def test_kind_is_told_by_shape_and_by_neighbouring_columns(tmp_path):
    raw = _raw("mnist1d")
    np.savez(tmp_path / "signals.npz", X=raw.X, y=raw.y)
    signals = load_data(tmp_path / "signals.npz")
    assert signals.kind == "sequence" and signals.image_shape == (1, 40)
    X, y = make_classification(600, 40, n_informative=20, n_classes=5, random_state=0)
    assert Dataset.from_arrays(X, y).kind == "tabular"
    images = Dataset.from_arrays(np.random.default_rng(0).random((60, 3, 8, 8)), np.arange(60) % 3, as_images=True)
    assert images.kind == "image" and images.train.X.shape[1:] == (3, 8, 8) and images.image_shape == (3, 8, 8)
    gray = Dataset.from_arrays(np.random.default_rng(0).random((60, 12, 12)), np.arange(60) % 3)
    assert gray.kind == "image" and gray.image_shape == (1, 12, 12) and gray.train.X.shape[1:] == (144,)
    # Per-channel statistics of the training images: each channel has mean 0 and std 1 over train.
    pixels = images.train.X.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(pixels.mean(1), torch.zeros(3), atol=1e-5)
    assert Dataset.from_arrays(X, y, kind="sequence").image_shape == (1, 40)


def test_npz_splits_the_file_fixes_are_kept_and_keras_names_read(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.random((90, 28, 28)).astype(np.float32), np.arange(90) % 3
    np.savez(tmp_path / "mnist.npz", x_train=X[:60], y_train=y[:60], x_test=X[60:], y_test=y[60:])
    data = load_data(tmp_path / "mnist.npz")
    assert (len(data.train), len(data.val), len(data.test)) == (48, 12, 30)
    assert data.kind == "image" and data.image_shape == (1, 28, 28)
    np.savez(tmp_path / "fixed.npz", X=X[:50], y=y[:50], X_val=X[50:70], y_val=y[50:70], X_test=X[70:], y_test=y[70:])
    fixed = load_data(tmp_path / "fixed.npz", seed=5)
    assert (len(fixed.train), len(fixed.val), len(fixed.test)) == (50, 20, 20)
    assert torch.equal(fixed.test.y, torch.as_tensor(y[70:]))


def test_splits_are_stratified_seeded_and_disjoint():
    X, y = make_classification(1000, 10, n_informative=5, n_classes=4, weights=[0.5, 0.3, 0.15, 0.05], random_state=1)
    a, b, c = (Dataset.from_arrays(X, y, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.train.X, b.train.X) and not torch.equal(a.train.X, c.train.X)
    shares = [np.bincount(s.y.numpy(), minlength=4) / len(s) for s in (a.train, a.val, a.test)]
    assert np.abs(shares[0] - shares[2]).max() < 0.02 and np.abs(shares[0] - shares[1]).max() < 0.02
    assert (len(a.train), len(a.val), len(a.test)) == (600, 200, 200)
    rows = {tuple(np.round(r, 6)) for s in (a.train, a.val, a.test) for r in s.X.numpy()}
    assert len(rows) == 1000  # no row in two splits


def _sklearn_reference(train_rows, rows):
    """scikit-learn's imputers, scaler and one-hot encoder fitted on `train_rows`, applied to `rows`."""

    def numbers(rs):
        return np.array([[float(r[0]) if r[0] else np.nan, float(r[2])] for r in rs])

    def categories(rs):
        return np.array([[r[1] if r[1] != "NA" else None] for r in rs], dtype=object)

    numeric = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler())
    categorical = make_pipeline(
        SimpleImputer(strategy="most_frequent", missing_values=None),
        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
    )
    numeric.fit(numbers(train_rows))
    categorical.fit(categories(train_rows))
    return np.hstack([numeric.transform(numbers(rows)), categorical.transform(categories(rows))])


def test_a_csv_is_imputed_one_hot_encoded_and_standardized_like_scikit_learn_fitted_on_train_only(tmp_path):
    header, rows = _table_rows()
    data = load_data(_write_csv(tmp_path / "people.csv", header, rows), target="label", seed=1)
    assert data.kind == "tabular" and data.class_names == ("no", "yes")
    assert data.feature_names == ("age", "score", "age (missing)", "colour=blue", "colour=green", "colour=red")
    # Which rows went to train: the numbers identify them (score is unique per row).
    scores = np.array([float(r[2]) for r in rows])
    score = data.preprocessing.numeric[1]

    def rows_of(split):
        return [rows[int(np.argmin(np.abs(scores - (v * score.std + score.mean))))] for v in split.X[:, 1].tolist()]

    train_rows, test_rows = rows_of(data.train), rows_of(data.test)
    assert len({r[2] for r in train_rows}) == len(train_rows)
    expected = _sklearn_reference(train_rows, test_rows)
    np.testing.assert_allclose(data.test.X.numpy(), expected, atol=1e-5)
    # The test rows never reach the fit: changing them leaves the preprocessing as it was.
    test_keys = {r[2] for r in test_rows}
    changed = [[("999" if r[0] else ""), "purple", r[2], r[3]] if r[2] in test_keys else r for r in rows]
    again = load_data(_write_csv(tmp_path / "changed.csv", header, changed), target="label", seed=1)
    assert again.preprocessing == data.preprocessing and torch.equal(again.train.X, data.train.X)
    assert torch.all(again.test.X[:, 3:] == 0)  # an unseen category encodes as all zeros


def test_the_preprocessing_applies_to_new_files_and_survives_json(tmp_path):
    header, rows = _table_rows()
    data = load_data(_write_csv(tmp_path / "train.csv", header, rows))
    new = _write_csv(tmp_path / "new.csv", header[:3], [r[:3] for r in rows[:5]])  # no label column: features only
    X, y = data.prepare(new)
    assert y is None and X.shape == (5, 6)
    restored = preprocessing_from_dict(data.preprocessing.to_dict())
    X2, _ = prepare_inputs(new, restored)
    assert torch.equal(X, X2)
    labelled, y = data.prepare(_write_csv(tmp_path / "labelled.csv", header, rows[:5]))
    assert y.tolist() == [data.class_names.index(r[3]) for r in rows[:5]]
    _write_csv(tmp_path / "short.csv", ["age", "score"], [r[:1] + r[2:3] for r in rows[:5]])
    with pytest.raises(DataError, match="short.csv: .*no column 'colour'"):
        data.prepare(tmp_path / "short.csv")
    with pytest.raises(DataError, match="field table.numeric: Input should be a valid list"):
        preprocessing_from_dict({"kind": "table", "numeric": "x", "categorical": []})


def test_a_split_column_wins_and_a_tsv_reads_like_a_csv(tmp_path):
    header, rows = _table_rows(120)
    splits = ["train"] * 80 + ["validation"] * 20 + ["test"] * 20
    path = _write_csv(
        tmp_path / "t.tsv", [*header, "split"], [[*r, s] for r, s in zip(rows, splits, strict=True)], "\t"
    )
    data = load_data(path)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 20)
    assert "split" not in data.feature_names
    test_scores = sorted(round(float(r[2]), 3) for r in rows[100:])  # the rows the split column marks test
    std, mean = data.preprocessing.numeric[1].std, data.preprocessing.numeric[1].mean
    assert sorted(round(v * std + mean, 3) for v in data.test.X[:, 1].tolist()) == test_scores


def test_regression_is_guessed_from_many_distinct_values_and_can_be_forced(tmp_path):
    X, y = make_classification(300, 5, random_state=0)
    values = X[:, 0] * 3.7 + 1
    assert Dataset.from_arrays(X[:, 1:], values).task == "regression"
    assert Dataset.from_arrays(X, y).task == "classification"
    forced = Dataset.from_arrays(X, np.arange(300) % 4, task="regression")
    assert forced.task == "regression" and forced.train.y.dtype == torch.float32


def test_parquet_reads_like_the_same_csv(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    header, rows = _table_rows()
    from_csv = load_data(_write_csv(tmp_path / "t.csv", header, rows))
    columns = {
        "age": pa.array([float(r[0]) if r[0] else None for r in rows]),
        "colour": pa.array([None if r[1] == "NA" else r[1] for r in rows]).dictionary_encode(),
        "score": pa.array([float(r[2]) for r in rows]),
        "label": pa.array([r[3] for r in rows]),
    }
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    from_parquet = load_data(tmp_path / "t.parquet")
    assert from_parquet.preprocessing == from_csv.preprocessing
    assert torch.equal(from_parquet.test.X, from_csv.test.X)


def test_a_saved_datasets_folder_with_text_and_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    words = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "acting", "film"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 6)) for _ in range(90)]
    labels = [int(sum(t.count(w) for w in words[:3]) >= sum(t.count(w) for w in words[3:6])) for t in texts]
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": texts[:60], "label": labels[:60]}, features=features),
            "test": datasets.Dataset.from_dict({"text": texts[60:], "label": labels[60:]}, features=features),
        }
    )
    splits.save_to_disk(str(tmp_path / "reviews"))
    data = load_data(tmp_path / "reviews")
    assert data.kind == "text" and data.class_names == ("negative", "positive")
    assert isinstance(data.test.X, Texts) and list(data.test.X) == texts[60:]
    assert (len(data.train), len(data.val), len(data.test)) == (48, 12, 30)
    assert data.test.y.tolist() == labels[60:]
    assert data.train.per_class(3).X.shape == (6,)
    os.mkfifo(tmp_path / "reviews" / "train" / "notes")
    with pytest.raises(DataError, match="notes is a named pipe \\(FIFO\\)"):
        load_data(tmp_path / "reviews")
    one = datasets.Dataset.from_dict({"x1": [0.5, 1.5, 2.5] * 10, "target": [0, 1, 2] * 10})
    one.save_to_disk(str(tmp_path / "numbers"))
    assert load_data(tmp_path / "numbers").kind == "tabular"


def _image(path, size, colour, value):
    from PIL import Image

    mode = "RGB" if colour else "L"
    fill = (value, 255 - value, value // 2) if colour else value
    Image.new(mode, size, fill).save(path)


def test_an_image_folder_is_resized_to_the_common_size_and_labelled_by_folder(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "pets"
    for index, name in enumerate(["dog", "cat", "bird"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            size = (12, 10) if i else (30, 20)  # one odd size per class, resized
            _image(root / name / f"{i}.png", size, colour=index == 2, value=40 * index + i)
    (root / "cat" / "notes.txt").write_text("not an image")
    data = load_data(root, as_images=True)
    assert data.kind == "image" and data.class_names == ("bird", "cat", "dog")
    assert data.image_shape == (3, 10, 12) and data.train.X.shape[1:] == (3, 10, 12)
    assert len(data.train) + len(data.val) + len(data.test) == 24
    assert data.preprocessing.size == (12, 10) and data.preprocessing.mode == "RGB"
    X, _ = data.prepare(root / "dog")  # a folder of loose images to predict on
    assert X.shape == (8, 3, 10, 12)
    fixed = tmp_path / "fixed"
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        for name in ("a", "b"):
            (fixed / split / name).mkdir(parents=True)
            for i in range(count):
                _image(fixed / split / name / f"{i}.png", (8, 8), False, 100 * (name == "b") + i)
    data = load_data(fixed)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 6) and data.train.X.shape[1:] == (64,)


BAD_INPUTS = {
    "no target column": (lambda p: _write_csv(p / "f.csv", ["a", "b"], [["1", "2"]] * 5), "f.csv: no target column"),
    "one class": (lambda p: _write_csv(p / "f.csv", ["a", "label"], [["1", "x"]] * 9), "one class only \\('x'\\)"),
    "NaN label": (
        lambda p: _write_csv(p / "f.csv", ["a", "label"], [["1", "0"], ["2", "1"]] * 4 + [["3", "NaN"]]),
        "column 'label' line 10 has no label",
    ),
    "mixed types": (
        lambda p: _write_csv(p / "f.csv", ["a", "label"], [[str(i), str(i % 2)] for i in range(9)] + [["x", "1"]]),
        "column 'a' line 11: 'x' is not a number",
    ),
    "empty file": (lambda p: (p / "f.csv").write_bytes(b"") or p / "f.csv", "f.csv: the file is empty"),
    "header only": (lambda p: _write_csv(p / "f.csv", ["a", "label"], []), "header but no rows"),
    "ragged row": (
        lambda p: (p / "f.csv").write_text("a,label\n1,0\n2\n") and p / "f.csv",
        "line 3 has 1 fields; the header has 2",
    ),
    "not utf-8": (lambda p: (p / "f.csv").write_bytes(b"a,label\n\xff,1\n") and p / "f.csv", "not UTF-8"),
    "npz of objects": (
        lambda p: np.savez(p / "f.npz", X=np.array([{}, {}], dtype=object), y=np.zeros(2)) or p / "f.npz",
        "array 'X' has dtype object",
    ),
    "npz labels short": (
        lambda p: np.savez(p / "f.npz", X=np.zeros((5, 2)), y=np.zeros(4)) or p / "f.npz",
        "'y' has shape \\[4\\]; expected one label per row of 'X' \\(5\\)",
    ),
    "npz NaN feature": (
        lambda p: np.savez(p / "f.npz", X=np.array([[0.0], [np.nan], [1.0]]), y=np.arange(3)) or p / "f.npz",
        "'X' row 1 holds NaN",
    ),
    "npz without X": (lambda p: np.savez(p / "f.npz", a=np.zeros(3)) or p / "f.npz", "no array X \\(arrays found"),
    "free text beside features": (
        lambda p: _write_csv(
            p / "f.csv", ["note", "a", "label"], [[f"said {i} things today", str(i), str(i % 2)] for i in range(12)]
        ),
        "column 'note' holds free text beside 1 other feature columns",
    ),  # fmt: skip
    "not a zip": (lambda p: (p / "f.npz").write_bytes(b"hello") and p / "f.npz", "f.npz: not an NPZ file"),
    "unknown suffix": (lambda p: (p / "f.xlsx").write_bytes(b"x") and p / "f.xlsx", "unknown data format '.xlsx'"),
    "missing file": (lambda p: p / "nope.csv", "nope.csv: no such file \\(expected a CSV file\\)"),
    "rare class": (
        lambda p: _write_csv(p / "f.csv", ["a", "label"], [[str(i), "a" if i else "b"] for i in range(20)]),
        "class 1 has 1 training rows",
    ),
    "image that will not decode": (
        lambda p: _bad_image_folder(p),
        "broken.png: not an image Pillow can decode",
    ),
    "empty class folder": (lambda p: _empty_class_folder(p), "class folder 'b' holds no images"),
}


def _bad_image_folder(folder):
    for name in ("a", "b"):
        (folder / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            _image(folder / "imgs" / name / f"{i}.png", (4, 4), False, i)
    (folder / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder / "imgs"


def _empty_class_folder(folder):
    (folder / "imgs" / "a").mkdir(parents=True)
    (folder / "imgs" / "b").mkdir(parents=True)
    for i in range(4):
        _image(folder / "imgs" / "a" / f"{i}.png", (4, 4), False, i)
    return folder / "imgs"


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file_and_the_row_or_column(tmp_path, case):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(DataError, match=message) as info:
        load_data(path)
    assert "\n" not in str(info.value) and str(path.name) in str(info.value)


def test_special_and_huge_files_are_refused_before_reading(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="pipe.csv is a named pipe \\(FIFO\\), not a regular file"):
        load_data(fifo)  # would block forever if opened
    header, rows = _table_rows(50)
    path = _write_csv(tmp_path / "big.csv", header, rows)
    monkeypatch.setattr(reader_files, "MAX_FILE_BYTES", 100)
    with pytest.raises(DataError, match="big.csv: .* bytes, more than a CSV file may hold \\(100\\)"):
        load_data(path)


def test_arguments_are_checked(tmp_path):
    X, y = make_classification(100, 5, random_state=0)
    with pytest.raises(ConfigError, match="val \\+ test must leave rows"):
        Dataset.from_arrays(X, y, val=0.5, test=0.5)
    with pytest.raises(ConfigError, match="kind must be one of"):
        Dataset.from_arrays(X, y, kind="video")
    with pytest.raises(ConfigError, match="no image form"):
        Dataset.from_arrays(X, y, kind="tabular", as_images=True)
    with pytest.raises(ConfigError, match="texts, which have no image form"):
        Dataset.from_arrays(["a b", "c d", "e f"] * 4, [0, 1, 1] * 4, as_images=True)
    with pytest.raises(ConfigError, match="image_size must be \\(width, height\\)"):
        np.savez(tmp_path / "d.npz", X=X, y=y)
        load_data(tmp_path / "d.npz", image_size=(0, 3))
    with pytest.raises(DataError, match="mixes strings and numbers"):
        Dataset.from_arrays(X[:6], np.array(["a", 1, "b", 2, "a", 1], dtype=object))


def test_a_missing_extra_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(MissingExtraError, match="pip install 'modelfusion\\[parquet\\]'"):
        load_data(tmp_path / "t.parquet")
