"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], write: Callable[[str], None], *, mode: int | None = 0o644) -> Path:
    """Write ``path`` through a temporary file in the same folder and an atomic rename.

    Args:
        path: the file to write; missing parent folders are created.
        write: writes the whole content to the temporary path it is given.
        mode: permissions of the result; ``None`` keeps ``mkstemp``'s owner-only 0600.

    Returns:
        The file's path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".tmp", dir=target.parent)  # fits NAME_MAX
    os.close(fd)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_json_atomically(doc: object, path: str | os.PathLike[str]) -> Path:
    import json

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2)
            handle.write("\n")

    return write_atomically(path, dump)
