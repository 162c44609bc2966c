"""The errors of the data layer: both are ``ValueError`` s whose message names the file and the reason."""

from __future__ import annotations


class DataError(ValueError):
    """A data set file is missing, malformed or inconsistent; the message names the file and the reason."""


class ImageReadError(DataError):
    """An image cannot be used: missing, not a regular file, outside its root, undecodable, of another size than
    declared, or over Pillow's decompression-bomb limit. Raised when the image is read (during training)."""
