"""Reading members from files: format detection by suffix and content, one loader per format."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._safetensors import read_tensors
from ..errors import CheckpointError, ModelFusionError
from ..members import Member, SklearnMember, TorchMember
from .factory import TRUSTED_FACTORY_PREFIXES, build_model, load_state_dict_checked

__all__ = ["LoadedModel", "load_model", "load_member", "load_skops", "SUFFIXES", "METADATA_KEY"]

METADATA_KEY = "modelfusion"  # key of our JSON in a safetensors header
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
SUFFIXES = (".safetensors", *STATE_DICT_SUFFIXES, *TORCHSCRIPT_SUFFIXES, ".pt2", ".skops", *PICKLE_SUFFIXES)
# Nested checkpoints often keep the weights under one of these keys.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass
class LoadedModel:
    """A model read from a file, with what the file says about it (factory, task, name, classes)."""

    model: Any
    format: str
    metadata: dict = field(default_factory=dict)


def _pickle_refused(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a pickled model; unpickling can run arbitrary code, so it is refused. If you trust its "
        "source, pass trust_pickle=True (CLI: --trust-pickle); better, convert it once: save the state dict "
        "with safetensors.torch.save_file(model.state_dict(), 'model.safetensors') or a scikit-learn "
        "estimator with skops.io.dump(est, 'model.skops')"
    )


def _wrap_errors(path: Path | str, fmt: str, read: Callable[[], Any]) -> Any:
    """Run `read`, turning any low-level failure into one CheckpointError that names the file."""
    try:
        return read()
    except ModelFusionError:
        raise
    except Exception as err:
        raise CheckpointError.unreadable(path, fmt, err) from None


def _needs_factory(path: Path, factory, metadata: Mapping) -> tuple[Any, dict]:
    named = metadata.get("factory")
    if factory is not None:
        return factory, {}
    if named and str(named).startswith(TRUSTED_FACTORY_PREFIXES):
        return named, dict(metadata.get("factory_kwargs") or {})
    if named:
        raise CheckpointError(
            f"{path} names the model factory {named!r}, which is outside modelfusion; pass "
            f"factory={named!r} (CLI: --factory {named}) to trust it"
        )
    raise CheckpointError(
        f"{path} holds only weights; pass the model factory that builds its model as "
        "factory='package.module:function' (CLI: --factory), with factory_kwargs for its arguments"
    )


def _is_torchscript_zip(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


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


def _load_torch_file(path: Path, factory, factory_kwargs, trust_pickle: bool) -> LoadedModel:
    if _is_torchscript_zip(path):
        return LoadedModel(_wrap_errors(path, "TorchScript", lambda: torch.jit.load(str(path))), "torchscript")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The safe unpickler names the class it refused ("Unsupported global"): a fully pickled model.
        # Any other unpickling failure is a damaged file.
        if "Unsupported global" not in str(err):
            raise CheckpointError.unreadable(path, "a PyTorch checkpoint", err) from None
        if not trust_pickle:
            raise _pickle_refused(path) from None
        obj = _wrap_errors(path, "a pickled model", lambda: torch.load(str(path), weights_only=False))
        if isinstance(obj, nn.Module):
            return LoadedModel(obj.eval(), "pickle")
    except Exception as err:
        raise CheckpointError.unreadable(path, "a PyTorch checkpoint", err) from None
    state = _unwrap_state_dict(obj, path)
    spec, stored_kwargs = _needs_factory(path, factory, {})
    model = build_model(spec, factory_kwargs if factory_kwargs is not None else stored_kwargs)
    return LoadedModel(load_state_dict_checked(model, state, str(path)), "state_dict")


def _exported_metadata(program) -> dict:
    """An exported graph has no layers to read its output width from; run it once on its own example input."""
    example = getattr(program, "example_inputs", None)
    if not example:
        return {}
    args, kwargs = example
    with torch.no_grad():
        out = program.module()(*args, **kwargs)
    return {"num_outputs": int(out.shape[-1])} if isinstance(out, torch.Tensor) and out.ndim == 2 else {}


def load_skops(source: Path | bytes, trusted_types: Sequence[str] = (), label: str | None = None):
    """Read a scikit-learn estimator from a skops file or bytes with skops' safe loader.

    Classes of scikit-learn itself are trusted; any other type must be named in `trusted_types`.
    """
    import skops.io as sio

    label = label or str(source)
    where = {"data": source} if isinstance(source, bytes) else {"file": source}
    untrusted = _wrap_errors(label, "a skops file", lambda: sio.get_untrusted_types(**where))
    refused = [t for t in untrusted if t not in trusted_types and not _is_sklearn_class(t)]
    if refused:
        raise CheckpointError(
            f"{label} contains types that are not known to be safe: {', '.join(refused)}. If you trust the file, "
            "pass trusted_types=[...] with those names (CLI: --trust-type NAME for each)"
        )
    load = sio.loads if isinstance(source, bytes) else sio.load
    return _wrap_errors(label, "a skops file", lambda: load(source, trusted=list(untrusted)))


def _is_sklearn_class(name: str) -> bool:
    """Classes of scikit-learn itself (e.g. `sklearn.tree._tree.Tree`) are trusted; functions are not."""
    import importlib

    module_name, _, attr = name.rpartition(".")
    if not module_name.startswith("sklearn."):
        return False
    try:
        return isinstance(getattr(importlib.import_module(module_name), attr, None), type)
    except ImportError:
        return False


def _load_pickle(path: Path, trust_pickle: bool) -> LoadedModel:
    if not trust_pickle:
        raise _pickle_refused(path)
    import joblib

    return LoadedModel(_wrap_errors(path, "a pickle", lambda: joblib.load(path)), "pickle")


def load_model(
    path: str | os.PathLike,
    *,
    factory: str | Callable[..., nn.Module] | None = None,
    factory_kwargs: Mapping | None = None,
    trust_pickle: bool = False,
    trusted_types: Sequence[str] = (),
) -> LoadedModel:
    """Read a model (an `nn.Module` or a scikit-learn estimator) from `path`, safely.

    Args:
        path: a checkpoint in one of the formats listed in `modelfusion.io`.
        factory: for weights-only files, the function building the model, or its `package.module:function`.
        factory_kwargs: arguments for `factory` (default: the ones stored in the file by `save_member`).
        trust_pickle: allow unpickling (runs code from the file): only for files you trust.
        trusted_types: extra type names a skops file may contain (scikit-learn's own classes are trusted).

    Raises:
        CheckpointError: missing, unknown, corrupt or unsafe file, unimportable factory, weights that do
        not fit the factory's model.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file inside it")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state, metadata = read_tensors(path, key=METADATA_KEY, what="checkpoint")
        metadata = metadata or {}
        spec, stored_kwargs = _needs_factory(path, factory, metadata)
        model = build_model(spec, factory_kwargs if factory_kwargs is not None else stored_kwargs)
        return LoadedModel(load_state_dict_checked(model, state, str(path)), "safetensors", metadata)
    if suffix in STATE_DICT_SUFFIXES:
        return _load_torch_file(path, factory, factory_kwargs, trust_pickle)
    if suffix in TORCHSCRIPT_SUFFIXES:
        return LoadedModel(_wrap_errors(path, "TorchScript", lambda: torch.jit.load(str(path))), "torchscript")
    if suffix == ".pt2":
        program = _wrap_errors(path, "a torch.export program", lambda: torch.export.load(str(path)))
        return LoadedModel(program.module(), "torch.export", _exported_metadata(program))
    if suffix == ".skops":
        return LoadedModel(load_skops(path, trusted_types), "skops")
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, trust_pickle)
    raise CheckpointError(
        f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; supported: {', '.join(SUFFIXES)}"
    )


def load_member(
    path: str | os.PathLike,
    *,
    factory: str | Callable[..., nn.Module] | None = None,
    factory_kwargs: Mapping | None = None,
    trust_pickle: bool = False,
    trusted_types: Sequence[str] = (),
    name: str | None = None,
    task: str | None = None,
    classes: Sequence | None = None,
    batch_size: int = 1024,
) -> Member:
    """Load a checkpoint as a `Member` ready to predict.

    Name, task and classes default to what the file records (files written by `save_member`), then to the
    file's stem, classification, and `0..C-1`. See `load_model` for the other arguments.

    Example:
        >>> member = load_member("runs/demo/members/mlp_0.safetensors")
        >>> member.predict(X).shape
        torch.Size([360, 10])
    """
    loaded = load_model(
        path,
        factory=factory,
        factory_kwargs=factory_kwargs,
        trust_pickle=trust_pickle,
        trusted_types=trusted_types,
    )
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
