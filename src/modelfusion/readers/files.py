"""Files a reader may open: regular files (no FIFOs, devices or folders) of bounded size, checked before any
byte is read, so that no file can hang a reader or make it allocate more than the file could hold."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import DataError

__all__ = ["MAX_FILE_BYTES", "regular_file", "checked_folder"]

# A data file larger than this is refused before reading: tables, arrays and images are read whole into memory.
MAX_FILE_BYTES = 8 * 2**30


def _stat(path: Path, what: str) -> os.stat_result:
    if "\x00" in str(path):
        raise DataError(f"{str(path)!r} holds a NUL character, which no file name can")
    try:
        return path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the {what} ({err.strerror})") from None


def regular_file(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_FILE_BYTES) -> Path:
    """`path` as a Path after checking that it is a regular file of at most `max_bytes` that we may open."""
    path = Path(path)
    info = _stat(path, what)
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{path} is a folder; expected a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path} is not a regular file (a FIFO, socket or device); expected a {what}")
    if info.st_size > max_bytes:
        raise DataError(f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} a {what} may have")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot open the {what} (permission denied)")
    return path


def checked_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path after checking that it is a folder."""
    path = Path(path)
    if not stat.S_ISDIR(_stat(path, what).st_mode):
        raise DataError(f"{path} is not a folder; expected a {what}")
    return path
