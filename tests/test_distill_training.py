import pytest
import torch

from modelfusion import CheckpointError, ConfigError, InvalidInputError
from modelfusion.distill import ModelTeacher, OfflineTeacher, distill
from modelfusion.members import TorchMember
from modelfusion.models import mlp
from modelfusion.predictions import collect_predictions


def _student(seed=0):
    torch.manual_seed(seed)
    return mlp(64, 10, hidden=[16])


def test_distill_learns_from_the_teacher_and_is_deterministic(trained_mlp, digits):
    teacher = ModelTeacher(trained_mlp)
    settings = dict(epochs=4, lr=1e-2, seed=3, progress=False, loss_params={"temperature": 2.0, "alpha": 0.5})
    run = distill(_student(), teacher, digits.train, digits.val, **settings)
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4]
    assert {"total", "kd", "task", "val_nll", "val_accuracy"} <= set(run.history[0])
    assert run.history[-1]["val_accuracy"] > 0.8
    again = distill(_student(), teacher, digits.train, digits.val, **settings)
    for a, b in zip(run.student.state_dict().values(), again.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_time_limit_stops_after_the_epoch_it_passes_and_keeps_the_best_epoch(trained_mlp, digits):
    teacher = ModelTeacher(trained_mlp)
    run = distill(_student(), teacher, digits.train, digits.val, epochs=5, time_limit_s=1e-9, progress=False)
    assert [h["epoch"] for h in run.history] == [1] and run.best_epoch == 1
    run = distill(_student(), teacher, digits.train, digits.val, epochs=2, time_limit_s=3600.0, progress=False)
    assert len(run.history) == 2
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="time_limit_s must be"):
            distill(_student(), teacher, digits.train, digits.val, epochs=1, time_limit_s=bad, progress=False)


class FailingTeacher(ModelTeacher):
    """Stops the run after a number of batches, like a killed process."""

    def __init__(self, model, batches):
        super().__init__(model)
        self.batches = batches

    def logits(self, X, index=None):
        self.batches -= 1
        if self.batches < 0:
            raise KeyboardInterrupt
        return super().logits(X, index)


