"""Tables: CSV/TSV (the standard library's csv), Parquet (pyarrow) and folders saved by `datasets`'
`save_to_disk`. Each column becomes float64 numbers (NaN where a value is missing) or strings (None where
missing); the target column gives the labels and a column named `split` (train / val / test) fixes the splits.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, MissingExtraError, first_line
from .files import check_folder_files, open_data, read_data, regular_file
from .source import Source

__all__ = ["read_csv", "read_parquet", "read_hf_dataset", "is_hf_dataset", "TARGET_NAMES", "MAX_CELLS"]

# The label column when none is named: the first column called one of these (any case).
TARGET_NAMES = ("target", "label", "labels", "class", "y")
SPLIT_COLUMN = "split"
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
# pandas' default markers of a missing value, and "?" (UCI's).
MISSING = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null", "?"]
)  # fmt: skip
# Tables are read whole: at most this many values (rows x columns), checked while reading.
MAX_CELLS = 2**26
MAX_JSON_BYTES = 16 * 2**20


def _extra(module: str, extra: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs {module.split('.')[0]}: pip install 'modelfusion[{extra}]'") from None


def _parse_column(name: str, raw: Sequence[str], path: Path, line: Callable[[int], str]) -> np.ndarray:
    """Numbers (NaN for missing markers) when every value parses, strings (None for missing) when few do; a
    column that is mostly numbers with a few words is refused, naming the first word's row."""
    stripped = [value.strip() for value in raw]
    missing = [value in MISSING for value in stripped]
    words = []
    try:  # numpy parses a whole column of numbers at C speed; a column with a word falls back to one by one
        numbers = np.array(["nan" if gap else value for value, gap in zip(stripped, missing, strict=True)], float)
    except ValueError:
        numbers = np.full(len(raw), np.nan)
        for i, value in enumerate(stripped):
            if missing[i]:
                continue
            try:
                numbers[i] = float(value)
            except ValueError:
                words.append(i)
    parsed = len(raw) - len(words) - sum(missing)
    if not words:
        bad = np.isinf(numbers)
        if bad.any():
            raise DataError(f"{path}: column {name!r} {line(int(np.argmax(bad)))}: {raw[int(np.argmax(bad))]!r}")
        return numbers
    if parsed >= len(words):
        first = words[0]
        raise DataError(
            f"{path}: column {name!r} {line(first)}: {raw[first].strip()[:40]!r} is not a number, yet {parsed} of "
            "the column's values are (mixed types); fix the value or mark it missing (empty or NA)"
        )
    return np.array([None if gap else value for value, gap in zip(stripped, missing, strict=True)], dtype=object)


def read_csv(path: str | Path, *, target: str | None, labelled: bool = True, delimiter: str = ",") -> Source:
    path = Path(path)
    try:
        with open_data(path, "CSV file") as binary, io.TextIOWrapper(binary, encoding="utf-8-sig", newline="") as file:
            reader = csv.reader(file, delimiter=delimiter, strict=True)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty; expected a header row naming the columns")
            _check_header(header, path)
            rows, lines = [], []
            for row in reader:
                if not row:
                    continue  # blank lines, as pandas skips them
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} fields; the header has {len(header)}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
                if len(rows) * len(header) > MAX_CELLS:
                    raise DataError(f"{path}: more than {MAX_CELLS:,} values; sample the rows first")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save the CSV as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path}: not a valid CSV file ({first_line(err)})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the CSV file ({err.strerror})") from None
    if not rows:
        raise DataError(f"{path}: the file has a header but no rows")

    def line(i: int) -> str:
        return f"line {lines[i]}"

    columns = {name: _parse_column(name, [row[j] for row in rows], path, line) for j, name in enumerate(header)}
    return _source(path, columns, target, labelled, line)


def _check_header(names: Sequence[str], path: Path) -> None:
    seen = set()
    for position, name in enumerate(names):
        if not name.strip():
            raise DataError(f"{path}: column {position + 1} of the header has no name")
        if name in seen:
            raise DataError(f"{path}: two columns are named {name!r}; give each column its own name")
        seen.add(name)


def _find_target(names: Sequence[str], target: str | None, path: Path) -> str:
    if target is not None:
        if target not in names:
            raise DataError(f"{path}: no column {target!r}; the columns are {_listed(names)}")
        return target
    conventional = [n for n in names if n.strip().lower() in TARGET_NAMES]
    if not conventional:
        raise DataError(
            f"{path}: no target column; name it with target= (CLI: --target) among {_listed(names)}, or call it "
            "'target' or 'label'"
        )
    return conventional[0]


def _listed(names: Sequence[str], limit: int = 12) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _source(path: Path, columns: dict[str, np.ndarray], target, labelled, row, class_names=None, assigned=None):
    """The Source of a table: the target column's labels apart, the split column (if any) as the splits."""
    names = list(columns)
    label_name = None
    if labelled or target is not None:
        label_name = _find_target(names, target, path)
    elif any(n.strip().lower() in TARGET_NAMES for n in names):
        label_name = next(n for n in names if n.strip().lower() in TARGET_NAMES)  # new data with its labels
    split_name = next((n for n in names if n.strip().lower() == SPLIT_COLUMN and n != label_name), None)
    if split_name is not None:
        assigned = _splits_of(columns[split_name], split_name, path, row)
    features = {n: v for n, v in columns.items() if n not in (label_name, split_name)}
    if not features:
        raise DataError(f"{path}: no feature columns beside the target {label_name!r}")
    return Source(
        path=str(path),
        features=features,
        labels=columns[label_name] if label_name is not None else None,
        target=f"column {label_name!r}",
        assigned=assigned,
        class_names=class_names,
        feature_names=tuple(features),
        row=row,
    )


