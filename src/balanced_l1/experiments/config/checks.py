"""The checks of the settings that stand apart from the schema: the bounds of every size and count with the reason
for each, the checks of paths (NUL characters, the file system's name and path limits, the backbone's weights
file), the choices, the optional tensorboard package, and what TOML can hold. Each raises :class:`ConfigError`
naming the setting, its value and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from balanced_l1._files import is_within
from balanced_l1.params import check_choice


class ConfigError(ValueError):
    """A comparison setting is out of range; the message names it, its value and what is allowed."""


#: How to install the optional ``tensorboard`` extra: version 0.1.0 is installed from a clone, not a package index.
INSTALL_TENSORBOARD = (
    "install the tensorboard extra in a clone of the balanced-l1 repository with: pip install -e '.[tensorboard]' "
    "(version 0.1.0 is not on a package index)"
)


def tensorboard_problem() -> str | None:
    """Why ``--tensorboard`` cannot be used here (the optional ``tensorboard`` package is missing), or ``None``."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        return f"--tensorboard needs the tensorboard package, which is not installed ({err}); {INSTALL_TENSORBOARD}"
    return None


def check_choice_setting(name: str, value: str, choices: tuple[str, ...]) -> None:
    """:func:`~balanced_l1.params.check_choice`, raising :class:`ConfigError`."""
    try:
        check_choice(name, value, choices)
    except ValueError as err:
        raise ConfigError(str(err)) from None


MAX_IMAGE_SIDE = 4096

# Upper bounds of the settings that are sizes or counts. Each is far above any real run's value; it exists so that a
# mistyped value is refused by validate() (exit 2, nothing written) instead of exhausting the machine's memory,
# processes or threads, or failing deep inside a library with a traceback. The reason is part of the message.
MAX_SEED = 2**32 - 1
MAX_SEEDS = 1000
MAX_RUNS = 1000
RUNS_WHY = (
    "every run trains a detector from scratch and keeps its own checkpoint, record and weights; the limit is that of "
    "one grid and of the seeds, for the whole comparison"
)
MAX_ITERS = 10**8
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4096
MAX_THREADS = 1024
MAX_WORKERS = 64
MAX_JOBS = 64
MAX_LR = 1000.0
MAX_SYNTHETIC_BYTES = 4 << 30
MAX_WEIGHTS_FILE_BYTES = 2 << 30
ITERS_WHY = "the COCO 1x schedule is 90000 iterations; 10**8 is over a thousand times that"
SEED_WHY = "every run seeds numpy's generator, which takes seeds below 2**32"
# name: (smallest, largest, why the largest); every integer setting has an entry (a test checks it)
INT_BOUNDS: dict[str, tuple[int, int, str]] = {
    "iters": (1, MAX_ITERS, ITERS_WHY),
    "epochs": (1, MAX_EPOCHS, "COCO schedules train 12 to 36 epochs"),
    "batch_size": (
        1,
        MAX_BATCH_SIZE,
        "a global batch's images are listed and loaded together; detection papers use at most 256",
    ),
    "warmup_iters": (0, MAX_ITERS, ITERS_WHY),
    "checkpoint_every": (1, MAX_ITERS, ITERS_WHY),
    "balance_every": (1, MAX_ITERS, ITERS_WHY),
    "threads": (1, MAX_THREADS, "torch starts that many threads per process; far more fail to be allocated"),
    "workers": (0, MAX_WORKERS, "each DataLoader worker is a separate process; more are forked than a machine holds"),
    "jobs": (1, MAX_JOBS, "each job is a whole training process with its own model"),
    "train_images": (1, 1_000_000, "COCO's training split has 118287 images"),
    "val_images": (1, 1_000_000, "COCO's training split has 118287 images"),
    "image_size": (64, MAX_IMAGE_SIDE, "the synthetic images are held in memory"),
    "min_size": (32, MAX_IMAGE_SIDE, "torchvision resizes every image to it"),
    "max_size": (32, MAX_IMAGE_SIDE, "torchvision resizes every image to it"),
    "data_seed": (0, MAX_SEED, "numpy's seeds, as the training seeds, are below 2**32"),
    "eval_every": (0, MAX_ITERS, ITERS_WHY),
    "log_every": (1, MAX_ITERS, ITERS_WHY),
}


def check_int(name: str, value: int) -> None:
    """Raise ConfigError unless ``value`` is within :data:`INT_BOUNDS` for ``name``."""
    low, high, why = INT_BOUNDS[name]
    if name in ("image_size", "min_size", "max_size") and not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high} pixels, got {value} ({why})")
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")
    if value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value} ({why})")


def check_no_nul(name: str, path: str) -> None:
    """Raise ConfigError if the path setting ``name`` holds a NUL character."""
    if "\0" in path:
        raise ConfigError(f"{name} {path!r}: a path cannot hold a NUL character")


def _path_limit(folder: str, which: str, fallback: int) -> int:
    try:
        return int(os.pathconf(folder, which))
    except (AttributeError, OSError, ValueError):  # not POSIX, or a file system without the limit
        return fallback


