"""Golden label-issue masks from cleanlab for the differential test (tests/test_guard.py).

    .venv/bin/python bench/cleanlab_golden.py

Draws out-of-fold-like probabilities with symmetric label noise (and the edge cases: ties, a class with a single
sample, a class no sample is labeled with), runs cleanlab 2.9's `find_label_issues` with its defaults on each
in its own venv (bench/.venv-cleanlab, created here), and writes probabilities, labels and cleanlab's masks to
tests/golden/cleanlab/label_issues.npz. cleanlab is never a dependency of the package or the tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from guard import cleanlab_issues
from reference_venvs import ROOT

GOLDEN = ROOT / "tests" / "golden" / "cleanlab" / "label_issues.npz"


def noisy_case(seed: int, n: int, classes: int, rate: float, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a classifier that is right about the true class most of the time, and labels of which
    a share `rate` were flipped to another class."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), truth] += sharpness
    confused = rng.random(n) < 0.1  # some samples look like another class
    logits[confused, rng.integers(0, classes, int(confused.sum()))] += sharpness
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = truth.copy()
    flipped = rng.random(n) < rate
    labels[flipped] = (labels[flipped] + rng.integers(1, classes, int(flipped.sum()))) % classes
    return probs, labels


def main() -> None:
    cases = {
        f"noise{int(rate * 100)}_seed{seed}": noisy_case(seed, 1200, 10, rate, 3.0)
        for seed in range(3)
        for rate in (0.1, 0.2)
    }
    probs, labels = noisy_case(7, 400, 4, 0.15, 2.0)
    cases["rounded_probabilities"] = (np.round(probs, 2), labels)  # many ties in the margins
    probs, labels = noisy_case(8, 300, 5, 0.1, 2.5)
    labels[labels == 4] = 3  # no sample labeled 4
    labels[np.flatnonzero(labels == 0)[1:]] = 1  # a single sample labeled 0
    cases["missing_and_single_classes"] = (probs, labels)
    arrays = {}
    for name, (probs, labels) in cases.items():
        arrays[f"{name}.probs"], arrays[f"{name}.labels"] = probs, labels
        arrays[f"{name}.cleanlab"] = cleanlab_issues(probs, labels)
        print(f"{name}: cleanlab flags {int(arrays[f'{name}.cleanlab'].sum())} of {len(labels)}")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=GOLDEN.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)
    Path(tmp.name).replace(GOLDEN)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
