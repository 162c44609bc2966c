"""The lock that keeps two runs out of one output folder, and the checks of the folder before a run writes to it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from balanced_l1._files import is_within, remove_stale_temp_files
from balanced_l1.experiments.config.checks import ConfigError
from balanced_l1.experiments.output_folder.layout import EVALUATE_FOLDER, LOCK_NAME, OUTPUT_FILES, OUTPUT_FOLDERS


def check_outside_owned(out: Path, dest: Path, name: str = "--out") -> None:
    """Raise ConfigError if writing into ``dest`` could overwrite or mix with what a comparison keeps in ``out``.

    ``dest`` may not be ``out`` itself, one of its output files, nor inside ``runs/``, ``checkpoints/`` or
    ``tensorboard/`` (a ``results.json`` there would replace the comparison's, or be read as a run); ``out/evaluate``
    (``evaluate``'s default) and other new folders inside ``out`` are allowed.

    Args:
        out: the comparison's output folder.
        dest: where another command writes.
        name: the flag, for the message.

    Raises:
        ConfigError: naming both folders.
    """
    owned = [out / entry for entry in (*OUTPUT_FILES, *OUTPUT_FOLDERS) if entry != EVALUATE_FOLDER]
    if os.path.realpath(dest) == os.path.realpath(out) or any(is_within(dest, path) for path in owned):
        raise ConfigError(
            f"{name} {dest}: it would write over what the comparison keeps in {out} (its results, runs, checkpoints "
            f"or logs); give a folder outside these, such as {out / EVALUATE_FOLDER} (the default)"
        )


def _check_out(out: Path) -> None:
    """Raise ConfigError unless ``out`` is (or can be made) a folder whose output paths have the right kind."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"out {out}: cannot create the output folder ({err.strerror or err})") from None
    for name in OUTPUT_FILES:
        if (out / name).is_dir():
            raise ConfigError(f"out {out}: {out / name} is a folder, where this run writes a file; move it away")
    for name in OUTPUT_FOLDERS:
        if (out / name).exists() and not (out / name).is_dir():
            raise ConfigError(f"out {out}: {out / name} is a file, where this run keeps a folder; move it away")
    _check_no_link_out(out)
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"out {out}: the output folder is not writable")


def _check_no_link_out(out: Path) -> None:
    """Raise ConfigError if a path this run writes or reads in ``out`` is a symbolic link leading out of it.

    ``out`` itself may be a link (the user named it); inside it, nothing followed may lead elsewhere: the output
    files, ``runs/`` and ``checkpoints/`` and every entry in them (a link that stays inside ``out`` is allowed).
    """
    from balanced_l1._files import link_leaving

    entries = [out / name for name in (*OUTPUT_FILES, *OUTPUT_FOLDERS)]
    entries += [entry for name in OUTPUT_FOLDERS if (out / name).is_dir() for entry in sorted((out / name).iterdir())]
    for entry in entries:
        target = link_leaving(out, entry)
        if target is not None:
            raise ConfigError(
                f"out {out}: {entry} is a symbolic link that leads out of the output folder (to {target}); "
                "this run follows no link out of --out: remove it or choose another --out"
            )


def _open_lock(out: Path) -> Any:
    """Open (create) ``out``'s lock file for appending: never through a symbolic link, never a FIFO or device."""
    from balanced_l1._files import file_kind

    lock = out / LOCK_NAME
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        kind = file_kind(os.lstat(lock).st_mode)
    except FileNotFoundError:
        kind = None
    except OSError as err:
        raise ConfigError(f"out {out}: cannot write to the output folder ({err.strerror or err})") from None
    try:
        if kind is not None:
            raise ConfigError(
                f"out {out}: {lock} is {kind}, not a regular file; this run opens no link, FIFO or device there: "
                "remove it"
            )
        fd = os.open(lock, flags, 0o666)
    except OSError as err:  # a link or FIFO put there after the check: O_NOFOLLOW and O_NONBLOCK refuse it
        raise ConfigError(f"out {out}: cannot open the lock file {lock} ({err.strerror or err})") from None
    kind = file_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise ConfigError(f"out {out}: {lock} is {kind}, not a regular file; remove it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a")


def _remove_stale_temporaries(out: Path) -> None:
    """Remove temporary files that a killed run left behind (called while holding the lock on ``out``)."""
    for folder in (out, *(out / name for name in OUTPUT_FOLDERS)):
        remove_stale_temp_files(folder)


@contextlib.contextmanager
def exclusive_out(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run, so that two runs never write into one folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        yield
        return
    _check_out(out)
    handle = _open_lock(out)  # held open for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"out {out} is in use by another balanced-l1 compare run (it holds {out / LOCK_NAME}); "
                "wait for it to finish or choose another --out"
            ) from None
        _remove_stale_temporaries(out)
        yield
    finally:
        handle.close()
