"""The scikit-learn-style estimators that `demo` and `auto` train beside their networks: a linear model, a random
forest, scikit-learn's histogram gradient boosting (always: no new dependency) and, when installed, LightGBM,
XGBoost and CatBoost (the extras `lightgbm`, `xgboost`, `catboost`); for texts, bag-of-words pipelines that take
strings (TF-IDF features, then a linear model or naive Bayes).

Each is registered in `ESTIMATORS` by name with one factory per task, `factory(seed) -> unfitted estimator`;
`make_estimator(name, task, seed=...)` builds one, and an extra that is missing is one line naming it.

| name | classification | regression | extra |
|---|---|---|---|
| `logreg` / `ridge` | LogisticRegression | Ridge | |
| `random_forest` | RandomForestClassifier (300 trees) | RandomForestRegressor | |
| `hist_gradient_boosting` | HistGradientBoostingClassifier | HistGradientBoostingRegressor | |
| `lightgbm` | LGBMClassifier | LGBMRegressor | `lightgbm` |
| `xgboost` | XGBClassifier | XGBRegressor | `xgboost` |
| `catboost` | CatBoostClassifier | CatBoostRegressor | `catboost` |
| `tfidf_linear` | word 1-2-gram TF-IDF + LogisticRegression | the same TF-IDF + Ridge | |
| `char_tfidf_linear` | character 2-5-gram TF-IDF + LogisticRegression | the same TF-IDF + Ridge | |
| `tfidf_nb` | word 1-2-gram TF-IDF + ComplementNB | | |

Gradient-boosted trees stop early on a slice of their training rows (`validation_fraction`), never on the
validation split, which chooses among candidates and must stay unseen by what it judges.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigError, MissingExtraError
from .registry import Registry
from .tasks import Task

__all__ = ["ESTIMATORS", "Estimator", "make_estimator", "installed_boosters", "BOOSTERS", "estimators_for"]


@dataclass(frozen=True)
class Estimator:
    """How to build one kind of estimator for each task; `module` and `extra` name the optional package it needs
    (None: scikit-learn, always there); `takes_text`: it is fitted on strings (texts), not on numbers."""

    name: str
    classification: Callable[[int], object] | None
    regression: Callable[[int], object] | None
    module: str | None = None
    extra: str | None = None
    takes_text: bool = False

    def installed(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def build(self, task: Task, *, seed: int = 0):
        """An unfitted estimator for `task`, seeded; `MissingExtraError` when its package is missing."""
        if not self.installed():
            raise MissingExtraError(
                f"estimator {self.name!r} needs {self.module}: pip install 'modelfusion[{self.extra}]'"
            )
        factory = self.classification if task == "classification" else self.regression
        if factory is None:
            raise ConfigError(f"estimator {self.name!r} has no {task} form")
        return factory(seed)


ESTIMATORS: Registry[Estimator] = Registry("estimator")


def _register(estimator: Estimator) -> None:
    ESTIMATORS.register(estimator.name)(estimator)


def _logistic_regression(seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000)


def _ridge(seed: int):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=1.0)


def _forest_classifier(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(300, random_state=seed, n_jobs=-1)


def _forest_regressor(seed: int):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(300, min_samples_leaf=5, random_state=seed, n_jobs=-1)


# Histogram gradient boosting (Ke et al., "LightGBM", 2017, as scikit-learn implements it): up to 500 trees,
# stopped when 10% of the training rows stop improving for 20 rounds.
_HGB = {"max_iter": 500, "early_stopping": True, "validation_fraction": 0.1, "n_iter_no_change": 20}


def _hgb_classifier(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=seed, **_HGB)


def _hgb_regressor(seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(random_state=seed, **_HGB)


def _lightgbm(kind: str) -> Callable[[int], object]:
    def build(seed: int):
        import lightgbm

        cls = lightgbm.LGBMClassifier if kind == "classification" else lightgbm.LGBMRegressor
        return cls(n_estimators=500, learning_rate=0.05, num_leaves=31, random_state=seed, n_jobs=1, verbose=-1)

    return build


def _xgboost(kind: str) -> Callable[[int], object]:
    def build(seed: int):
        import xgboost

        cls = xgboost.XGBClassifier if kind == "classification" else xgboost.XGBRegressor
        return cls(n_estimators=500, learning_rate=0.05, max_depth=6, random_state=seed, n_jobs=1, verbosity=0)

    return build


def _catboost(kind: str) -> Callable[[int], object]:
    def build(seed: int):
        import catboost

        cls = catboost.CatBoostClassifier if kind == "classification" else catboost.CatBoostRegressor
        return cls(iterations=500, random_seed=seed, thread_count=1, verbose=False, allow_writing_files=False)

    return build


# Bag-of-words text models (Joachims 1998; Wang & Manning, "Baselines and bigrams", 2012): sublinear TF-IDF of
# word uni- and bigrams, or of character n-grams within words (robust to spelling and morphology), capped in
# vocabulary so that a large corpus cannot fill memory or the skops file. The rows are unit-norm and the
# features many and sparse, so the linear models are less regularized than on standardized tables.
_MAX_VOCABULARY = 200_000
_TEXT_C = 10.0


def _words():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=_MAX_VOCABULARY)


def _characters():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 5), min_df=1, sublinear_tf=True, max_features=_MAX_VOCABULARY
    )


def _text_model(vectorize: Callable[[], object], kind: str) -> Callable[[int], object]:
    """A factory of `vectorize()` then a logistic regression (classification) or ridge (regression)."""

    def build(seed: int):
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import Pipeline

        model = LogisticRegression(C=_TEXT_C, max_iter=1000) if kind == "classification" else Ridge(alpha=1.0)
        return Pipeline([("tfidf", vectorize()), ("model", model)])

    return build


def _text_naive_bayes(seed: int):
    from sklearn.naive_bayes import ComplementNB
    from sklearn.pipeline import Pipeline

    return Pipeline([("tfidf", _words()), ("model", ComplementNB(alpha=0.3))])


for _estimator in (
    Estimator("logreg", _logistic_regression, None),
    Estimator("ridge", None, _ridge),
    Estimator("random_forest", _forest_classifier, _forest_regressor),
    Estimator("hist_gradient_boosting", _hgb_classifier, _hgb_regressor),
    Estimator("lightgbm", _lightgbm("classification"), _lightgbm("regression"), "lightgbm", "lightgbm"),
    Estimator("xgboost", _xgboost("classification"), _xgboost("regression"), "xgboost", "xgboost"),
    Estimator("catboost", _catboost("classification"), _catboost("regression"), "catboost", "catboost"),
    Estimator(
        "tfidf_linear", _text_model(_words, "classification"), _text_model(_words, "regression"), takes_text=True
    ),
    Estimator(
        "char_tfidf_linear",
        _text_model(_characters, "classification"),
        _text_model(_characters, "regression"),
        takes_text=True,
    ),
    Estimator("tfidf_nb", _text_naive_bayes, None, takes_text=True),
):
    _register(_estimator)

# The gradient-boosting libraries that are optional extras, in the order plans add them.
BOOSTERS = ("lightgbm", "xgboost", "catboost")


def installed_boosters() -> list[str]:
    """The optional boosters whose package is installed."""
    return [name for name in BOOSTERS if ESTIMATORS[name].installed()]


def estimators_for(task: Task, *, texts: bool) -> list[str]:
    """The installed estimators with a form for `task` that take texts (`texts`) or numbers, in the order they
    are registered (the order plans add them)."""
    return [
        e.name
        for e in ESTIMATORS.registered().values()
        if e.takes_text == texts and e.installed() and (e.classification if task == "classification" else e.regression)
    ]


def make_estimator(name: str, task: Task, *, seed: int = 0):
    """An unfitted estimator `name` (see the table above) for `task`."""
    return ESTIMATORS[name].build(task, seed=seed)
