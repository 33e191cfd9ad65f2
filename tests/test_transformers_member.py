"""Transformers folders as members: a tiny BERT built and saved here (random weights, a vocabulary written by the
test), loaded by load_member with transformers' own logits, in an ensemble and as a distillation teacher."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from modelfusion import CheckpointError, InvalidInputError, OutputError
from modelfusion.datasets import Split
from modelfusion.distill import ModelTeacher, distill
from modelfusion.ensemble import make_combiner
from modelfusion.io import load_member, save_member
from modelfusion.io.transformers import TransformersMember
from modelfusion.predictions import collect_predictions
from modelfusion.texts import Texts

transformers = pytest.importorskip("transformers")

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "the", "was", "acting", "film"]
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def _reviews(count: int, seed: int) -> tuple[list[str], torch.Tensor]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(3, 9)))) for _ in range(count)]
    labels = [int(sum(t.count(w) for w in WORDS[:3]) > sum(t.count(w) for w in WORDS[3:6])) for t in texts]
    return texts, torch.tensor(labels)


def _save_bert(folder, seed: int, **config_overrides):
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCABULARY)})
    config = transformers.BertConfig(
        vocab_size=len(VOCABULARY),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        initializer_range=0.5,  # random weights large enough that different texts get different logits
        **config_overrides,
    )
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model, tokenizer


@pytest.fixture(scope="module")
def berts(tmp_path_factory):
    root = tmp_path_factory.mktemp("berts")
    return [(root / f"bert{seed}", *_save_bert(root / f"bert{seed}", seed)) for seed in (0, 1)]


def test_a_saved_bert_gives_transformers_own_logits_on_strings_and_on_token_ids(berts):
    folder, model, tokenizer = berts[0]
    texts, _ = _reviews(70, seed=0)
    member = load_member(folder, batch_size=16)
    assert isinstance(member, TransformersMember) and member.classes == ("negative", "positive")
    assert member.name == "bert0" and member.num_outputs == 2
    with torch.no_grad():
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        expected = model(**encoded).logits
    got = member.predict(texts)  # 5 batches, each padded to its own longest text
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got.std(0).min() > 1e-3  # the texts get different logits: the comparison is not of constants
    ids = member.module.tokenize(texts)
    torch.testing.assert_close(member.predict(ids), expected, atol=1e-5, rtol=0)


def test_a_transformers_member_saves_as_a_folder_that_loads_back(berts, tmp_path):
    member = load_member(berts[1][0], name="renamed")
    path = save_member(member, tmp_path / "saved")
    again = load_member(path)
    texts, _ = _reviews(9, seed=3)
    torch.testing.assert_close(again.predict(texts), member.predict(texts))
    assert again.classes == member.classes and again.name == "saved"
    with pytest.raises(OutputError, match="exists"):
        save_member(member, tmp_path / "saved")


def test_transformers_members_take_part_in_an_ensemble_on_texts(berts):
    members = [load_member(folder) for folder, *_ in berts]
    texts, labels = _reviews(60, seed=1)
    val = collect_predictions(members, Texts(texts[:30]), labels[:30], "val", progress=False)
    test = collect_predictions(members, texts[30:], labels[30:], "test", progress=False)
    assert val.outputs.shape == (2, 30, 2) and test.member_names == ("bert0", "bert1")
    fused = make_combiner("mean").fit(val).predict_proba(test)
    expected = torch.stack([torch.softmax(m.predict(texts[30:]), 1) for m in members]).mean(0)
    torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)


class BagOfWords(nn.Module):
    """A small student over token ids: mean of word embeddings (padding excluded), then a linear layer."""

    def __init__(self, vocabulary: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocabulary, 16, mode="mean", padding_idx=0)
        self.out = nn.Linear(16, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids))


def test_a_transformers_member_teaches_a_small_student(berts):
    folder, *_ = berts[0]
    teacher = load_member(folder)
    texts, _ = _reviews(240, seed=2)
    ids = teacher.module.tokenize(texts, padding="max_length")  # one length for every split
    teacher_labels = teacher.predict(ids).argmax(1)  # what the student should learn to say
    train, val = Split("train", ids[:180], teacher_labels[:180]), Split("val", ids[180:], teacher_labels[180:])
    torch.manual_seed(0)
    student = BagOfWords(len(VOCABULARY), 2)
    before = (student(val.X).argmax(1) == val.y).float().mean()
    result = distill(student, ModelTeacher([teacher]), train, val, epochs=30, lr=1e-2, batch_size=32, progress=False)
    agreement = (result.student(val.X).argmax(1) == val.y).float().mean()
    assert agreement > max(before, 0.75), (before, agreement)


def test_folders_asking_for_code_or_unknown_architectures_are_refused(tmp_path, berts):
    folder, *_ = berts[0]
    config = json.loads((folder / "config.json").read_text())
    for change, message in (
        ({"auto_map": {"AutoModelForSequenceClassification": "modeling.Evil"}}, "asks for code from the folder"),
        ({"model_type": "evil-net"}, "model_type 'evil-net' is not a sequence-classification architecture"),
    ):
        bad = tmp_path / f"bad{len(message)}"
        bad.mkdir()
        for file in folder.iterdir():
            (bad / file.name).write_bytes(file.read_bytes())
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            load_member(bad)
    (bad / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    (bad / "tokenizer_config.json").write_text(json.dumps({**tokenizer, "cls_token": "CLS]"}))  # a new token
    with pytest.raises(CheckpointError, match="the tokenizer has 18 tokens but the model's embeddings take 17"):
        load_member(bad)
    with pytest.raises(InvalidInputError, match="token ids must lie in 0..16"):
        load_member(folder).predict(torch.tensor([[2, 17, 3]]))
    os.mkfifo(bad / "vocab.txt")  # would block transformers forever if it opened it
    with pytest.raises(CheckpointError, match="vocab.txt is a named pipe \\(FIFO\\), not a regular file"):
        load_member(bad)
    (bad / "vocab.txt").unlink()
    (bad / "model.safetensors").unlink()
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_member(bad)
