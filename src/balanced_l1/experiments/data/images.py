"""Reading one image safely: only regular files inside the image root, decoded by Pillow into RGB ``uint8``.

An image path is ``root / file_name``. It is refused (:class:`ImageReadError` naming the entry) when
``file_name`` is absolute, has ``..`` components or a character no file name can hold (a lone surrogate such as
``"\ud800"``, which JSON allows), when an entry on the way is a symbolic link (unless
``follow_symlinks``), and when the file is not a regular file: the file is opened non-blocking and checked with
``fstat`` before a byte is read, so a FIFO can never hang a run, and when the file is larger than an image of its
declared size can be (:func:`max_image_bytes`), refused by size before it is read. Decoding follows Pillow, with
these rules:

* grayscale, palette, RGBA, LA/PA, CMYK and YCbCr images become RGB through ``Image.convert`` (alpha dropped);
* 16-bit grayscale (``I;16`` and friends, or ``I`` with values in ``[0, 65535]``) is scaled to 8 bits,
  ``round(v / 257)``, so 65535 stays white and nothing is clipped; other ``I`` or ``F`` images are refused;
* an image of more than :data:`MAX_IMAGE_PIXELS` pixels is refused from its header, before it is decoded, and so
  is one over Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) if it was set lower;
* the decoded size must equal the size the annotation file declares; EXIF orientation is not applied (COCO's
  boxes refer to the stored pixels).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image

from balanced_l1._files import file_kind, format_size
from balanced_l1.experiments.data.data_errors import ImageReadError

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
"""The most pixels an image may have: 89478485, Pillow's default decompression-bomb limit (an RGB image of 256 MiB).
Checked by this package whatever ``PIL.Image.MAX_IMAGE_PIXELS`` is set to, so turning Pillow's check off does not
turn this one off."""

_BYTES_PER_PIXEL = 8  # the largest uncompressed pixel read: 16-bit RGBA
_METADATA_BYTES = 16 << 20  # room for headers, colour profiles, EXIF and thumbnails


def max_image_bytes(size: tuple[int, int]) -> int:
    """The largest image file accepted for an image of ``size`` pixels: its pixels uncompressed, plus metadata.

    An uncompressed 16-bit RGBA image takes 8 bytes a pixel, the most any format Pillow reads stores; a file larger
    than that plus 16 MiB of headers, colour profiles and thumbnails is not an image of that size, so it is refused
    before it is read (a 1 GiB file declared as 640x480 is never loaded into memory).

    Args:
        size: the declared ``(width, height)``.

    Returns:
        The bound in bytes.
    """
    return size[0] * size[1] * _BYTES_PER_PIXEL + _METADATA_BYTES


def file_name_problem(file_name: str) -> str | None:
    """Why ``file_name`` may not name an image inside its root, or ``None`` if it may.

    Args:
        file_name: the image's ``file_name`` from the annotation file.

    Returns:
        ``None`` for a relative path without ``..`` components; otherwise the reason, as a phrase.
    """
    if not file_name:
        return "is empty"
    if "\x00" in file_name:
        return "contains a NUL character"
    try:
        os.fsencode(file_name)
    except UnicodeError:  # a lone surrogate such as "\ud800", which JSON allows and no file system can name
        return "cannot be encoded as a file name on this system (a lone surrogate or another unencodable character)"
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).anchor:
        return "is an absolute path; file names must be relative to the image folder"
    if ".." in PurePosixPath(file_name.replace("\\", "/")).parts:
        return "has a '..' component that escapes the image folder"
    return None


def _check_no_symlinks(root: Path, file_name: str) -> None:
    entry = root
    for part in PurePosixPath(file_name).parts[:-1]:
        entry = entry / part
        try:
            if stat.S_ISLNK(os.lstat(entry).st_mode):
                raise ImageReadError(
                    f"{root / file_name}: folder {entry} is a symbolic link; links are refused "
                    "unless you allow them (follow_symlinks=True, --follow-symlinks)"
                )
        except FileNotFoundError:
            raise ImageReadError(f"{root / file_name}: image file not found (no folder {entry})") from None


def _read_bytes(root: Path, file_name: str, follow_symlinks: bool, max_bytes: int) -> bytes:
    problem = file_name_problem(file_name)
    if problem is not None:
        raise ImageReadError(f"{root}: image file_name {file_name!r} {problem}")
    path = root / file_name
    if not follow_symlinks:
        _check_no_symlinks(root, file_name)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        if not follow_symlinks and stat.S_ISLNK(os.lstat(path).st_mode):
            raise ImageReadError(
                f"{path}: the image is a symbolic link; links are refused unless you allow them "
                "(follow_symlinks=True, --follow-symlinks)"
            )
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot open the image ({err.strerror or err})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageReadError(f"{path}: the image is {file_kind(info.st_mode)}, not a regular file")
    if info.st_size > max_bytes:
        os.close(fd)
        raise ImageReadError(
            f"{path}: the image file is {format_size(info.st_size)} ({info.st_size} bytes), over the limit of "
            f"{format_size(max_bytes)} for an image of its declared size (its pixels uncompressed at 8 bytes each, "
            "plus 16 MiB of metadata); refused without reading it"
        )
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as err:
            raise ImageReadError(f"{path}: cannot read the image ({err.strerror or err})") from None
    if len(data) > max_bytes:
        raise ImageReadError(
            f"{path}: the image file grew past the limit of {format_size(max_bytes)} while it was read"
        )
    return data


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(
                f"{path}: 32-bit integer image with values in [{values.min()}, {values.max()}] cannot be mapped "
                "to 8 bits; convert it to 8- or 16-bit"
            )
        gray = np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise ImageReadError(f"{path}: floating-point image (mode 'F') is not supported; convert it to 8 bits")
    return np.array(image.convert("RGB"), dtype=np.uint8)


def read_image(root: Path, file_name: str, size: tuple[int, int], *, follow_symlinks: bool = False) -> np.ndarray:
    """Read ``root / file_name`` as RGB ``uint8`` of shape ``(height, width, 3)`` (rules in the module docstring).

    Args:
        root: the image folder.
        file_name: the path relative to ``root`` given by the annotation file.
        size: the declared ``(width, height)``.
        follow_symlinks: allow symbolic links (also ones leading outside ``root``).

    Returns:
        The pixels.

    Raises:
        ImageReadError: naming the file, for every refusal listed in the module docstring.
    """
    data = _read_bytes(root, file_name, follow_symlinks, max_image_bytes(size))
    path = root / file_name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
                    raise ImageReadError(
                        f"{path}: image is {image.size[0]}x{image.size[1]}, over the limit of {MAX_IMAGE_PIXELS} "
                        "pixels (Pillow's default decompression-bomb limit); refused before it is decoded"
                    )
                if image.size != tuple(size):
                    raise ImageReadError(
                        f"{path}: image is {image.size[0]}x{image.size[1]} but its annotation file declares "
                        f"{size[0]}x{size[1]}"
                    )
                return _to_rgb(image, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(
            f"{path}: refused as a possible decompression bomb, over Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS) ({err})"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(f"{path}: cannot decode the image ({err})") from None


@dataclass(frozen=True)
class FileImages:
    """Images read from files on each call: a root, one file name and declared ``(width, height)`` per image."""

    root: str
    file_names: tuple[str, ...]
    sizes: np.ndarray
    follow_symlinks: bool = False

    def __len__(self) -> int:
        return len(self.file_names)

    def load(self, index: int) -> np.ndarray:
        """Read image ``index`` (see :func:`read_image`)."""
        width, height = (int(v) for v in self.sizes[index])
        return read_image(
            Path(self.root), self.file_names[index], (width, height), follow_symlinks=self.follow_symlinks
        )


@dataclass(frozen=True)
class MemoryImages:
    """Images held in memory (the embedded synthetic set): each call returns a copy, safe to modify."""

    arrays: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.arrays)

    def load(self, index: int) -> np.ndarray:
        """A copy of image ``index``."""
        return self.arrays[index].copy()
