"""Atomic file writes: a reader, a crash or a power loss leaves the old file or the new one, never half of one.

Each write goes to a temporary file ``.NAME.XXXXXXXX.tmp`` beside the target, is flushed to disk, renamed over
the target and the folder's entry is flushed too. A process killed mid-write leaves its temporary file behind;
:func:`remove_stale_temp_files` removes such leftovers.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_NAME_MAX = 255  # longest file name on common file systems (ext4, xfs, btrfs, apfs, ntfs)
_TEMP_EXTRA = len("..") + 8 + len(".tmp")  # the dots around the name, mkstemp's 8 random characters, the suffix


def _temp_prefix(name: str) -> str:
    # A long but valid name must not become an invalid temporary name: keep the prefix within the limit.
    return f".{name[: _NAME_MAX - _TEMP_EXTRA]}."


def _current_umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, briefly, for every thread)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): the rename is all we can do
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename has happened
        pass
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike[str], write: Callable[[str], None], *, owner_only: bool = False) -> Path:
    """Write ``path`` through a temporary file in the same folder, ``fsync`` and an atomic rename.

    Args:
        path: the file to write; missing parent folders are created.
        write: writes the whole content to the temporary path it is given.
        owner_only: give the file mode ``0600`` (only the owner reads it, as for checkpoints) instead of
            ``0666``; either is reduced by the process's umask, as ``open`` does.

    Returns:
        The file's path.

    Raises:
        OSError: if the folder cannot be created or written, or the target is a folder.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, (0o600 if owner_only else 0o666) & ~_current_umask())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_folder(target.parent)
    return target


def remove_stale_temp_files(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove temporary files that :func:`write_atomically` left behind when its process was killed.

    Call it only while no other process writes into ``folder`` (for example while holding a lock on it):
    a temporary file of a write in progress would be removed too.

    Args:
        folder: the folder to clean; a missing folder has nothing to clean.
        name: only leftovers of writes to this file name (``".NAME.XXXXXXXX.tmp"``); ``None`` for any name.

    Returns:
        The removed files, sorted.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    middle = re.escape(_temp_prefix(name)[1:-1]) if name is not None else r".+"
    pattern = re.compile(rf"\.{middle}\.[A-Za-z0-9_]{{8}}\.tmp")
    removed = []
    for entry in sorted(root.iterdir()):
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def write_json_atomically(doc: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``doc`` as indented JSON (UTF-8, trailing newline) with :func:`write_atomically`.

    Args:
        doc: a JSON-serialisable object.
        path: the file to write.

    Returns:
        The file's path.
    """

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2)
            handle.write("\n")

    return write_atomically(path, dump)


def save_figure_atomically(fig: Any, out: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure as a PNG (120 dpi, tight bounding box) with :func:`write_atomically`.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        out: the PNG file to write.

    Returns:
        The file's path.
    """
    return write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
