"""load_data against pandas + scikit-learn doing the same work: a 20,000 x 40 table (make_classification: 20
informative features, 5 classes, class_sep 0.8, the tabular benchmark of issue 24) with 4 categorical columns and
5% missing values, read from CSV, Parquet and NPZ, split 60/20/20 (stratified) and preprocessed (median / most
frequent imputation, standardization, one-hot) with statistics of the training rows.

    nice -n 10 .venv/bin/python bench/load_data.py [--repeats 3] [--rows 20000]

Reports the median wall time of each reader and of the reference, their ratio, and the largest difference between
the two preprocessed test splits (the same rows: the reference is given load_data's split).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from modelfusion.datasets import load_data


def make_table(rows: int, seed: int) -> pd.DataFrame:
    X, y = make_classification(rows, 40, n_informative=20, n_classes=5, class_sep=0.8, random_state=seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(40)])
    for j in range(4):  # categories that carry some signal: a binned informative feature, relabelled
        frame[f"c{j}"] = np.array(["red", "green", "blue", "grey", "pink"])[np.digitize(X[:, j], [-1, 0, 1, 2])]
    for column in frame.columns:
        frame.loc[rng.random(rows) < 0.05, column] = None
    frame["label"] = np.array(["a", "b", "c", "d", "e"])[y]
    return frame


def reference(path: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """pandas reads, scikit-learn splits and preprocesses (fitted on the training rows)."""
    frame = pd.read_csv(path)
    y = frame.pop("label").to_numpy()
    rows = np.arange(len(frame))
    rest, test = train_test_split(rows, test_size=0.2, random_state=seed, stratify=y)
    train, _ = train_test_split(rest, test_size=0.25, random_state=seed, stratify=y[rest])
    numeric = [c for c in frame.columns if c.startswith("x")]
    categorical = [c for c in frame.columns if c.startswith("c")]
    transform = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), numeric),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                categorical,
            ),
        ]
    )
    transform.fit(frame.iloc[train])
    return transform.transform(frame.iloc[test]), test


def timed(run, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-load-data-"))
    frame = make_table(args.rows, seed=0)
    frame.to_csv(folder / "table.csv", index=False)
    frame.to_parquet(folder / "table.parquet", index=False)
    numbers = frame[[f"x{i}" for i in range(40)]].fillna(0.0).to_numpy()
    np.savez(folder / "table.npz", X=numbers, y=frame["label"].to_numpy().astype(str))

    print(f"| source ({args.rows:,} rows x 45 columns) | load_data (s) | pandas + scikit-learn (s) | ratio |")
    print("|---|---|---|---|")
    reference_s, (expected, _) = timed(lambda: reference(folder / "table.csv", 0), args.repeats)
    for name in ("table.csv", "table.parquet", "table.npz"):
        ours_s, data = timed(lambda name=name: load_data(folder / name, target="label"), args.repeats)
        print(f"| {name} | {ours_s:.2f} | {reference_s:.2f} (CSV) | {ours_s / reference_s:.2f} |")
        if name == "table.csv":
            # The same split (load_data draws it as scikit-learn does); columns in the same order.
            ours = data.test.X.numpy()
            gap = np.abs(ours - expected).max()
            print(f"<!-- csv: largest difference to the reference's test features: {gap:.2e} -->")


if __name__ == "__main__":
    main()