def test_resume_gives_the_uninterrupted_result(trained_mlp, digits, tmp_path):
    settings = dict(epochs=3, seed=1, progress=False, loss="mse", mixup=0.4)
    whole = distill(_student(), ModelTeacher(trained_mlp), digits.train, digits.val, **settings)
    per_epoch = -(-len(digits.train) // 64)
    with pytest.raises(KeyboardInterrupt):
        distill(
            _student(),
            FailingTeacher(trained_mlp, per_epoch + 5),
            digits.train,
            digits.val,
            checkpoint_dir=tmp_path,
            **settings,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["distill_checkpoint.pt"]  # no temporary file left
    resumed = distill(
        _student(),
        ModelTeacher(trained_mlp),
        digits.train,
        digits.val,
        checkpoint_dir=tmp_path,
        resume=True,
        **settings,
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(whole.student.state_dict().values(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_offline_teacher_and_its_limits(trained_mlp, digits, tmp_path):
    train_preds = collect_predictions(
        [TorchMember(trained_mlp, name="t")], digits.train.X, digits.train.y, "train", progress=False
    )
    offline = OfflineTeacher(train_preds)
    run = distill(_student(), offline, digits.train, digits.val, epochs=2, progress=False, patience=5)
    assert len(run.history) == 2
    with pytest.raises(ConfigError, match="cannot be combined with data augmentation"):
        distill(_student(), offline, digits.train, digits.val, epochs=1, mixup=0.4, progress=False)
    with pytest.raises(ConfigError, match="set loss_params alpha=1"):
        distill(_student(), ModelTeacher(trained_mlp), digits.train, digits.val, epochs=1, mixup=0.4, progress=False)
    with pytest.raises(InvalidInputError, match="has logits for 1077 samples but the training split has 360"):
        distill(_student(), offline, digits.val, digits.val, epochs=1)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        distill(_student(), offline, digits.train, digits.val, checkpoint_dir=tmp_path, resume=True)


def test_feature_hints_join_the_loss_and_train_their_adapters(trained_mlp, digits):
    from modelfusion.distill import FeatureHints

    student = _student()
    hints = FeatureHints(student, trained_mlp, {"1": "1"}, example_input=digits.train.X[:4])  # 16 -> 32 wide
    before = hints.adapters["1"].weight.clone()
    run = distill(
        student,
        ModelTeacher(trained_mlp),
        digits.train,
        digits.val,
        epochs=2,
        lr=1e-2,
        progress=False,
        feature_hints=hints,
        feature_weight=0.5,
    )
    assert "feature" in run.history[0] and run.history[0]["feature"] > 0
    assert not torch.equal(before, hints.adapters["1"].weight)
    train_preds = collect_predictions(
        [TorchMember(trained_mlp, name="t")], digits.train.X, digits.train.y, "train", progress=False
    )
    with pytest.raises(ConfigError, match="feature hints need a live teacher"):
        distill(student, OfflineTeacher(train_preds), digits.train, digits.val, epochs=1, feature_hints=hints)
    hints.remove()


def _dropout_student():
    torch.manual_seed(0)
    return mlp(64, 10, hidden=[16], dropout=0.3)


def _assert_same_weights(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_dropout_student_depends_on_the_seed_alone_and_the_callers_rng_is_left_alone(trained_mlp, digits):
    settings = dict(epochs=2, lr=1e-2, progress=False)
    runs = []
    for caller_seed in (1, 2):
        student = _dropout_student()
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        runs.append(distill(student, ModelTeacher(trained_mlp), digits.train, digits.val, seed=5, **settings))
        assert torch.equal(torch.get_rng_state(), before)
    _assert_same_weights(runs[0].student, runs[1].student)
    assert runs[0].history == runs[1].history
    other = distill(_dropout_student(), ModelTeacher(trained_mlp), digits.train, digits.val, seed=6, **settings)
    assert other.history != runs[0].history  # the seed does reach the dropout masks and the batch order


def test_resume_of_a_dropout_student_gives_the_uninterrupted_result_bit_for_bit(trained_mlp, digits, tmp_path):
    settings = dict(epochs=3, lr=1e-2, seed=2, progress=False)
    student = _dropout_student()
    torch.manual_seed(10)
    whole = distill(student, ModelTeacher(trained_mlp), digits.train, digits.val, **settings)
    per_epoch = -(-len(digits.train) // 64)
    student = _dropout_student()
    torch.manual_seed(11)
    with pytest.raises(KeyboardInterrupt):  # the fingerprint's call, epoch 1, then part of epoch 2
        teacher = FailingTeacher(trained_mlp, 1 + per_epoch + 4)
        distill(student, teacher, digits.train, digits.val, checkpoint_dir=tmp_path, **settings)
    student = _dropout_student()
    torch.manual_seed(12)
    resumed = distill(
        student, ModelTeacher(trained_mlp), digits.train, digits.val, checkpoint_dir=tmp_path, resume=True, **settings
    )
    assert resumed.history == whole.history  # epochs 2 and 3 ran after the resume with the same dropout masks
    _assert_same_weights(whole.student, resumed.student)


def test_resume_refuses_a_checkpoint_without_rng_state_in_one_line(trained_mlp, digits, tmp_path):
    settings = dict(epochs=1, progress=False, checkpoint_dir=tmp_path)
    distill(_dropout_student(), ModelTeacher(trained_mlp), digits.train, digits.val, **settings)
    path = tmp_path / "distill_checkpoint.pt"
    saved = torch.load(path, weights_only=True)
    del saved["torch_rng"]  # as an earlier version wrote it
    torch.save(saved, path)
    with pytest.raises(CheckpointError, match="holds no random-number generator state") as err:
        distill(_dropout_student(), ModelTeacher(trained_mlp), digits.train, digits.val, resume=True, **settings)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "--overwrite" in message
    torch.save({**saved, "torch_rng": torch.zeros(3, dtype=torch.uint8)}, path)  # a mangled one
    with pytest.raises(CheckpointError, match=r"state is torch.uint8 \[3\], expected torch.uint8 \[1, 5056\]"):
        distill(_dropout_student(), ModelTeacher(trained_mlp), digits.train, digits.val, resume=True, **settings)
