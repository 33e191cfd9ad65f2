import random

import numpy as np
import pytest
import torch

from modelfusion import ConfigError, UnknownNameError
from modelfusion.datasets import DATASETS, _raw, _split_indices, load_dataset

CLASSIFICATION = ["digits", "breast_cancer", "wine", "mnist1d"]


@pytest.mark.parametrize("name", DATASETS.names())
def test_splits_are_disjoint_typed_and_standardized_with_train_statistics(name):
    data = load_dataset(name)
    parts = _split_indices(_raw(name), seed=0)
    used = np.concatenate(list(parts.values()))
    assert len(set(used.tolist())) == len(used)  # no sample in two splits
    assert len(used) == len(_raw(name).y)  # every sample in one split (mnist1d: its training part)
    assert data.train.X.dtype == torch.float32
    mean, std = data.train.X.mean(0), data.train.X.std(0, unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    varying = std > 0
    assert torch.allclose(std[varying], torch.ones_like(std[varying]), atol=1e-4)
    if data.task == "classification":
        assert data.train.y.dtype == torch.int64
        assert set(data.train.y.tolist()) == set(range(data.num_classes))
    else:
        assert data.train.y.dtype == torch.float32 and data.num_classes == 0


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "wine", "diabetes"])
def test_sklearn_datasets_split_60_20_20(name):
    data = load_dataset(name)
    n = len(data.train) + len(data.val) + len(data.test)
    assert len(data.test) == pytest.approx(0.2 * n, abs=1)
    assert len(data.val) == pytest.approx(0.2 * n, abs=2)


@pytest.mark.parametrize("name", ["digits", "wine"])
def test_splits_are_stratified(name):
    data = load_dataset(name)
    shares = [np.bincount(s.y.numpy(), minlength=data.num_classes) / len(s) for s in (data.train, data.val, data.test)]
    assert np.abs(shares[0] - shares[1]).max() < 0.03
    assert np.abs(shares[0] - shares[2]).max() < 0.03


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = load_dataset("wine", seed=3), load_dataset("wine", seed=3), load_dataset("wine", seed=4)
    assert torch.equal(a.train.X, b.train.X) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.X, c.train.X)


def test_mnist1d_uses_official_test_set_and_splits_training_80_20():
    from mnist1d.data import get_dataset_args, make_dataset

    data = load_dataset("mnist1d", seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (3200, 800, 1000)
    official = make_dataset(get_dataset_args())
    assert np.array_equal(data.test.y.numpy(), official["y_test"])
    assert data.image_shape == (1, 40) and data.num_classes == 10
    # The test samples do not move with the seed (only their standardization, by train statistics); train does.
    other = load_dataset("mnist1d", seed=2)
    assert torch.equal(other.test.y, data.test.y) and not torch.equal(other.train.y, data.train.y)


def test_mnist1d_leaves_global_random_state_alone():
    _raw.cache_clear()
    np.random.seed(123)
    random.seed(123)
    load_dataset("mnist1d")
    assert np.random.rand() == np.random.RandomState(123).rand()
    assert random.random() == random.Random(123).random()


def test_images_are_channels_first():
    assert load_dataset("digits", as_images=True).train.X.shape[1:] == (1, 8, 8)
    flat, images = load_dataset("digits"), load_dataset("digits", as_images=True)
    assert torch.equal(flat.train.X, images.train.X.reshape(len(images.train), -1))


def test_bad_names_are_clear_errors():
    with pytest.raises(UnknownNameError, match="unknown dataset 'digitz'; valid names: breast_cancer"):
        load_dataset("digitz")
    with pytest.raises(ConfigError, match="tabular"):
        load_dataset("wine", as_images=True)
    with pytest.raises(ConfigError, match="unknown split"):
        load_dataset("wine").split("dev")


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_a_cnn_recipe_trains_the_same_on_the_image_form_as_on_the_flat_form(name):
    from modelfusion.training import RECIPES, recipe_for

    flat, images = load_dataset(name), load_dataset(name, as_images=True)
    recipe = recipe_for(images)
    assert recipe is RECIPES[f"{name}-cnn"]
    from_images = recipe.train(images, seed=0, epochs=1)
    from_flat = recipe.train(flat, seed=0, epochs=1)
    with torch.no_grad():
        assert torch.equal(from_images(images.test.X), from_flat(flat.test.X))  # one model, whichever form
        assert torch.equal(from_images(flat.test.X), from_flat(images.test.X))
    with pytest.raises(RuntimeError, match="invalid for input of size"):
        from_images(torch.zeros(3, 2 * flat.num_features))  # two samples' width is not two samples
