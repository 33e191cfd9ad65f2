"""Reading members from files: format detection by suffix and content, one loader per format."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from torch import nn

from .._checks import PathArg, PositiveInt, checked
from .._files import first_repeated_file, read_file
from .._safetensors import check_readable, parse_description, read_tensors
from ..errors import CheckpointError, InvalidInputError, ModelFusionError
from ..members import MAX_NAME_CHARS, Member, SklearnMember, TorchMember
from ..tasks import Task
from .archives import archive_names
from .factory import build_model, build_named_model, load_state_dict_checked
from .onnx import OnnxModel
from .skops import load_skops
from .transformers import is_transformers_folder, load_transformers_member

__all__ = ["LoadedModel", "load_model", "load_member", "load_members", "load_skops", "SUFFIXES", "METADATA_KEY"]

METADATA_KEY = "modelfusion"  # key of our JSON in a safetensors header
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
SUFFIXES = (".safetensors", *STATE_DICT_SUFFIXES, *TORCHSCRIPT_SUFFIXES, ".pt2", ".onnx", ".skops", *PICKLE_SUFFIXES)
MAX_ONNX_BYTES = 2**31 - 1  # protobuf's own limit: a larger .onnx keeps its weights in external files
SAFE_UNPICKLER_TORCH = "2.10"  # the first torch whose weights_only=True loading has no known escape
# Nested checkpoints often keep the weights under one of these keys.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


Label = StrictStr | StrictInt | StrictFloat | StrictBool


class MemberHeader(BaseModel):
    """What `save_member` records in a safetensors header; other keys are ignored (files of newer versions)."""

    model_config = ConfigDict(extra="ignore")

    name: StrictStr | None = Field(None, max_length=MAX_NAME_CHARS)
    task: Task = "classification"
    classes: list[Label] | None = Field(None, max_length=1_000_000)
    factory: StrictStr | None = Field(None, max_length=1024)
    factory_kwargs: dict | None = None
    num_outputs: StrictInt | None = Field(None, ge=1)


@dataclass
class LoadedModel:
    """A model read from a file, with what the file says about it (factory, task, name, classes)."""

    model: Any
    format: str
    metadata: dict = field(default_factory=dict)


def _code_refused(path: Path, kind: str, detail: str = "") -> CheckpointError:
    return CheckpointError(
        f"{path} is {kind}{detail}: loading it runs code from the file, so it is refused. If you trust its "
        "source, pass trust_code=True (CLI: --trust-code); better, convert it once: save the state dict with "
        "safetensors.torch.save_file(model.state_dict(), 'model.safetensors') or a scikit-learn estimator "
        "with skops.io.dump(est, 'model.skops')"
    )


def _wrap_errors(path: Path | str, fmt: str, read: Callable[[], Any]) -> Any:
    """Run `read`, turning any low-level failure into one CheckpointError that names the file."""
    try:
        return read()
    except ModelFusionError:
        raise
    except Exception as err:
        raise CheckpointError.unreadable(path, fmt, err) from None


def _model_for(path: Path, state: Mapping[str, torch.Tensor], factory, factory_kwargs, named: str | None, stored):
    """The model `state` belongs to: built by the caller's factory, else by the registered one the file names."""
    if factory is not None:
        return load_state_dict_checked(build_model(factory, factory_kwargs), state, str(path))
    if named is None:
        raise CheckpointError(
            f"{path} holds only weights; pass the model factory that builds its model as "
            "factory='package.module:function' (CLI: --factory), with factory_kwargs for its arguments"
        )
    kwargs = factory_kwargs if factory_kwargs is not None else stored
    return load_state_dict_checked(build_named_model(named, kwargs, str(path), state), state, str(path))


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    raise CheckpointError(
        f"{path} holds a {type(obj).__name__}, not a state dict of tensors (also looked under "
        f"{', '.join(STATE_DICT_KEYS)}); save model.state_dict() instead"
    )


