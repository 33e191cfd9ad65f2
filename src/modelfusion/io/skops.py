"""Reading scikit-learn estimators from skops files: only an allowlist of estimator classes, no callables.

skops' own check trusts every type it is told to; trusting "every class of scikit-learn" is not enough, since
a `FunctionTransformer` holding `functools.partial(gzip.GzipFile, "<victim>", "wb")`, its types named through
scikit-learn modules that import them (`sklearn.datasets._rcv1.GzipFile`, `sklearn.metrics.pairwise.partial`),
truncates any file the process may write the first time it predicts. So before skops builds anything, every
node of the file's object tree (its `schema.json`) is checked:

- a function, `partial`, method or operator reference (skops' `FunctionNode`, `PartialNode`, `MethodNode`,
  `OperatorFuncNode`) is refused wherever it is, and so is a type used as a value (`TypeNode`) other than
  a plain Python or NumPy scalar type (`dtype=np.float64`);
- every object must be of a class in `SKOPS_ALLOWLIST`: the estimators modelfusion's members and combiners
  produce and the common ones users bring (linear models, trees, forests, gradient boosting, SVMs, k-NN,
  naive Bayes, discriminant analysis, MLPs, scalers and imputers, PCA, text vectorizers (TF-IDF, counts,
  hashing: a callable tokenizer, analyzer or preprocessor is a function reference), pipelines, voting,
  stacking, bagging, calibration), the helper objects they hold (trees, losses, bin mappers, KD-trees), and
  data (builtins, NumPy arrays, dtypes and random states).

`trusted_types` (CLI `--trust-type NAME`) adds names the caller vouches for (a class or a function);
`trust_code=True` (CLI `--trust-code`) skips the check, as it does for pickles.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ModelFusionError
from .archives import archive_names, read_member

__all__ = ["load_skops", "SKOPS_ALLOWLIST", "skops_refusals"]

# Public estimators, by the name users import them under; resolved to the module skops records.
_ESTIMATORS = {
    "sklearn.linear_model": [
        "LogisticRegression",
        "LogisticRegressionCV",
        "LinearRegression",
        "Ridge",
        "RidgeCV",
        "RidgeClassifier",
        "RidgeClassifierCV",
        "Lasso",
        "LassoCV",
        "ElasticNet",
        "ElasticNetCV",
        "BayesianRidge",
        "HuberRegressor",
        "SGDClassifier",
        "SGDRegressor",
        "Perceptron",
        "PassiveAggressiveClassifier",
        "PassiveAggressiveRegressor",
    ],
    "sklearn.tree": ["DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor"],
    "sklearn.ensemble": [
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
        "GradientBoostingClassifier",
        "GradientBoostingRegressor",
        "HistGradientBoostingClassifier",
        "HistGradientBoostingRegressor",
        "AdaBoostClassifier",
        "AdaBoostRegressor",
        "BaggingClassifier",
        "BaggingRegressor",
        "VotingClassifier",
        "VotingRegressor",
        "StackingClassifier",
        "StackingRegressor",
    ],
    "sklearn.svm": ["SVC", "SVR", "NuSVC", "NuSVR", "LinearSVC", "LinearSVR"],
    "sklearn.neighbors": [
        "KNeighborsClassifier",
        "KNeighborsRegressor",
        "RadiusNeighborsClassifier",
        "RadiusNeighborsRegressor",
        "NearestCentroid",
    ],
    "sklearn.naive_bayes": ["GaussianNB", "MultinomialNB", "BernoulliNB", "ComplementNB", "CategoricalNB"],
    "sklearn.discriminant_analysis": ["LinearDiscriminantAnalysis", "QuadraticDiscriminantAnalysis"],
    "sklearn.neural_network": ["MLPClassifier", "MLPRegressor"],
    "sklearn.dummy": ["DummyClassifier", "DummyRegressor"],
    "sklearn.calibration": ["CalibratedClassifierCV"],
    "sklearn.pipeline": ["Pipeline"],
    "sklearn.preprocessing": [
        "StandardScaler",
        "MinMaxScaler",
        "MaxAbsScaler",
        "RobustScaler",
        "Normalizer",
        "QuantileTransformer",
        "PowerTransformer",
        "PolynomialFeatures",
        "LabelEncoder",
        "LabelBinarizer",
        "OneHotEncoder",
        "OrdinalEncoder",
    ],
    "sklearn.impute": ["SimpleImputer"],
    "sklearn.decomposition": ["PCA", "TruncatedSVD"],
    # text vectorizers: their analyzer, tokenizer and preprocessor are names or patterns (strings) here; a
    # callable one is a function reference, refused like any other
    "sklearn.feature_extraction.text": ["CountVectorizer", "TfidfVectorizer", "TfidfTransformer", "HashingVectorizer"],
}
# What those estimators hold once fitted, by the name skops records (a name this scikit-learn lacks is skipped).
_HELPERS = [
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "sklearn.metrics._dist_metrics.ChebyshevDistance64",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.model_selection._split.KFold",
    "sklearn.model_selection._split.StratifiedKFold",
    *(
        f"sklearn._loss.{module}.{name}"
        for module, names in {
            "loss": [
                "HalfSquaredError",
                "AbsoluteError",
                "PinballLoss",
                "HuberLoss",
                "HalfPoissonLoss",
                "HalfGammaLoss",
                "HalfTweedieLoss",
                "HalfBinomialLoss",
                "HalfMultinomialLoss",
                "ExponentialLoss",
            ],
            "link": ["IdentityLink", "LogLink", "LogitLink", "HalfLogitLink", "MultinomialLogit", "Interval"],
            "_loss": [
                "CyHalfSquaredError",
                "CyAbsoluteError",
                "CyPinballLoss",
                "CyHuberLoss",
                "CyHalfPoissonLoss",
                "CyHalfGammaLoss",
                "CyHalfTweedieLoss",
                "CyHalfBinomialLoss",
                "CyHalfMultinomialLoss",
                "CyExponentialLoss",
            ],
        }.items()
        for name in names
    ),
    *(
        f"sklearn.linear_model._sgd_fast.{name}"
        for name in ("Hinge", "ModifiedHuber", "SquaredHinge", "Log", "SquaredLoss", "Huber")
    ),
    "sklearn.linear_model._sgd_fast.EpsilonInsensitive",
    "sklearn.linear_model._sgd_fast.SquaredEpsilonInsensitive",
]
# Data: containers, arrays, dtypes, random states.
_DATA = [
    *(f"builtins.{name}" for name in ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool")),
    *(f"builtins.{name}" for name in ("complex", "bytes", "bytearray", "slice", "NoneType")),
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator",
    "numpy.random._pcg64.PCG64",
    "numpy.random.bit_generator.SeedSequence",
]
# skops' nodes that refer to code rather than hold data.
_REFERENCES = {"FunctionNode", "PartialNode", "MethodNode", "OperatorFuncNode"}
_MAX_NODES = 5_000_000  # a forest of 1,000 trees has ~100,000 nodes


def _scalar_types() -> set[str]:
    """NumPy's scalar types (`numpy.float64`...) and Python's, as skops names them."""
    names = {f"builtins.{t.__name__}" for t in (int, float, bool, str, complex)}
    for value in set(np.sctypeDict.values()):
        if isinstance(value, type) and issubclass(value, np.generic):
            names.add(f"numpy.{value.__name__}")
    return names


@functools.cache
def _allowlist() -> frozenset[str]:
    names = set(_HELPERS) | set(_DATA) | _scalar_types()
    for module_name, classes in _ESTIMATORS.items():
        module = importlib.import_module(module_name)
        for name in classes:
            cls = getattr(module, name, None)  # one this scikit-learn lacks is simply not allowed
            if isinstance(cls, type):
                names.add(f"{cls.__module__}.{cls.__qualname__}")
    return frozenset(names)


class _Allowlist:
    """`SKOPS_ALLOWLIST`: the type names skops files may hold (computed on first use: it imports sklearn)."""

    def __contains__(self, name: object) -> bool:
        return name in _allowlist()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(_allowlist()))

    def __len__(self) -> int:
        return len(_allowlist())


SKOPS_ALLOWLIST = _Allowlist()


def _nodes(tree) -> Iterator[dict]:
    """Every node (an object with a `__loader__`) anywhere in a skops schema, without recursion."""
    pending = [tree]
    count = 0
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            if "__loader__" in value:
                count += 1
                if count > _MAX_NODES:
                    raise CheckpointError(f"the object tree has more than {_MAX_NODES:,} nodes")
                yield value
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def skops_refusals(schema: dict, trusted_types: Sequence[str] = ()) -> list[str]:
    """What in a skops file's object tree (`schema.json`, parsed) is neither allowed nor trusted: one entry
    per distinct type or reference, e.g. `function reference sklearn.metrics.pairwise.partial`."""
    trusted = set(trusted_types)
    scalar_types = _scalar_types()
    refused: dict[str, None] = {}
    for node in _nodes(schema):
        loader = node.get("__loader__")
        name = f"{node.get('__module__')}.{node.get('__class__')}"
        if name in trusted:
            continue
        if loader in _REFERENCES:
            refused[f"function reference {name}"] = None
        elif loader == "TypeNode":
            if name not in scalar_types:
                refused[f"type reference {name}"] = None
        elif not isinstance(loader, str) or name not in SKOPS_ALLOWLIST:
            refused[name] = None
    return list(refused)


def _schema(source: Path | bytes, label: str) -> dict:
    if archive_names(source, label) is None:
        raise CheckpointError(f"{label}: cannot read it as a skops file (it is not a zip archive)")
    raw = read_member(source, "schema.json", label)
    try:
        schema = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise CheckpointError.unreadable(label, "a skops file (its schema.json is not JSON)", err) from None
    if not isinstance(schema, dict):
        raise CheckpointError(f"{label}: cannot read it as a skops file (its schema.json is not an object)")
    return schema


def load_skops(
    source: Path | bytes, trusted_types: Sequence[str] = (), label: str | None = None, *, trust_code: bool = False
):
    """Read a scikit-learn estimator from a skops file or its bytes, refusing (before skops builds anything)
    every type outside `SKOPS_ALLOWLIST` and `trusted_types` and every callable (see the module's docstring);
    with `trust_code`, nothing is refused."""
    import skops.io as sio

    label = label or str(source)
    schema = _schema(source, label)
    if not trust_code:
        try:
            refused = skops_refusals(schema, trusted_types)
        except ModelFusionError as err:
            raise CheckpointError(f"{label}: {err}") from None
        if refused:
            shown = ", ".join(refused[:8]) + (f" and {len(refused) - 8} more" if len(refused) > 8 else "")
            raise CheckpointError(
                f"{label} holds what a skops file may not ({shown}): functions and classes outside the allowlist "
                "of common estimators could run code when it predicts. If you trust the file, pass "
                "trusted_types=[...] with those names (CLI: --trust-type NAME for each) or trust_code=True "
                "(CLI: --trust-code)"
            )
    where = {"data": source} if isinstance(source, bytes) else {"file": source}
    try:
        untrusted = sio.get_untrusted_types(**where)
        load = sio.loads if isinstance(source, bytes) else sio.load
        return load(source, trusted=untrusted)
    except ModelFusionError:
        raise
    except Exception as err:
        raise CheckpointError.unreadable(label, "a skops file", err) from None