def check_path_fits(name: str, path: str, *, inside: int, names_below: int) -> None:
    """Raise ConfigError unless every name in ``path`` that does not exist yet fits its file system's NAME_MAX, and the
    whole path, with room for ``inside`` bytes and ``names_below`` longest names under it, fits PATH_MAX.

    The limits are those of the nearest folder of ``path`` that exists (where the new names would be created).
    """
    shown = path if len(path) <= 80 else f"{path[:60]}...{path[-10:]}"
    absolute = os.path.abspath(path)
    existing = absolute
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    name_max = _path_limit(existing, "PC_NAME_MAX", 255)
    new_part = os.path.relpath(absolute, existing) if absolute != existing else ""
    for part in new_part.split(os.sep) if new_part not in ("", ".") else []:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(
                f"{name} {shown!r}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes, longer than this file "
                f"system allows ({name_max} bytes, PC_NAME_MAX of {existing})"
            )
    path_max = _path_limit(existing, "PC_PATH_MAX", 4096)
    room = inside + names_below * (1 + name_max)
    if len(os.fsencode(path)) + room >= path_max:
        raise ConfigError(
            f"{name} {shown!r}: the path is {len(os.fsencode(path))} bytes; with room for the files this run writes "
            f"inside it ({room} bytes: a folder and a file name of up to {name_max} bytes each) it exceeds this file "
            f"system's limit of {path_max} bytes (PC_PATH_MAX of {existing})"
        )


def check_out_folder(
    name: str, path: str, data_folders: Iterable[str | None] = (), *, inside: int = 0, names_below: int = 1
) -> None:
    """Raise ConfigError unless ``path`` can be made an output folder, checked before anything is written.

    The path holds no NUL, is not empty, fits its file system (see :func:`check_path_fits`), is not a file and does
    not lie under one, and is not inside a data folder (the data are only ever read: a run's files there would mix
    with them, and a later run would read them as data).

    Args:
        name: the setting or flag, for the messages (``"out"``, ``"--out"``).
        path: the folder.
        data_folders: the data folders the program reads (``None`` entries are skipped).
        inside: bytes of the longest relative path written inside the folder, beyond ``names_below`` names.
        names_below: how many names (folders and a file) are written below it.

    Raises:
        ConfigError: naming the setting, the path and the reason.
    """
    check_no_nul(name, path)
    if not path:
        raise ConfigError(f"{name} must name a folder, got ''")
    check_path_fits(name, path, inside=inside, names_below=names_below)
    existing = os.path.abspath(path)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if os.path.exists(existing) and not os.path.isdir(existing):
        where = "exists and is not a folder" if existing == os.path.abspath(path) else f"lies under the file {existing}"
        raise ConfigError(f"{name} {path} {where}; give a folder")
    for folder in data_folders:
        if folder is not None and is_within(path, folder):
            raise ConfigError(
                f"{name} {path} is inside the data folder {folder}; the data are only read, never written: give a "
                "folder outside it"
            )


def check_weights_file(weights: str) -> None:
    """Raise ConfigError unless ``weights`` (weights_backbone's path) is a regular file of at most
    :data:`MAX_WEIGHTS_FILE_BYTES` (stat only: it is not opened)."""
    from balanced_l1._files import file_kind, format_size

    check_no_nul("weights_backbone", weights)
    try:
        info = os.stat(weights)
    except FileNotFoundError:
        raise ConfigError(
            f"weights_backbone {weights!r}: no such file (give none, DEFAULT or the path of a local state_dict file)"
        ) from None
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"weights_backbone {weights!r}: cannot read it ({reason})") from None
    kind = file_kind(info.st_mode)
    if kind is not None:
        raise ConfigError(f"weights_backbone {weights!r} is {kind}, not a regular file (a state_dict file)")
    if info.st_size > MAX_WEIGHTS_FILE_BYTES:
        raise ConfigError(
            f"weights_backbone {weights!r} is {format_size(info.st_size)} ({info.st_size} bytes), over the limit "
            f"of {format_size(MAX_WEIGHTS_FILE_BYTES)} for a backbone's weights (ResNet-50's are about 98 MiB; "
            "the file is read into memory)"
        )


def toml_char_problem(char: str) -> str | None:
    """Why ``char`` cannot be written in a TOML string (a lone surrogate: a byte of a file name that is not UTF-8),
    or ``None``."""
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return (
            f"U+{code:04X} (a byte that is not UTF-8, in a file name) cannot be written in TOML, as --print-config "
            "and OUT/config.toml write every setting: use a UTF-8 name"
        )
    return None


def check_writable_in_toml(name: str, value: object) -> None:
    """Raise ConfigError if the setting ``name``'s string (or a string of its list) cannot be written in TOML."""
    for text in value if isinstance(value, tuple) else (value,):
        if isinstance(text, str):
            problem = next((p for p in map(toml_char_problem, text) if p is not None), None)
            if problem is not None:
                raise ConfigError(f"{name} {value!r}: {problem}")
