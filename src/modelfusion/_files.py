"""Reading the user's files defensively, and naming output files after data.

Every reader of a file somebody else made goes through `check_readable` (or `read_file` / `open_regular`,
which do the same and then read): only regular files are read, checked with `stat` before anything opens
them (opening a FIFO would block until a writer appears; `/dev/zero` and `/dev/urandom` never end), and a read
never takes more than the file's size as it was when checked, nor more than the caller's bound.

A name read from a file (a member's name, a class, a split) is data: wherever a file name is built from one,
`safe_stem` turns it into a stem that stays inside the folder it is joined to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointError, ModelFusionError

__all__ = [
    "check_readable",
    "read_file",
    "read_json_object",
    "open_regular",
    "first_repeated_file",
    "safe_stem",
    "unique_stems",
    "MAX_STEM_CHARS",
]

MAX_STEM_CHARS = 100
# Device names Windows reserves in any folder (with any suffix): a stem never takes one of them.
_RESERVED_STEMS = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
# No dots: a stem never carries a suffix of its own, so the one a writer appends is the file's only suffix.
_UNSAFE_CHARACTER = re.compile(r"[^A-Za-z0-9_-]+")

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _stat_regular(path: Path, what: str, error: type[ModelFusionError]) -> os.stat_result:
    """`path`'s status (links followed) after checking that it names a regular file; never opens it."""
    if "\x00" in str(path):
        raise error(f"{str(path)!r} holds a NUL character, which no file name can")
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such file (expected a {what})") from None
    except OSError as err:  # a loop of links, a name too long, a folder we may not enter
        raise error(f"{path}: cannot open the {what} ({err.strerror}); check the path") from None
    if stat.S_ISDIR(status.st_mode):
        raise error(f"{path} is a folder; pass the {what} inside it")
    if not stat.S_ISREG(status.st_mode):
        raise error(
            f"{path} is {_kind(status.st_mode)}, not a regular file; only regular files are read (expected a {what})"
        )
    return status


@contextlib.contextmanager
def open_regular(
    path: str | os.PathLike,
    what: str,
    max_bytes: int | None = None,
    *,
    error: type[ModelFusionError] = CheckpointError,
) -> Iterator[BinaryIO]:
    """Open `path` for reading after checking that it is a regular file of at most `max_bytes`; every problem
    is one `error` naming the file and `what` it should be.

    The check is made with `stat` before opening (a FIFO is never opened), and again on the open descriptor
    (the name may have been swapped in between): what is read is the file that was checked.
    """
    path = Path(path)
    status = _stat_regular(path, what, error)
    _check_size(path, status.st_size, what, max_bytes, error)
    try:  # O_NONBLOCK: should a FIFO appear under the name after the check, opening it returns at once
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise error(f"{path}: cannot open the {what} ({err.strerror}); check its permissions") from None
    file = os.fdopen(fd, "rb")
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise error(f"{path} is {_kind(opened.st_mode)}, not a regular file; only regular files are read")
        _check_size(path, opened.st_size, what, max_bytes, error)
        os.set_blocking(fd, True)
        yield file
    finally:
        file.close()


def _check_size(path: Path, size: int, what: str, max_bytes: int | None, error: type[ModelFusionError]) -> None:
    if max_bytes is not None and size > max_bytes:
        raise error(f"{path}: {size:,} bytes; a {what} is at most {max_bytes:,} bytes, so it is refused")


def check_readable(path: str | os.PathLike, what: str, *, error: type[ModelFusionError] = CheckpointError) -> None:
    """Raise a CheckpointError naming the problem unless `path` is a regular file we may read (a folder, a
    FIFO, a device, a socket, a missing or unreadable file: each is one line). Libraries that open the file
    themselves (safetensors, torch, zipfile, numpy) are called only after this check."""
    with open_regular(path, what, error=error):
        pass


def read_file(
    path: str | os.PathLike,
    what: str,
    max_bytes: int | None = None,
    *,
    error: type[ModelFusionError] = CheckpointError,
) -> bytes:
    """The bytes of the regular file `path` (see `open_regular`), at most `max_bytes` of them and never more
    than the size it had when checked (a file that grows while being read is not followed)."""
    with open_regular(path, what, max_bytes, error=error) as file:
        size = os.fstat(file.fileno()).st_size
        return file.read(size)


def first_repeated_file(paths) -> tuple[int, int, str] | None:
    """The first two of `paths` that are one file, as (i, j, how): the same file under two names (the same
    path, a link, a hard link) or two files of identical bytes (copies). Paths that are not regular files are
    skipped (their readers refuse them); files are hashed only when another has the same size."""
    seen: dict[tuple[int, int], int] = {}
    by_size: dict[int, list[int]] = {}
    for index, path in enumerate(paths):
        try:
            status = os.stat(path)
        except (OSError, ValueError):
            continue
        if not stat.S_ISREG(status.st_mode):
            continue
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            return seen[identity], index, "the same file"
        seen[identity] = index
        by_size.setdefault(status.st_size, []).append(index)
    for indices in by_size.values():
        digests: dict[bytes, int] = {}
        for index in indices if len(indices) > 1 else ():
            digest = hashlib.sha256()
            with open_regular(paths[index], "file") as file:
                for block in iter(lambda file=file: file.read(2**22), b""):
                    digest.update(block)
            if digest.digest() in digests:
                return digests[digest.digest()], index, "identical copies"
            digests[digest.digest()] = index
    return None


def read_json_object(path: str | os.PathLike, what: str, max_bytes: int = 2**20) -> dict:
    """The JSON object in the regular file `path` (a config), at most `max_bytes`; anything else is one
    CheckpointError naming the file."""
    try:
        value = json.loads(read_file(path, what, max_bytes))
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, an integer too long, nested too deep
        raise CheckpointError.unreadable(path, "JSON", err) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: a {what} is a JSON object, got {type(value).__name__}")
    return value


def safe_stem(name: object, fallback: str = "model") -> str:
    """A file stem made from `name`, a name read from a file: letters, digits, '_' and '-' only (no dot: not
    hidden, never '.' or '..', no suffix of its own), at most `MAX_STEM_CHARS` characters, never a name Windows
    reserves. When `name` had to change, a short hash of it is appended, so that two names that differ only
    in their unsafe characters still get two stems. `fallback` is used when nothing of `name` is left.

        >>> safe_stem("mlp_0")
        'mlp_0'
        >>> safe_stem("../../etc/passwd")
        'etc_passwd-3754d6cb'
    """
    text = str(name)
    cleaned = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE_CHARACTER.sub("_", cleaned).strip("_-")[:MAX_STEM_CHARS].rstrip("_-") or fallback
    if cleaned.lower() in _RESERVED_STEMS:
        cleaned = f"_{cleaned}"
    if cleaned != text:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}"
    return cleaned


def unique_stems(names: list[str] | tuple[str, ...], fallback: str = "model") -> list[str]:
    """`safe_stem` of each name, made unique within the list (`_2`, `_3`... on the rare collision), in order:
    the file stems of a folder of members, the same for the same names when it is read back."""
    stems: list[str] = []
    for name in names:
        stem = base = safe_stem(name, fallback)
        count = 1
        while stem.lower() in (s.lower() for s in stems):  # case-insensitive file systems
            count += 1
            stem = f"{base}_{count}"
        stems.append(stem)
    return stems
