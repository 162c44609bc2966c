"""Atomic file writes, and reading files that must be regular files of a bounded size.

Writes: a reader, a crash or a power loss leaves the old file or the new one, never half of one.

Each write goes to a temporary file ``.NAME.XXXXXXXX.tmp`` beside the target, is flushed to disk, renamed over
the target and the folder's entry is flushed too. A process killed mid-write leaves its temporary file behind;
:func:`remove_stale_temp_files` removes such leftovers.

Reads: :func:`read_regular_file` and :func:`open_regular_file` refuse a FIFO, a device, a socket or a folder by
kind, and a file over a bound by size, from ``os.stat`` before the file is opened (so ``/dev/zero`` is not read
until memory runs out and a FIFO does not hang the process), then open it with ``O_NONBLOCK`` and check again.
:func:`link_leaving` tells whether a symbolic link leads out of a folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_NAME_MAX = 255  # longest file name on common file systems (ext4, xfs, btrfs, apfs, ntfs)
READ_CHUNK_BYTES = 1 << 20
"""The most :func:`read_regular_file` asks for in one read: memory follows the file's size, not its bound."""
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


class WriteError(OSError):
    """A file could not be written (a read-only folder, a full disk, a file system refusing the name); the message
    names the file, the reason and the space left there. The file that was there before, if any, is left as it was.
    """


def _write_failure(target: Path, err: BaseException) -> WriteError:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())[:300]
    try:
        free = f"; {format_size(shutil.disk_usage(target.parent if target.parent.exists() else '.').free)} free there"
    except OSError:
        free = ""
    return WriteError(f"{target}: cannot write it ({reason}{free}); the file that was there, if any, is left as it was")


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
        WriteError: (an ``OSError``) naming the file and the reason, if the folder cannot be created or written,
            the target is a folder, or the write fails (``OSError``, or the ``RuntimeError`` that ``torch.save``
            raises on a full disk); the old file is left as it was and no temporary file stays.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise _write_failure(target, err) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, (0o600 if owner_only else 0o666) & ~_current_umask())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as err:
        raise _write_failure(target, err) from None
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
    """Write ``doc`` as indented standard JSON (UTF-8, trailing newline) with :func:`write_atomically`.

    Only standard JSON is written: a NaN or an infinity, which Python's ``json`` would write as the non-standard
    ``NaN`` or ``Infinity`` that other readers refuse, is refused before anything is written (every number this
    program records is finite, or ``null`` where it is undefined).

    Args:
        doc: a JSON-serialisable object.
        path: the file to write.

    Returns:
        The file's path.

    Raises:
        ValueError: naming the file, for a NaN or an infinity in ``doc``; the old file is left as it was.
        WriteError: naming the file, if it cannot be written.
    """
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except ValueError as err:
        raise ValueError(f"{path}: refused to write {err} (NaN or infinity); the old file is left as it was") from None

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write_atomically(path, dump)


_INT64 = (-(1 << 63), (1 << 63) - 1)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is beyond a float's range (at most about 1.8e308)")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if not _INT64[0] <= value <= _INT64[1]:
        shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} digits)"
        raise ValueError(f"the integer {shown} is beyond 64 bits")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number (NaN and Infinity are not standard JSON)")


def loads_strict_json(text: str | bytes) -> Any:
    """Parse standard JSON whose every number is finite and every integer fits in 64 bits.

    What this program writes with :func:`write_json_atomically` always reads back; a file edited by hand or made
    elsewhere with ``NaN``, ``Infinity``, ``1e400`` or ``10**4000`` is refused, so that no such number reaches the
    arithmetic of a report (an ``OverflowError``, a NaN in a table).

    Args:
        text: the JSON text.

    Returns:
        The parsed document.

    Raises:
        ValueError: the reason (also for text that is not JSON, or not UTF-8); RecursionError for nesting too deep.
    """
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_int64)