def _splits_of(values: np.ndarray, name: str, path: Path, row) -> np.ndarray:
    splits = []
    for i, value in enumerate(values):
        split = SPLIT_VALUES.get(str(value).strip().lower()) if value is not None else None
        if split is None:
            raise DataError(
                f"{path}: column {name!r} {row(i)}: {value!r} is not a split name (train, val, validation, test)"
            )
        splits.append(split)
    return np.array(splits, dtype=object)


# -- Arrow (Parquet files and datasets folders) -----------------------------------------------------------
def _arrow_columns(table, path: Path) -> dict[str, np.ndarray]:
    """Numbers and strings of an Arrow table, after a full validation of its buffers: a damaged file mapped into
    memory would otherwise be read past its ends (pyarrow checks offsets only when asked)."""
    if table.num_rows * max(table.num_columns, 1) > MAX_CELLS:
        raise DataError(f"{path}: {table.num_rows:,} rows x {table.num_columns} columns; at most {MAX_CELLS:,} values")
    _check_header(table.column_names, path)
    try:
        table.validate(full=True)
        return _arrow_values(table, path)
    except DataError:
        raise
    except Exception as err:  # ArrowInvalid and the casts' errors
        raise DataError(f"{path}: the table's data is damaged ({first_line(err)})") from None


def _arrow_values(table, path: Path) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.cast(kind.value_type), kind.value_type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            values = np.where(np.asarray(pc.is_null(column)), np.nan, values)
            if np.isinf(values).any():
                raise DataError(f"{path}: column {name!r} row {int(np.argmax(np.isinf(values)))} is infinite")
            columns[name] = values.astype(np.float64)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            columns[name] = np.array(column.to_pylist(), dtype=object)
        else:
            raise DataError(f"{path}: column {name!r} has type {kind}; columns must hold numbers or strings")
    return columns


def read_parquet(path: str | Path, *, target: str | None, labelled: bool = True) -> Source:
    parquet = _extra("pyarrow.parquet", "parquet", "reading Parquet files")
    path = regular_file(path, "Parquet file")
    try:
        metadata = parquet.ParquetFile(path).metadata
        if metadata.num_rows * max(metadata.num_columns, 1) > MAX_CELLS:
            raise DataError(f"{path}: {metadata.num_rows:,} rows x {metadata.num_columns} columns is too many values")
        table = parquet.read_table(path)
        columns = _arrow_columns(table, path)
    except (DataError, MissingExtraError):
        raise
    except Exception as err:  # ArrowInvalid, OSError and the like from a damaged file
        raise DataError(f"{path}: not a valid Parquet file ({first_line(err)})") from None
    if not table.num_rows:
        raise DataError(f"{path}: the table has no rows")
    return _source(path, columns, target, labelled, lambda i: f"row {i}")


def is_hf_dataset(folder: Path) -> bool:
    """Whether `folder` was written by `datasets`' `save_to_disk` (one dataset, or a dict of splits)."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _json_file(path: Path):
    data = read_data(path, "JSON file", max_bytes=MAX_JSON_BYTES)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: not valid JSON ({first_line(err)})") from None


def _check_data_files(folder: Path) -> None:
    """The arrow files `state.json` lists must be plain names of regular files in the folder: a name from a file
    is never a path we follow elsewhere. Every file in the folder must be regular (datasets opens them itself)."""
    check_folder_files(folder, "datasets folder")
    state = _json_file(folder / "state.json")
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not files:
        raise DataError(f"{folder / 'state.json'}: no _data_files list; was the folder written by save_to_disk?")
    for entry in files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise DataError(f"{folder / 'state.json'}: data file {name!r} is not a plain file name in the folder")
        regular_file(folder / name, "arrow data file")


def read_hf_dataset(folder: Path, *, target: str | None, labelled: bool = True) -> Source:
    """A `datasets` folder: one dataset, or a `DatasetDict` whose train / validation / test splits fix ours."""
    datasets = _extra("datasets", "hf", "reading a datasets folder")
    import pyarrow as pa

    if (folder / "dataset_dict.json").is_file():
        listing = _json_file(folder / "dataset_dict.json")
        names = listing.get("splits") if isinstance(listing, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"{folder / 'dataset_dict.json'}: no list of splits")
        check_folder_files(folder, "datasets folder")
        parts = {}
        for name in names:
            split = SPLIT_VALUES.get(name.lower())
            if split is None or Path(name).name != name:
                raise DataError(f"{folder}: split {name!r} is not train, validation or test")
            parts[split] = folder / name
    else:
        parts = {"train": folder}
    tables, assigned, features = [], [], None
    for split, part in parts.items():
        _check_data_files(part)
        try:
            dataset = datasets.load_from_disk(str(part), keep_in_memory=False)
            table = dataset.data.table
        except Exception as err:
            raise DataError(f"{part}: not a dataset written by save_to_disk ({first_line(err)})") from None
        features = features or dataset.features
        tables.append(table)
        assigned += [split] * table.num_rows
    try:
        table = pa.concat_tables(tables)
    except Exception as err:  # splits with other columns or types
        raise DataError(f"{folder}: the splits do not share their columns ({first_line(err)})") from None
    if not table.num_rows:
        raise DataError(f"{folder}: the dataset has no rows")
    columns = _arrow_columns(table, folder)
    names = list(columns)
    label = _find_target(names, target, folder) if labelled or target is not None else None
    class_names = None
    if label is not None and isinstance(features.get(label), datasets.ClassLabel):
        class_names = tuple(str(n) for n in features[label].names)
    source = _source(
        folder,
        columns,
        label,
        labelled,
        lambda i: f"row {i}",
        class_names=class_names,
        assigned=np.array(assigned, dtype=object) if len(parts) > 1 else None,
    )
    return source