def _refused_global(err: Exception) -> str | None:
    """The line in which torch's weights-only unpickler names the Python object it refused, if it did."""
    text = str(err)
    if "Weights only load failed" not in text and "Unsupported global" not in text:
        return None
    lines = [line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported global" in line]
    return lines[0] if lines else "it pickles Python objects beyond tensors"


def _load_torch_file(path: Path, factory, factory_kwargs, trust_code: bool) -> LoadedModel:
    names = archive_names(path)
    if names is None and not trust_code:
        # Before torch 1.6 files were raw pickles whose storage sizes the file dictates (an allocation bomb).
        raise _code_refused(path, "not a zip archive (a legacy torch file or a plain pickle)")
    if names is not None and any("/code/" in name or name.endswith("constants.pkl") for name in names):
        if not trust_code:
            raise _code_refused(path, "a TorchScript program")
        return LoadedModel(_wrap_errors(path, "TorchScript", lambda: torch.jit.load(str(path))), "torchscript")
    if not trust_code and torch.torch_version.TorchVersion(torch.__version__) < SAFE_UNPICKLER_TORCH:
        raise CheckpointError(
            f"{path}: torch {torch.__version__}'s weights-only unpickler can run code (CVE-2025-32434, "
            f"CVE-2026-24747); install torch >= {SAFE_UNPICKLER_TORCH}, or convert the file to safetensors"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(err)
        if refused is None:
            raise CheckpointError.unreadable(path, "a PyTorch checkpoint", err) from None
        if not trust_code:
            raise _code_refused(path, "a pickled model", f" ({refused})") from None
        obj = _wrap_errors(path, "a pickled model", lambda: torch.load(str(path), weights_only=False))
        if isinstance(obj, nn.Module):
            return LoadedModel(obj.eval(), "pickle")
    except Exception as err:
        raise CheckpointError.unreadable(path, "a PyTorch checkpoint", err) from None
    state = _unwrap_state_dict(obj, path)
    return LoadedModel(_model_for(path, state, factory, factory_kwargs, None, None), "state_dict")


def _exported_metadata(program) -> dict:
    """An exported graph has no layers to read its output width from; run it once on its own example input."""
    example = getattr(program, "example_inputs", None)
    if not example:
        return {}
    args, kwargs = example
    with torch.no_grad():
        out = program.module()(*args, **kwargs)
    return {"num_outputs": int(out.shape[-1])} if isinstance(out, torch.Tensor) and out.ndim == 2 else {}


def _load_pickle(path: Path, trust_code: bool) -> LoadedModel:
    if not trust_code:
        raise _code_refused(path, "a pickle")
    import joblib

    return LoadedModel(_wrap_errors(path, "a pickle", lambda: joblib.load(path)), "pickle")


def load_model(
    path: str | os.PathLike,
    *,
    factory: str | Callable[..., nn.Module] | None = None,
    factory_kwargs: Mapping | None = None,
    trust_code: bool = False,
    trusted_types: Sequence[str] = (),
    trust_pickle: bool = False,
) -> LoadedModel:
    """Read a model (an `nn.Module` or a scikit-learn estimator) from `path`, safely.

    Args:
        path: a checkpoint in one of the formats listed in `modelfusion.io`.
        factory: for weights-only files, the function building the model, or its `package.module:function`.
        factory_kwargs: arguments for `factory` (default: the ones stored in the file by `save_member`).
        trust_code: allow formats whose loading or running executes code from the file (pickles, TorchScript,
            torch.export programs): only for files you trust.
        trusted_types: extra type (or function) names a skops file may contain beyond the allowlist of
            `modelfusion.io.skops` (common estimators; no callables).
        trust_pickle: the earlier name of `trust_code`, still accepted.

    Raises:
        CheckpointError: missing, unknown, corrupt or unsafe file, unimportable factory, weights that do
        not fit the factory's model.
    """
    trust_code = trust_code or trust_pickle
    path = Path(path)
    check_readable(path, "checkpoint")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state, description = read_tensors(path, key=METADATA_KEY, what="checkpoint")
        header = parse_description(MemberHeader, description or {}, path, "checkpoint header")
        model = _model_for(path, state, factory, factory_kwargs, header.factory, header.factory_kwargs)
        return LoadedModel(model, "safetensors", header.model_dump(exclude_unset=True))
    if suffix in STATE_DICT_SUFFIXES:
        return _load_torch_file(path, factory, factory_kwargs, trust_code)
    if suffix in TORCHSCRIPT_SUFFIXES:
        archive_names(path)
        if not trust_code:
            raise _code_refused(path, "a TorchScript program")
        return LoadedModel(_wrap_errors(path, "TorchScript", lambda: torch.jit.load(str(path))), "torchscript")
    if suffix == ".pt2":
        # torch.export.load unpickles parts of the archive and resolves any `torch.*` name in the graph.
        archive_names(path)
        if not trust_code:
            raise _code_refused(path, "a torch.export program")
        program = _wrap_errors(path, "a torch.export program", lambda: torch.export.load(str(path)))
        return LoadedModel(program.module(), "torch.export", _exported_metadata(program))
    if suffix == ".onnx":
        model = OnnxModel(read_file(path, "ONNX model", MAX_ONNX_BYTES), what=str(path), trusted=trust_code)
        header = parse_description(MemberHeader, model.metadata, path, "ONNX metadata")
        return LoadedModel(model, "onnx", header.model_dump(exclude_unset=True))
    if suffix == ".skops":
        return LoadedModel(load_skops(path, trusted_types, trust_code=trust_code), "skops")
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, trust_code)
    raise CheckpointError(
        f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; supported: {', '.join(SUFFIXES)}"
    )


@checked
def load_member(
    path: PathArg,
    *,
    factory: str | Callable[..., nn.Module] | None = None,
    factory_kwargs: Mapping | None = None,
    trust_code: bool = False,
    trusted_types: Sequence[str] = (),
    trust_pickle: bool = False,
    name: str | None = None,
    task: Task | None = None,
    classes: Sequence | None = None,
    batch_size: PositiveInt = 1024,
) -> Member:
    """Load a checkpoint as a `Member` ready to predict.

    Name, task and classes default to what the file records (files written by `save_member`), then to the
    file's stem, classification, and `0..C-1`. See `load_model` for the other arguments. A folder holding a
    transformers sequence classifier (`config.json`, `model.safetensors`, tokenizer files) loads as a member
    that predicts on lists of strings or token ids, in batches of at most 64 (`io.transformers`).

    Example:
        >>> member = load_member("runs/demo/members/mlp_0.safetensors")
        >>> member.predict(X).shape
        torch.Size([360, 10])
    """
    if is_transformers_folder(Path(path)):
        return load_transformers_member(path, name=name, task=task, classes=classes, batch_size=min(batch_size, 64))
    loaded = load_model(
        path,
        factory=factory,
        factory_kwargs=factory_kwargs,
        trust_code=trust_code or trust_pickle,
        trusted_types=trusted_types,
    )
    try:
        return _as_member(loaded, path, factory, factory_kwargs, name, task, classes, batch_size)
    except InvalidInputError as err:  # what the file records does not make a member (classes twice, NaN)
        raise CheckpointError(f"{path}: {err}") from None


def _as_member(loaded: LoadedModel, path, factory, factory_kwargs, name, task, classes, batch_size) -> Member:
    meta = loaded.metadata
    name = name or meta.get("name") or Path(path).stem
    if isinstance(loaded.model, nn.Module):
        spec = factory if isinstance(factory, str) else meta.get("factory")
        kwargs = factory_kwargs if factory_kwargs is not None else meta.get("factory_kwargs")
        return TorchMember(
            loaded.model,
            name=name,
            task=task or meta.get("task", "classification"),
            classes=classes if classes is not None else meta.get("classes") or None,
            num_outputs=meta.get("num_outputs"),
            batch_size=batch_size,
            factory=spec if loaded.format in ("safetensors", "state_dict") else None,
            factory_kwargs=kwargs,
        )
    if hasattr(loaded.model, "fit"):
        return SklearnMember(loaded.model, name=name, task=task)
    raise CheckpointError(f"{path} holds a {type(loaded.model).__name__}, neither an nn.Module nor an estimator")


def load_members(
    paths: Sequence[str | os.PathLike], *, note: Callable[[str], None] | None = None, **options
) -> list[Member]:
    """Load each checkpoint as a member (`load_member(path, **options)`), refusing a checkpoint given twice
    (the same file under two names, or identical copies: in any fusion it would silently count twice).
    Members whose stored names collide are named after their files, and `note` is told so.
    """
    from ..members import name_after_files

    repeated = first_repeated_file(paths)
    if repeated is not None:
        first, second, how = repeated
        raise InvalidInputError(
            f"{paths[first]} and {paths[second]} are {how}: the same checkpoint given twice would count twice in "
            "every fusion; give each member once"
        )
    members = [load_member(path, **options) for path in paths]
    renamed = name_after_files(members, paths)
    if renamed and note is not None:
        note(renamed)
    return members
