"""Safe outputs: nothing of the user's is replaced unless asked, and interrupted writes leave nothing behind.

Every output is written under a temporary name beside its target and renamed into place at the end. Temporary
names say whose they are (`.NAME.modelfusion-PID-XXXX.tmp`), so the next run beside them removes those whose
process is dead (a `kill -9` cannot be cleaned up by the process itself). A folder output is also locked
(`.NAME.modelfusion.lock`, holding the owner's PID) so that two runs cannot write the same folder at once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from .errors import OutputError

__all__ = [
    "atomic_path",
    "atomic_dir",
    "check_output",
    "check_space",
    "remove_stale",
    "scratch_dir",
    "write_json",
    "jsonable",
]

_TAG = "modelfusion"
_TEMPORARY = re.compile(rf"^\.(?P<name>.+)\.{_TAG}-(?P<pid>\d+)-[^.]+\.(?P<kind>tmp|old)$")
# Suffixes that make a folder output look like a file (a checkpoint, a config, a report).
_FILE_SUFFIXES = {".safetensors", ".pt", ".pth", ".bin", ".pt2", ".skops", ".pkl", ".joblib", ".json", ".yaml", ".yml"}
_OVERWRITE_HINT = "pass --overwrite (Python: overwrite=True) to replace it, or choose another output"


def _umask_mode(full: int) -> int:
    """`full` (0o666 for files, 0o777 for folders) less the process umask: the mode `open` would give.

    mkstemp and mkdtemp create private (0600 / 0700) entries; outputs get the usual mode back before the rename.
    """
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders of dead modelfusion runs in `folder`; return what was removed.

    A dead run's `.old` copy whose target is gone (killed between the two renames of a replacement) is put
    back instead of removed: it is the user's previous output.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        target = folder / match["name"]
        try:
            if match["kind"] == "old" and not target.exists():
                os.replace(entry, target)
                continue
            _remove(entry)
            removed.append(entry)
        except OSError:
            continue  # another run got there first, or we may not touch it: leave it
    return removed


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_output(
    path: str | os.PathLike,
    *,
    kind: Literal["file", "folder"],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> None:
    """Raise an `OutputError` unless `path` may be written as a `kind` output.

    Refused: an existing non-empty folder or an existing file (unless `overwrite`), and always an output that
    is one of the `inputs`, holds one of them, is inside an input folder (part of a model folder), or
    holds the working folder or the home folder (`--out . --overwrite` must not replace a project).
    """
    target = _resolved(Path(path))
    path = Path(path)
    for where in (Path.cwd(), Path.home()):
        if _resolved(where).is_relative_to(target):
            raise OutputError(f"{path} holds the working folder or the home folder ({where}); choose another output")
    for source in inputs:
        if source is None:
            continue
        source = _resolved(Path(source))
        if source == target or source.is_relative_to(target):
            what = "is" if source == target else "holds"
            raise OutputError(f"{path} {what} an input of this run ({source}); choose another output")
        if source.is_dir() and target.is_relative_to(source):
            # even a new file: a model folder reads what it holds (a fusion's members/ would hold two files)
            raise OutputError(f"{path} is part of an input of this run ({source}); choose another output")
    _check_creatable(path)
    if kind == "folder" and path.suffix.lower() in _FILE_SUFFIXES:
        raise OutputError(f"{path} is named like a {path.suffix} file but the output is a folder; name it without it")
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        if kind == "file":
            problem = "is a folder, not a file"
        elif any(True for _ in path.iterdir()):
            problem = "exists and is not empty"
        else:
            return
    else:
        problem = "exists" if kind == "file" else "is a file, not a folder"
    if not overwrite:
        raise OutputError(f"{path} {problem}; {_OVERWRITE_HINT}")


def _check_creatable(path: Path) -> None:
    """Raise unless the folder `path` goes into exists or can be created, and may be written."""
    ancestor = Path(os.path.abspath(path)).parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot write {path}: {ancestor} is a file, not a folder; choose another output")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: the folder {ancestor} is not writable; choose another output")


def _size(count: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _existing_folder(target: Path) -> Path:
    folder = Path(os.path.abspath(target)).parent
    while not folder.exists():
        folder = folder.parent
    return folder


def _file_size_limit() -> int | None:
    """The most bytes this process may write to one file (`ulimit -f`), or None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def check_space(target: str | os.PathLike, needed: int) -> None:
    """Raise an `OutputError` unless `needed` bytes can be written at `target`: the free space of its disk and
    the process's file size limit, checked before anything is written."""
    target = Path(target)
    limit = _file_size_limit()
    if limit is not None and needed > limit:
        raise OutputError(
            f"cannot write {target}: it needs about {_size(needed)} and files are limited to {_size(limit)} here "
            "(ulimit -f); raise the limit or choose a smaller output"
        )
    folder = _existing_folder(target)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OutputError(
            f"cannot write {target}: it needs about {_size(needed)} and the disk of {folder} has {_size(free)} free; "
            f"free {_size(needed - free)} there or choose another output"
        )


