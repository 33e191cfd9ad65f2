"""AutoGluon's TabularPredictor on a split given as arrays; run by bench/auto_vs_autogluon.py inside its own venv.

    bench/.venv-autogluon/bin/python bench/autogluon_runner.py --split s.npz --time-limit 600 --out r.json

Fits on `train` with `val` as AutoGluon's tuning data (what it early-stops and weights its ensemble on), the
given preset and time limit; scores the test rows only once. Writes accuracy, wall seconds, AutoGluon's
leaderboard best model and the test probabilities.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pandas as pd
from autogluon.tabular import TabularPredictor


def frame(X: np.ndarray, y: np.ndarray | None = None) -> pd.DataFrame:
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    if y is not None:
        df["label"] = y
    return df


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", required=True)
    parser.add_argument("--time-limit", type=float, required=True)
    parser.add_argument("--preset", default="medium_quality")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    arrays = np.load(args.split)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        predictor = TabularPredictor(label="label", eval_metric="accuracy", path=folder, verbosity=0).fit(
            frame(arrays["X_train"], arrays["y_train"]),
            tuning_data=frame(arrays["X_val"], arrays["y_val"]),
            presets=args.preset,
            time_limit=args.time_limit,
        )
        seconds = time.perf_counter() - started
        proba = predictor.predict_proba(frame(arrays["X_test"])).to_numpy()
        classes = list(predictor.class_labels)
        best = predictor.model_best
        models = list(predictor.model_names())
    order = np.argsort(classes)  # columns in label order 0..C-1
    proba = proba[:, order]
    accuracy = float((proba.argmax(1) == arrays["y_test"]).mean())
    with open(args.out, "w") as file:
        json.dump(
            {"accuracy": accuracy, "seconds": seconds, "best": best, "models": models, "proba": proba.tolist()}, file
        )


if __name__ == "__main__":
    main()
