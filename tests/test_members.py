import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.svm import LinearSVC
from torch import nn

from modelfusion import IncompatibleModelsError, InvalidInputError, NotFittedError
from modelfusion.members import SklearnMember, TorchMember, as_member, check_members


def test_torch_member_batches_without_changing_the_model(trained_mlp, digits):
    trained_mlp.train()
    member = TorchMember(trained_mlp, name="mlp", batch_size=7)
    out = member.predict(digits.test.X)
    assert trained_mlp.training  # mode restored
    trained_mlp.eval()
    with torch.no_grad():
        expected = trained_mlp(digits.test.X)
    assert out.shape == (len(digits.test), 10) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    assert member.num_outputs == 10 and member.classes == tuple(range(10))


def test_torch_regression_member_returns_values():
    member = TorchMember(nn.Linear(3, 1), name="reg", task="regression")
    assert member.predict(torch.randn(5, 3)).shape == (5,)


def test_sklearn_classifier_logits_softmax_to_predict_proba(digits):
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    est = LogisticRegression(max_iter=500).fit(X, y)
    member = SklearnMember(est)
    proba = torch.softmax(member.predict(digits.test.X).double(), dim=1).numpy()
    np.testing.assert_allclose(proba, est.predict_proba(digits.test.X.numpy()), atol=1e-6)
    assert member.name == "LogisticRegression" and member.classes == tuple(range(10))


def test_decision_function_fallback_binary_and_multiclass(digits):
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    binary = SklearnMember(LinearSVC().fit(X, y % 2))
    scores = binary.estimator.decision_function(digits.test.X.numpy())
    probs = torch.softmax(binary.predict(digits.test.X), dim=1)
    # softmax([0, s]) is sigmoid(s): the positive class wins exactly where the score is positive.
    np.testing.assert_array_equal(probs.argmax(1).numpy(), (scores > 0).astype(int))
    multi = SklearnMember(LinearSVC().fit(X, y))
    np.testing.assert_array_equal(
        multi.predict(digits.test.X).argmax(1).numpy(), multi.estimator.predict(digits.test.X.numpy())
    )


def test_sklearn_regressor_and_unfitted_estimator():
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20.0)
    member = SklearnMember(LinearRegression().fit(X, y))
    assert member.task == "regression" and member.predict(torch.as_tensor(X)).shape == (20,)
    with pytest.raises(NotFittedError, match="not fitted"):
        SklearnMember(LogisticRegression())


def test_class_order_mismatch_is_a_clear_error(digits):
    X, y = digits.train.X.numpy(), digits.train.y.numpy()
    labels = np.array(list("abcdefghij"))
    letters = SklearnMember(LogisticRegression(max_iter=300).fit(X, labels[y]), name="letters")
    numbers = SklearnMember(LogisticRegression(max_iter=300).fit(X, y), name="numbers")
    with pytest.raises(IncompatibleModelsError, match="class order differs: member 'letters'"):
        check_members([numbers, letters])
    fewer = SklearnMember(LogisticRegression(max_iter=300).fit(X[y < 5], y[y < 5]), name="fewer")
    with pytest.raises(IncompatibleModelsError, match="'fewer' has 5 classes but 'numbers' has 10"):
        check_members([numbers, fewer])


def test_check_members_rejects_empty_duplicate_and_mixed_tasks():
    with pytest.raises(InvalidInputError, match="no members"):
        check_members([])
    a = TorchMember(nn.Linear(3, 2), name="a")
    with pytest.raises(InvalidInputError, match="two members are named 'a'"):
        check_members([a, TorchMember(nn.Linear(3, 2), name="a")])
    with pytest.raises(IncompatibleModelsError, match="regression model"):
        check_members([a, TorchMember(nn.Linear(3, 1), name="r", task="regression")])


def test_as_member_wraps_both_kinds_and_refuses_others(trained_mlp, digits):
    assert isinstance(as_member(trained_mlp, name="m"), TorchMember)
    est = LogisticRegression(max_iter=300).fit(digits.train.X.numpy(), digits.train.y.numpy())
    assert isinstance(as_member(est), SklearnMember)
    with pytest.raises(InvalidInputError, match="cannot use str as a member"):
        as_member("model.pt")
