"""Files a reader may open, through the foundation's `_files` (regular files only, checked with `stat` before
anything opens them, sizes bounded), with its refusals raised as `DataError`: a data file is not a checkpoint."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .. import _files
from ..errors import CheckpointError, DataError

__all__ = ["MAX_FILE_BYTES", "regular_file", "open_data", "read_data", "checked_folder", "check_folder_files"]

# A data file larger than this is refused before reading: tables, arrays and images are read whole into memory.
MAX_FILE_BYTES = 8 * 2**30


@contextlib.contextmanager
def _as_data_errors() -> Iterator[None]:
    try:
        yield
    except CheckpointError as err:
        raise DataError(str(err)) from None


@contextlib.contextmanager
def open_data(path: str | os.PathLike, what: str, *, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """`_files.open_regular` for data: the regular file `path`, at most `max_bytes` (default `MAX_FILE_BYTES`)."""
    with _as_data_errors(), _files.open_regular(path, what, MAX_FILE_BYTES if max_bytes is None else max_bytes) as file:
        yield file


def read_data(path: str | os.PathLike, what: str, *, max_bytes: int | None = None) -> bytes:
    with _as_data_errors():
        return _files.read_file(path, what, MAX_FILE_BYTES if max_bytes is None else max_bytes)


def regular_file(path: str | os.PathLike, what: str, *, max_bytes: int | None = None) -> Path:
    """`path` as a Path after checking that it is a regular file of at most `max_bytes` that we may open, for the
    libraries that open files themselves (numpy, pyarrow, Pillow)."""
    with open_data(path, what, max_bytes=max_bytes):
        pass
    return Path(path)


def checked_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path after checking that it is a folder."""
    path = Path(path)
    if "\x00" in str(path):
        raise DataError(f"{str(path)!r} holds a NUL character, which no file name can")
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise DataError(f"{path}: cannot open the {what} ({err.strerror})") from None
    if not stat.S_ISDIR(mode):
        raise DataError(f"{path} is not a folder; expected a {what}")
    return path


def check_folder_files(folder: Path, what: str, *, max_bytes: int | None = None) -> None:
    """Refuse a folder that a library will read itself (transformers, datasets) when any file in it is not a
    regular file (a FIFO would hang the library) or is over `max_bytes` (default `MAX_FILE_BYTES`)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise DataError(f"{folder}: cannot list the {what} ({err.strerror})") from None
    for entry in entries:
        if not entry.is_dir():
            regular_file(entry, f"file of a {what}", max_bytes=max_bytes)
