"""A combiner defined outside the package: registered with one decorator, it is fitted, summarized with what it
learned, saved and loaded back, with no package file touched."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from modelfusion.ensemble import COMBINERS, Combiner, fuse_and_evaluate, load_combiner, make_combiner, save_combiner
from modelfusion.ensemble.base import probabilities
from modelfusion.errors import OverconfidenceWarning, UnknownNameError
from modelfusion.predictions import Predictions


class ShrunkMean(Combiner):
    """The mean of the members' probabilities mixed with the uniform distribution, the mixing weight chosen on
    validation NLL from `grid` values in [0, 0.5]."""

    tasks = ("classification",)

    def __init__(self, *, grid: int = 11) -> None:
        self.grid = grid

    def _fit(self, outputs: torch.Tensor, y: torch.Tensor, X=None) -> None:
        mean = probabilities(outputs).mean(0)
        candidates = torch.linspace(0.0, 0.5, self.grid, dtype=torch.float64)
        nll = torch.stack([-self._mix(mean, a).gather(1, y[:, None]).log().mean() for a in candidates])
        self.shrinkage_ = float(candidates[int(nll.argmin())])
        self.val_nll_ = torch.stack([nll.min(), nll[0]])  # chosen, and without shrinkage

    @staticmethod
    def _mix(mean: torch.Tensor, shrinkage: float) -> torch.Tensor:
        return (1 - shrinkage) * mean + shrinkage / mean.shape[1]

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        return self._mix(probabilities(outputs).mean(0), self.shrinkage_)


@pytest.fixture
def shrunk_mean():
    COMBINERS.register("shrunk_mean")(ShrunkMean)
    yield ShrunkMean
    COMBINERS.unregister("shrunk_mean")


def overconfident_predictions(split: str, seed: int) -> Predictions:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (120,), generator=generator)
    logits = torch.randn(2, 120, 3, generator=generator) * 6  # sure and often wrong: shrinkage pays
    logits[:, torch.arange(120), labels] += 3
    return Predictions(logits, labels, ("a", "b"), "classification", split)


def test_a_combiner_registered_outside_the_package_is_fitted_summarized_saved_and_loaded(shrunk_mean, tmp_path):
    val, test = overconfident_predictions("val", 0), overconfident_predictions("test", 1)
    run = fuse_and_evaluate(val, test, ["mean", "shrunk_mean"])
    fitted = run.combiners["shrunk_mean"]
    assert fitted.name == "shrunk_mean" and 0 < fitted.shrinkage_ <= 0.5
    entry = run.results().candidate("shrunk_mean").details["combiner"]
    assert entry["class"] == "ShrunkMean" and entry["params"] == {"grid": 11}
    assert entry["shrinkage"] == fitted.shrinkage_ and entry["val_nll"] == fitted.val_nll_.tolist()
    assert entry["val_nll"][0] < entry["val_nll"][1]
    run.save(tmp_path / "run")
    written = json.loads((tmp_path / "run" / "results.json").read_text())["leaderboard"]
    assert next(c for c in written if c["name"] == "shrunk_mean")["details"]["combiner"] == entry
    loaded = load_combiner(tmp_path / "run" / "combiners" / "shrunk_mean.safetensors")
    assert isinstance(loaded, ShrunkMean) and loaded.shrinkage_ == fitted.shrinkage_
    assert torch.equal(loaded.fuse(test), fitted.fuse(test))
    assert run.report.row("shrunk_mean").metrics["nll"] < run.report.row("mean").metrics["nll"]


def test_registering_gives_the_class_its_name_and_unregistering_removes_it(shrunk_mean):
    assert make_combiner("shrunk_mean", grid=3).name == "shrunk_mean"
    with pytest.raises(ValueError, match="registered twice"):
        COMBINERS.register("shrunk_mean")(ShrunkMean)
    with pytest.raises(TypeError, match="only Combiner subclasses"):
        COMBINERS.register("not_a_combiner")(dict)
    assert "not_a_combiner" not in COMBINERS


def test_every_registered_combiner_describes_its_learned_state_as_json():
    val = overconfident_predictions("val", 0)
    for name in COMBINERS.names():
        if "classification" not in COMBINERS[name].tasks:
            continue
        with warnings.catch_warnings():  # mean_logit warns about these sure, often wrong members: not tested here
            warnings.simplefilter("ignore", OverconfidenceWarning)
            described = make_combiner(name).fit(val).describe()
        assert described["class"] == type(make_combiner(name)).__name__
        assert "member_names" not in described and json.loads(json.dumps(described)) == described


def test_an_unregistered_name_is_unknown_again(shrunk_mean):
    COMBINERS.unregister("shrunk_mean")
    with pytest.raises(UnknownNameError, match="unknown combiner 'shrunk_mean'"):
        make_combiner("shrunk_mean")
    COMBINERS.register("shrunk_mean")(ShrunkMean)  # for the fixture's teardown


def test_a_combiner_fitted_on_predictions_without_classes_loads_back(tmp_path):
    val = overconfident_predictions("val", 0)
    assert val.classes == (0, 1, 2)  # column indices when none are given
    fitted = make_combiner("weighted").fit(val)
    path = tmp_path / "weighted.safetensors"
    save_combiner(fitted, path)
    assert torch.equal(load_combiner(path).fuse(val), fitted.fuse(val))
