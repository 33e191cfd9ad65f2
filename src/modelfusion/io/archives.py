"""Zip archives (torch, TorchScript, torch.export and skops files are zips): their declared sizes checked
before anything unpacks them."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from ..errors import CheckpointError, first_line

__all__ = ["archive_names", "read_member", "MAX_EXPANSION", "EXPANSION_SLACK_BYTES", "MAX_ARCHIVE_ENTRIES"]

# Zip archives may unpack to at most this many times their size (plus the slack): torch and TorchScript store
# tensors uncompressed; only a zip bomb expands a hundredfold.
MAX_EXPANSION = 100
EXPANSION_SLACK_BYTES = 64 * 2**20
MAX_ARCHIVE_ENTRIES = 100_000


def _open(source: Path | bytes, label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as err:  # BadZipFile, and what is_zipfile itself raises on odd end records
        raise CheckpointError.unreadable(label, "a zip archive", err) from None


def archive_names(source: Path | bytes, label: str | None = None) -> list[str] | None:
    """The member names of the zip archive `source` (a file or its bytes), after checking that its declared
    sizes are sane; None when `source` is not a zip."""
    label = label or str(source)
    try:
        # is_zipfile itself raises on some malformed end records ("zipfiles that span multiple disks").
        is_zip = zipfile.is_zipfile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as err:
        raise CheckpointError.unreadable(label, "a zip archive", err) from None
    if not is_zip:
        return None
    with _open(source, label) as archive:
        entries = archive.infolist()
    if len(entries) > MAX_ARCHIVE_ENTRIES:
        raise CheckpointError(f"{label}: the archive lists {len(entries)} entries (at most {MAX_ARCHIVE_ENTRIES})")
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    declared = sum(entry.file_size for entry in entries)
    if declared > MAX_EXPANSION * size + EXPANSION_SLACK_BYTES:
        raise CheckpointError(
            f"{label}: the archive declares {declared:,} bytes unpacked from {size:,} on disk (more than "
            f"{MAX_EXPANSION}x + {EXPANSION_SLACK_BYTES // 2**20} MiB): refused as a likely zip bomb"
        )
    return [entry.filename for entry in entries]


def read_member(source: Path | bytes, name: str, label: str) -> bytes:
    """The bytes of the entry `name` of an archive `archive_names` has checked."""
    with _open(source, label) as archive:
        try:
            return archive.read(name)
        except KeyError:
            raise CheckpointError(f"{label}: the archive has no {name}; is it a file of this kind?") from None
        except Exception as err:  # a corrupt entry: zlib errors, bad CRC
            raise CheckpointError(f"{label}: cannot unpack {name} ({first_line(err)})") from None
