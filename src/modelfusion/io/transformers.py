"""Hugging Face transformers folders (`config.json` + safetensors weights + tokenizer files) as members, for
sequence classification (extra `hf`).

Nothing in the folder decides what code runs: `config.json`'s `model_type` must be one that transformers itself
ships for sequence classification (a folder asking for remote code, `auto_map`, is refused and
`trust_remote_code` is never passed), weights are read from safetensors only, and nothing is downloaded
(`local_files_only`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .._files import read_file
from .._modules import evaluating
from ..errors import CheckpointError, DataError, InvalidInputError, MissingExtraError, first_line
from ..members import TorchMember
from ..readers.files import check_folder_files
from ..tasks import Task
from ..texts import Texts, is_texts

__all__ = [
    "TransformersClassifier",
    "TransformersMember",
    "is_transformers_folder",
    "load_transformers_member",
    "save_transformers_member",
]

MAX_CONFIG_BYTES = 1 * 2**20
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MissingExtraError("transformers folders need transformers: pip install 'modelfusion[hf]'") from None
    return transformers


def is_transformers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


class TransformersClassifier(nn.Module):
    """A transformers sequence classifier and its tokenizer as one module: `forward` takes token ids
    `[N, L]` (padding where they equal the pad token) or a list of strings, tokenized here, and gives logits."""

    def __init__(self, model: nn.Module, tokenizer, *, max_length: int = 512) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        pad = tokenizer.pad_token_id
        self.pad_token_id = 0 if pad is None else int(pad)

    def tokenize(self, texts: Sequence[str], *, padding: bool | str = True) -> torch.Tensor:
        """Token ids `[N, L]` of `texts`, padded to the longest (or `padding="max_length"`), truncated."""
        encoded = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return encoded["input_ids"]

    @property
    def vocabulary_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    def forward(self, inputs) -> torch.Tensor:
        ids = self.tokenize(inputs).to(self._device()) if is_texts(inputs) else torch.as_tensor(inputs)
        if ids.ndim != 2 or ids.is_floating_point() or ids.is_complex():
            raise InvalidInputError(f"token ids must be integers [N, L], got {ids.dtype} of shape {list(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocabulary_size):
            raise InvalidInputError(
                f"token ids must lie in 0..{self.vocabulary_size - 1} (the model's vocabulary), got "
                f"{int(ids.min())}..{int(ids.max())}"
            )
        attention = (ids != self.pad_token_id).long()
        return self.model(input_ids=ids.long(), attention_mask=attention).logits

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device


class TransformersMember(TorchMember):
    """A `TransformersClassifier` as a member: `predict` takes strings (tokenized batch by batch) or token ids."""

    def predict(self, X) -> torch.Tensor:
        if not is_texts(X):
            return super().predict(X)
        texts = X if isinstance(X, Texts) else Texts(X)
        return torch.cat(
            [self._predict_texts(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        )

    def _predict_texts(self, texts: Texts) -> torch.Tensor:
        with evaluating(self.module), torch.no_grad():
            out = self.module(list(texts)).float().cpu()
        return out[:, 0] if self.task == "regression" else out

    def __repr__(self) -> str:
        return f"TransformersMember({self.name!r}, {type(self.module.model).__name__}, task={self.task})"


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(read_file(path, "transformers config", MAX_CONFIG_BYTES))
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return config


def _check_architecture(folder: Path, config: dict, transformers) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    if "auto_map" in config:
        raise CheckpointError(
            f"{folder / 'config.json'} asks for code from the folder (auto_map); only architectures transformers "
            "ships are loaded, never remote code"
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        shipped = ", ".join(sorted(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)[:8])
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type {model_type!r} is not a sequence-classification architecture "
            f"that transformers ships ({shipped}, ...)"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(
            f"{folder}: no model.safetensors; save the model with save_pretrained(folder, safe_serialization=True)"
        )
    return model_type


def load_transformers_member(
    folder: str | Path,
    *,
    name: str | None = None,
    task: Task | None = None,
    classes: Sequence | None = None,
    batch_size: int = 32,
    max_length: int = 512,
) -> TransformersMember:
    """A sequence classifier saved with `save_pretrained` (and its tokenizer) as a member.

    Classes default to the config's `id2label` in id order; the task to regression when the config says so
    (`problem_type`, or one label).
    """
    transformers = _transformers()
    folder = Path(folder)
    try:  # transformers opens the folder's files itself: a FIFO among them would hang it
        check_folder_files(folder, "transformers folder")
    except DataError as err:
        raise CheckpointError(str(err)) from None
    config_data = _read_config(folder)
    _check_architecture(folder, config_data, transformers)
    options = {"local_files_only": True, "trust_remote_code": False}
    logging = transformers.utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # one member, one line: no "Loading weights" bar per folder
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), **options)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), config=config, use_safetensors=True, **options
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **options)
    except Exception as err:  # OSError, ValueError, KeyError... from a damaged or partial folder
        raise CheckpointError(f"{folder}: cannot load it as a transformers classifier ({first_line(err)})") from None
    finally:
        if bars:
            logging.enable_progress_bar()
    # Texts are cut to what the model can take: its position embeddings bound the length.
    max_length = min(max_length, getattr(config, "max_position_embeddings", None) or max_length)
    if task is None:
        task = "regression" if config.problem_type == "regression" or config.num_labels == 1 else "classification"
    if classes is None and task == "classification":
        labels = config.id2label or {}
        classes = [labels.get(i, labels.get(str(i), i)) for i in range(config.num_labels)]
    module = TransformersClassifier(model.eval(), tokenizer, max_length=max_length)
    if len(tokenizer) > module.vocabulary_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings take "
            f"{module.vocabulary_size}; the tokenizer files do not belong to this model"
        )
    return TransformersMember(
        module,
        name=name or folder.name,
        task=task,
        classes=classes if task == "classification" else None,
        num_outputs=config.num_labels if task == "classification" else 1,
        batch_size=batch_size,
    )


def save_transformers_member(member: TransformersMember, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the member as a `save_pretrained` folder (safetensors weights and tokenizer files; its classes as
    the config's `id2label`), atomically; `load_member(path)` reads it back."""
    from .._atomic import atomic_dir

    module = member.module
    model = copy.deepcopy(module.model)
    if member.classes is not None:
        model.config.id2label = {i: str(c) for i, c in enumerate(member.classes)}
        model.config.label2id = {str(c): i for i, c in enumerate(member.classes)}
    with atomic_dir(path, overwrite=overwrite) as folder:
        model.save_pretrained(str(folder), safe_serialization=True)
        module.tokenizer.save_pretrained(str(folder))
    return Path(path)