def _out_of_space(err: BaseException, target: Path, written: Path | None) -> str | None:
    """Why writing `target` failed, when the disk or the file size limit stopped it: libraries wrap the
    system's error in their own (safetensors says so in its text, torch's zip writer only that its position is
    off), so the error chain, its text and the disk itself are all asked. None for any other failure."""
    chain, cause = [], err
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    codes = {getattr(e, "errno", None) for e in chain}
    text = " ".join(str(e) for e in chain)
    limit = _file_size_limit()
    try:
        grown = written.stat().st_size if written is not None and written.exists() else 0
        free = shutil.disk_usage(_existing_folder(target)).free
    except OSError:
        grown, free = 0, None
    if errno.EFBIG in codes or "File too large" in text or (limit is not None and grown >= limit):
        shown = f" ({_size(limit)})" if limit is not None else ""
        return f"the file reached the size limit set for this process{shown}, ulimit -f; raise it"
    full = codes & {errno.ENOSPC, errno.EDQUOT} or "No space left on device" in text or "quota" in text
    if full or (free is not None and free < 2**20 and isinstance(err, OSError | RuntimeError)):
        shown = f" ({_size(free)} free)" if free is not None else ""
        return f"its disk filled up{shown}; free space there or choose another output"
    return None


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Turn the operating system's refusals (permissions, full disk, read-only media) into one clear line."""
    try:
        yield
    except OSError as err:
        reason = _out_of_space(err, target, None)
        if reason is not None:
            raise OutputError(f"cannot write {target}: {reason}") from None
        raise OutputError(f"cannot write {target} ({err.strerror or err}); choose a writable output location") from None


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.{_TAG}-{os.getpid()}-"


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP while a temporary file or folder is created and its name kept: one that
    arrives then goes to its handler just after, when the name is known and the temporary can be removed.

    The handlers are swapped, not the signal mask: torch's threads would take a signal the main thread blocks.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    pending: list[tuple[int, object]] = []
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append((signum, frame))) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum, frame in pending[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _prepare(target: Path) -> None:
    with _writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target.parent)


@contextlib.contextmanager
def scratch_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A working folder beside `target` (never in the system's temporary folder), named for this process so
    that, if it is killed, the next run writing beside it removes the folder; removed on exit."""
    target = Path(target)
    _prepare(target)
    folder = None
    try:
        with _signals_held(), _writing(target):
            folder = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
        yield folder
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `path`, on error it is removed.

    A file replaces a file; an existing folder at `path` is refused (`check_output` first for the user's
    outputs: this is also the writer of checkpoints and internal files, which replace their own). With `size`
    (the bytes about to be written), a disk without the room for them is refused before anything is written;
    a disk that fills up while writing is one `OutputError` too.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target} is a folder, not a file; choose another output")
    if size is not None:
        check_space(target, size)
    _prepare(target)
    tmp_path = None
    try:
        with _signals_held(), _writing(target):
            fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
            tmp_path = Path(tmp)
            os.close(fd)
        yield tmp_path
        with _writing(target):
            if tmp_path.exists():
                os.chmod(tmp_path, _umask_mode(0o666))
            os.replace(tmp_path, target)
    except BaseException as err:
        reason = _out_of_space(err, target, tmp_path) if isinstance(err, Exception) else None
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if reason is not None:
            raise OutputError(f"cannot write {target}: {reason}") from None
        raise


def _lock_owner(lock: Path) -> int | None:
    """The PID in a lock file; None while its owner is still writing it (an empty file younger than a minute)."""
    try:
        text = lock.read_text().strip()
        age = time.time() - lock.stat().st_mtime
    except (OSError, UnicodeDecodeError):
        return 0
    if text.isdigit():
        return int(text)
    return None if age < 60 else 0


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Hold `.NAME.modelfusion.lock` beside `target`: one writer per output folder at a time. A lock whose
    owner died (kill -9) is taken over."""
    lock = target.parent / f".{target.name}.{_TAG}.lock"
    acquired = False
    try:
        with _signals_held():  # a stop while the lock is taken is raised once `acquired` says whose it is
            fd = _open_lock(lock, target)
            acquired = True
            try:
                with _writing(target):
                    os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        yield
    finally:
        if acquired:
            lock.unlink(missing_ok=True)


def _open_lock(lock: Path, target: Path) -> int:
    """Create the lock file (O_EXCL), taking over one whose owner died."""
    for _ in range(2):
        try:
            return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is None or (owner and _alive(owner)):
                raise OutputError(
                    f"{target} is being written by another modelfusion run (process {owner or 'starting'}); "
                    f"wait for it to finish, or remove {lock} if that process is gone"
                ) from None
            lock.unlink(missing_ok=True)
        except OSError as err:
            raise OutputError(f"cannot write {target} ({err.strerror}); choose a writable output location") from None
    raise OutputError(f"cannot lock {target}: {lock} keeps coming back; is another run starting?")


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it becomes `path`, on error it is removed.

    An existing non-empty folder or a file at `path` is replaced only with `overwrite`, and never one that is
    or holds one of `inputs` (`check_output`, checked on entry and again before the rename).
    """
    target = Path(path)
    inputs = list(inputs)
    check_output(target, kind="folder", overwrite=overwrite, inputs=inputs)
    _prepare(target)
    with _lock(target):
        tmp = None
        try:
            with _signals_held(), _writing(target):
                tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
            yield tmp
            check_output(target, kind="folder", overwrite=overwrite, inputs=inputs)
            with _writing(target):
                os.chmod(tmp, _umask_mode(0o777))
                if target.exists() or target.is_symlink():
                    old = target.parent / f"{_temporary_prefix(target)}{os.urandom(4).hex()}.old"
                    os.replace(target, old)
                    os.replace(tmp, target)
                    _remove(old)
                else:
                    os.replace(tmp, target)
        except BaseException as err:
            reason = _out_of_space(err, target, None) if isinstance(err, Exception) else None
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if reason is not None:
                raise OutputError(f"cannot write {target}: {reason}") from None
            raise


def jsonable(value):
    """`value` with tensors and arrays as lists and anything else unknown as its repr, ready for JSON."""
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return repr(value)


def write_json(path: str | os.PathLike, data) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
