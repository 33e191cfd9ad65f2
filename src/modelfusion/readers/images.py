"""Folders of images in class sub-folders (torchvision's `ImageFolder` convention: `root/cat/1.png`, classes in
sorted folder order), decoded with Pillow (extra `images`). Optional `train/`, `val/` and `test/` folders
above the class folders fix the splits.

Every file is checked before it is decoded: a regular file of bounded size whose header declares a bounded
number of pixels (a decompression bomb is refused before Pillow allocates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, MissingExtraError, first_line
from .files import regular_file
from .source import Source
from .tables import SPLIT_VALUES

__all__ = ["read_image_folder", "decode", "image_header", "IMAGE_SUFFIXES", "MAX_PIXELS"]

# torchvision's IMG_EXTENSIONS.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_IMAGE_BYTES = 64 * 2**20
MAX_PIXELS = 64 * 2**20  # per image, as its header declares it
MAX_IMAGES = 2_000_000


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtraError("reading image folders needs Pillow: pip install 'modelfusion[images]'") from None
    return Image


@dataclass(frozen=True)
class ImageHeader:
    size: tuple[int, int]  # (width, height)
    colour: bool


def _open(path: Path):
    Image = _pillow()
    path = regular_file(path, "image", max_bytes=MAX_IMAGE_BYTES)
    try:
        image = Image.open(path)
        width, height = image.size
    except Exception as err:  # UnidentifiedImageError, truncated headers, and each plugin's own errors
        raise DataError(f"{path}: not an image Pillow can decode ({first_line(err)})") from None
    if width * height > MAX_PIXELS or not width or not height:
        raise DataError(f"{path}: its header declares {width}x{height} pixels (at most {MAX_PIXELS:,})")
    return image


def image_header(path: Path) -> ImageHeader:
    """Size and colour of an image from its header (the pixels are not decoded)."""
    with _open(path) as image:
        return ImageHeader(image.size, image.mode not in ("1", "L", "LA", "I", "I;16", "F", "P") or _palette(image))


def _palette(image) -> bool:
    """A palette image has colour when its palette does."""
    if image.mode != "P":
        return False
    palette = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool((palette != palette[:, :1]).any())


def decode(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """The image at `path` in `mode` ("L" or "RGB"), resized to `size` (width, height): float32 in [0, 1],
    channels first `[C, H, W]`."""
    Image = _pillow()
    with _open(path) as image:
        try:
            image = image.convert(mode)
            if image.size != tuple(size):
                image = image.resize(tuple(size), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
        except Exception as err:  # truncated or corrupt pixel data surfaces only now
            raise DataError(f"{path}: not an image Pillow can decode ({first_line(err)})") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _class_folders(root: Path) -> list[Path]:
    try:
        folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as err:
        raise DataError(f"{root}: cannot list the folder ({err.strerror})") from None
    return folders


def _images_in(folder: Path) -> list[Path]:
    try:
        return sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err.strerror})") from None


def read_image_folder(root: Path, *, labelled: bool = True) -> Source:
    """Images in `root/<class>/` (or `root/<split>/<class>/`), labelled by their class folder."""
    _pillow()
    top = _class_folders(root)
    split_folders = {f.name.lower(): f for f in top if f.name.lower() in SPLIT_VALUES}
    if split_folders and len(split_folders) == len(top):
        parts = {SPLIT_VALUES[name]: folder for name, folder in split_folders.items()}
    else:
        parts = {"train": root}
    class_sets = {split: [f.name for f in _class_folders(folder)] for split, folder in parts.items()}
    classes = sorted({name for names in class_sets.values() for name in names})
    if not classes:
        loose = _images_in(root)
        if loose and not labelled:  # new images to predict on, in one folder
            return Source(str(root), np.array(loose, dtype=object), None, "the class folders", kind="image")
        raise DataError(
            f"{root}: no class sub-folders; put each class's images in a folder named after it (root/cat/1.png)"
        )
    files, labels, assigned = [], [], []
    for split, folder in parts.items():
        for index, name in enumerate(classes):
            found = _images_in(folder / name) if (folder / name).is_dir() else []
            files += found
            labels += [index] * len(found)
            assigned += [split] * len(found)
            if len(files) > MAX_IMAGES:
                raise DataError(f"{root}: more than {MAX_IMAGES:,} images")
    empty = [name for index, name in enumerate(classes) if index not in set(labels)]
    if empty:
        raise DataError(
            f"{root}: class folder {empty[0]!r} holds no images (suffixes read: {', '.join(IMAGE_SUFFIXES)})"
        )
    paths = np.array(files, dtype=object)
    return Source(
        path=str(root),
        features=paths,
        labels=np.array(labels, dtype=np.float64),
        target="the class folders",
        assigned=np.array(assigned, dtype=object) if len(parts) > 1 else None,
        kind="image",
        class_names=tuple(classes),
        row=lambda i: f"image {paths[i]}",
    )