def save_figure_atomically(fig: Any, out: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure as a PNG (120 dpi, tight bounding box) with :func:`write_atomically`.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        out: the PNG file to write.

    Returns:
        The file's path.
    """
    return write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


# --- reading ----------------------------------------------------------------------------------------------------

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


class UnreadableFileError(ValueError):
    """A file was refused by kind or size, or could not be opened or read; the message names it and the reason.

    Callers turn it into their own error (a bad setting, bad data, a damaged checkpoint) with the same message.
    """


def file_kind(mode: int) -> str | None:
    """``None`` for a regular file, else what ``mode`` (an ``st_mode``) is, as a phrase: ``"a FIFO"``, ..."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def format_size(size: int) -> str:
    """A byte count for people: ``"1 MiB"``, ``"4 GiB"``, ``"1.5 KiB"``, ``"12 bytes"``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def _check_kind_and_size(where: Path, info: os.stat_result, max_bytes: int, what: str, why: str) -> None:
    kind = file_kind(info.st_mode)
    if kind is not None:
        raise UnreadableFileError(f"{where}: the {what} is {kind}, not a regular file; refused without reading it")
    if info.st_size > max_bytes:
        raise UnreadableFileError(
            f"{where}: the {what} is {format_size(info.st_size)} ({info.st_size} bytes), over the limit of "
            f"{format_size(max_bytes)} for a {what} ({why}); refused without reading it"
        )


def open_regular_file(
    path: str | os.PathLike[str], max_bytes: int, what: str, *, why: str, follow_symlinks: bool = True
) -> BinaryIO:
    """Open a regular file of at most ``max_bytes`` for reading, refusing anything else before it is opened.

    The path is checked with ``os.stat`` (``os.lstat`` without ``follow_symlinks``) before it is opened, so a
    FIFO, a device, a socket or a folder is never opened and a file over the limit is never read. It is then
    opened with ``O_NONBLOCK`` (and ``O_NOFOLLOW`` without ``follow_symlinks``) and checked again with
    ``fstat``: a FIFO swapped in between the two cannot hang the process, as opening a FIFO without
    ``O_NONBLOCK`` waits for a writer.

    Args:
        path: the file.
        max_bytes: the largest size accepted.
        what: what the file is, for the messages: ``"config file"``, ``"annotation file"``, ...
        why: why the limit is what it is, for the message that refuses a larger file.
        follow_symlinks: when false, a symbolic link (the last component) is refused by kind.

    Returns:
        The open file, in binary mode; the caller closes it.

    Raises:
        UnreadableFileError: naming the file and the reason: missing (``"<path>: <what> not found"``), not a
            regular file (its kind named), larger than ``max_bytes``, or not openable.
    """
    where = Path(path)
    try:
        info = os.stat(where) if follow_symlinks else os.lstat(where)
    except FileNotFoundError:
        raise UnreadableFileError(f"{where}: {what} not found") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL or an unencodable character in the path
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UnreadableFileError(f"{where}: cannot read the {what} ({reason})") from None
    _check_kind_and_size(where, info, max_bytes, what, why)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(where, flags)
    except FileNotFoundError:
        raise UnreadableFileError(f"{where}: {what} not found") from None
    except OSError as err:
        raise UnreadableFileError(f"{where}: cannot open the {what} ({err.strerror or err})") from None
    try:
        _check_kind_and_size(where, os.fstat(fd), max_bytes, what, why)  # the file opened is the file checked
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)  # no effect on a regular file's reads; set back all the same
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(
    path: str | os.PathLike[str], max_bytes: int, what: str, *, why: str, follow_symlinks: bool = True
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, refused by kind or size before it is opened.

    See :func:`open_regular_file` for the checks and the arguments. The file is read in chunks of at most
    :data:`READ_CHUNK_BYTES`, so memory grows with what the file holds, never with ``max_bytes`` (a 1 KiB file read
    under a 4 GiB bound asks for 1 KiB, not 4 GiB). A file that grows past ``max_bytes`` while it is read is
    refused too (at most ``max_bytes + 1`` bytes are read).

    Raises:
        UnreadableFileError: naming the file and the reason.
    """
    chunks: list[bytes] = []
    size = 0
    with open_regular_file(path, max_bytes, what, why=why, follow_symlinks=follow_symlinks) as handle:
        try:
            while size <= max_bytes:
                chunk = handle.read(min(READ_CHUNK_BYTES, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as err:
            raise UnreadableFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if size > max_bytes:
        raise UnreadableFileError(
            f"{path}: the {what} grew past the limit of {format_size(max_bytes)} for a {what} while it was read ({why})"
        )
    return b"".join(chunks)


def load_error_reason(err: BaseException) -> str:
    """``torch.load``'s error as one informative line, without torch's advice to load with ``weights_only=False``.

    Torch wraps a refusal of ``weights_only=True`` in lines that suggest loading the file with ``weights_only=False``
    ("will likely succeed"), which would run whatever code the file holds. For a file that was not made by this
    program that advice must never be repeated, so every line that names ``weights_only`` or points to torch's
    documentation is dropped; the line naming what was refused (``GLOBAL posix.system``) is kept.

    Args:
        err: what ``torch.load`` raised.

    Returns:
        ``"<type>: <reason>"``, e.g. ``"UnpicklingError: Trying to load unsupported GLOBAL posix.system ..."``.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    refused = [line for line in kept if "GLOBAL" in line or line.startswith("Unsupported")]
    return f"{type(err).__name__}: {(refused or kept or ['not plain data'])[0]}"


def is_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, symbolic links resolved; neither need exist yet.

    Args:
        path: the path to place.
        folder: the folder.

    Returns:
        ``True`` for ``folder`` itself and every path below it; ``False`` when either cannot name a file (a NUL).
    """
    try:
        target, base = os.path.realpath(path), os.path.realpath(folder)
    except ValueError:  # a NUL: no file has that path, and the caller refuses it where it opens it
        return False
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def link_leaving(folder: str | os.PathLike[str], entry: str | os.PathLike[str]) -> Path | None:
    """Where ``entry`` leads if a symbolic link on its way from ``folder`` leads out of ``folder``, else ``None``.

    ``entry`` is a path inside ``folder`` (``folder / "images"``, ``folder / "annotations" / "train.json"``).
    The links on the way (``entry`` itself, or a folder between) are resolved; a link that leads elsewhere inside
    ``folder``, a missing entry and a plain entry give ``None``.

    Args:
        folder: the folder that the entry must stay in; itself resolved first (it may be a link).
        entry: a path under ``folder``.

    Returns:
        The resolved target outside ``folder``, or ``None``.
    """
    try:
        base = Path(folder).resolve()
        target = Path(entry).resolve()
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13): opening it fails by itself
        return None
    if target == base or base in target.parents:
        return None
    return target
