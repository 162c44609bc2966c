"""The readers and writers of the output folder's files: run records, RoI samples, weights, checkpoints, the saved
settings and ``results.json``.

Nothing read here can run code: records and settings are JSON and TOML, samples are read with
``allow_pickle=False`` and weights and checkpoints with ``torch.load(weights_only=True)``. Every file is a regular
file of bounded size, checked before it is opened; a file that cannot be used raises an
:class:`~balanced_l1.experiments.output_folder.errors.OutputFolderError` naming it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from balanced_l1._files import (
    UnreadableFileError,
    load_error_reason,
    loads_strict_json,
    open_regular_file,
    read_regular_file,
    write_atomically,
    write_json_atomically,
)
from balanced_l1.experiments.config import CompareConfig, import_arm_modules, resolve
from balanced_l1.experiments.config.checks import ConfigError
from balanced_l1.experiments.config.toml_files import load_config_file
from balanced_l1.experiments.output_folder.errors import (
    ArmModulesNotGivenError,
    CheckpointMismatchError,
    UnreadableRunFileError,
)
from balanced_l1.experiments.output_folder.layout import CONFIG_NAME, RESULTS_NAME, RUNS_FOLDER
from balanced_l1.experiments.output_folder.schema import run_record_problem

MAX_CHECKPOINT_BYTES = 8 << 30
"""The largest checkpoint or model file read: 8 GiB. The largest detector here (``fasterrcnn_resnet50_fpn_v2``,
43 M parameters) writes about 0.35 GB with its SGD momentum; ``torch.load`` holds every tensor in memory."""

MAX_RECORD_BYTES = 1 << 30
"""The largest run record read: 1 GiB. A record holds one loss row and one gradient-balance row per iteration,
under 1 KB each, so COCO's 1x schedule (90k iterations) writes well under 100 MB."""

MAX_SAMPLE_BYTES = 64 << 20
"""The largest RoI sample read: 64 MiB (a run keeps at most 4096 rows of 12 float64)."""

ROI_SAMPLE_ROWS = 4096
"""The most RoI-head positives a run keeps from the second half of its training (predicted deltas, target deltas,
proposals), for :func:`balanced_l1.detection.predict_box_gradient_balance`; a sample's ``.npy`` header declaring more
rows is refused before the data are read."""

#: What to do with a checkpoint that cannot be used.
CHECKPOINT_ADVICE = "Delete it (or use another --out) to start this run over."

_WHY = "see balanced_l1.experiments.output_folder.files."


# --- run records ---------------------------------------------------------------------------------------------------


def read_record(path: Path) -> dict[str, Any]:
    """A finished run's record, checked (a regular file of bounded size, standard JSON with finite numbers and 64-bit
    integers, every field of its type).

    Raises:
        UnreadableRunFileError: naming the file, if it cannot be read or is not a run record.
    """
    try:
        text = read_regular_file(path, MAX_RECORD_BYTES, "finished-run record", why=_WHY + "MAX_RECORD_BYTES")
        record = loads_strict_json(text)
    except UnreadableFileError as err:
        raise UnreadableRunFileError(f"{err}; delete it to train the run again") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UnreadableRunFileError(
            f"{path}: cannot read this finished-run record ({type(err).__name__}: {err}); "
            "delete it to train the run again"
        ) from None
    problem = run_record_problem(record)
    if problem is not None:
        raise UnreadableRunFileError(
            f"{path}: not a run record of balanced-l1 compare ({problem}); delete it to train the run again"
        )
    return record


def write_record(record: dict[str, Any], path: Path) -> Path:
    """Write a finished run's record atomically; its presence marks the run finished."""
    return write_json_atomically(record, path)


def finished_runs(out: str | os.PathLike[str], *, skip_unreadable: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """Every finished run's record in ``OUT/runs`` (``*.json``), read and checked, in name order.

    Args:
        out: the output folder.
        skip_unreadable: leave out what is no run record of ``balanced-l1 compare`` (a link, a folder, a file
            that cannot be read or is ill-formed) instead of raising.

    Raises:
        UnreadableRunFileError: unless ``skip_unreadable``, for a record that cannot be read or is ill-formed.
    """
    folder = Path(out) / RUNS_FOLDER
    if not folder.is_dir() or (skip_unreadable and folder.is_symlink()):
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        if skip_unreadable and (path.is_symlink() or not path.is_file()):
            continue
        try:
            found.append((path, read_record(path)))
        except UnreadableRunFileError:
            if not skip_unreadable:
                raise
    return found


# --- RoI samples ---------------------------------------------------------------------------------------------------


def _check_sample_header(handle: Any) -> None:
    """Raise ValueError unless the ``.npy`` header declares what a run writes: float64, C order, ``(K, 12)`` with
    ``K`` <= :data:`ROI_SAMPLE_ROWS`; read before the data, so a header declaring 10**9 rows allocates nothing.
    Leaves ``handle`` at its start."""
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version}; a run writes 1.0")
    shape, fortran_order, dtype = readers[version](handle)
    if len(shape) != 2 or shape[1] != 12 or shape[0] > ROI_SAMPLE_ROWS or dtype != np.float64 or fortran_order:
        raise ValueError(
            f"its header declares a {dtype} array of shape {shape}; a run writes float64 (K, 12) with K <= "
            f"{ROI_SAMPLE_ROWS}"
        )
    handle.seek(0)


def read_sample(path: Path) -> np.ndarray:
    """A finished run's RoI sample, checked: a regular file (not a link) holding a finite ``(K, 12)`` float64 array.

    Raises:
        UnreadableRunFileError: naming the file, if it cannot be read or is not such an array.
    """
    try:
        with open_regular_file(
            path, MAX_SAMPLE_BYTES, "RoI sample", why="a run keeps at most 4096 rows", follow_symlinks=False
        ) as handle:
            _check_sample_header(handle)
            array = np.load(handle, allow_pickle=False)
    except (UnreadableFileError, OSError, ValueError) as err:
        raise UnreadableRunFileError(
            f"{path}: cannot read this run's RoI sample ({err}); delete the run's record to train it again"
        ) from None
    if array.ndim != 2 or array.shape[1] != 12 or array.dtype != np.float64 or not np.isfinite(array).all():
        raise UnreadableRunFileError(
            f"{path}: not a RoI sample of balanced-l1 compare (a finite (K, 12) float64 array)"
        )
    return array


def _save_array(array: np.ndarray, path: str) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def write_sample(array: np.ndarray, path: Path) -> Path:
    """Write a run's RoI sample (``.npy``, no pickle) atomically."""
    return write_atomically(path, partial(_save_array, array))


# --- weights and checkpoints ---------------------------------------------------------------------------------------


def read_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A run's saved ``state_dict``, read with ``torch.load(weights_only=True)`` (a regular file of bounded size).

    Raises:
        UnreadableRunFileError: if it is missing, unreadable or not a mapping of names to tensors.
    """
    if not path.exists():
        raise UnreadableRunFileError(
            f"{path}: no such file; the run's weights are written when it finishes, before its record: delete the "
            "record to train the run again"
        )
    try:
        with open_regular_file(path, MAX_CHECKPOINT_BYTES, "model file", why="see MAX_CHECKPOINT_BYTES") as handle:
            state = torch.load(handle, map_location=device, weights_only=True)
    except UnreadableFileError as err:
        raise UnreadableRunFileError(str(err)) from None
    except Exception as err:  # torch raises many types for a damaged or crafted file; each becomes one error
        raise UnreadableRunFileError(f"{path}: not a readable state_dict ({load_error_reason(err)})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UnreadableRunFileError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return state


def write_weights(model: nn.Module, path: Path) -> Path:
    """Write ``model``'s ``state_dict`` (tensors moved to the CPU) atomically, owner-only as checkpoints are."""
    state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    return write_atomically(path, partial(torch.save, state), owner_only=True)


def read_checkpoint_file(path: Path) -> Any:
    """What a checkpoint file holds, read with ``torch.load(weights_only=True)``: plain data, not yet checked.

    Raises:
        CheckpointMismatchError: if the file is not a regular file or over :data:`MAX_CHECKPOINT_BYTES` (refused
            before it is opened), truncated, empty, not a checkpoint, or holds anything but plain data (a pickle
            that would run code).
    """
    try:
        handle = open_regular_file(path, MAX_CHECKPOINT_BYTES, "checkpoint", why=_WHY + "MAX_CHECKPOINT_BYTES")
    except UnreadableFileError as err:
        raise CheckpointMismatchError(f"{err}. {CHECKPOINT_ADVICE}") from None
    try:
        with handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = load_error_reason(err)
        if "GLOBAL" in reason or "global" in reason:
            raise CheckpointMismatchError(
                f"{path}: refused: it is not a plain-data checkpoint ({reason}); nothing in it was run. "
                f"{CHECKPOINT_ADVICE}"
            ) from None
        raise CheckpointMismatchError(
            f"{path}: cannot read the checkpoint ({reason}); it is truncated or not a checkpoint. {CHECKPOINT_ADVICE}"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointMismatchError(
            f"{path}: cannot read the checkpoint ({load_error_reason(err)}); it is truncated or not a checkpoint. "
            f"{CHECKPOINT_ADVICE}"
        ) from None


def write_checkpoint_file(content: dict[str, Any], path: Path) -> Path:
    """Write a checkpoint atomically (owner-only permissions: checkpoints may hold private weights)."""
    return write_atomically(path, partial(torch.save, content), owner_only=True)


# --- the settings and the results ----------------------------------------------------------------------------------


def saved_config(out: str | os.PathLike[str], arm_modules: tuple[str, ...] = ()) -> CompareConfig:
    """The settings ``balanced-l1 compare`` wrote to ``OUT/config.toml`` (read as TOML, never executed).

    Nothing that the file names is imported: the modules that register the runs' own arms are the caller's
    ``arm_modules``, which must include every module the file names; they are imported here.

    Args:
        out: the output folder.
        arm_modules: the modules the caller trusts to register arms (``--arm-modules``).

    Returns:
        The settings, with ``arm_modules`` set to the caller's.

    Raises:
        ConfigError: if the file is missing or is not a settings file, a setting is out of its bounds (the checks of
            :meth:`~balanced_l1.experiments.config.CompareConfig.validate_settings`), or a given module fails to
            import.
        ArmModulesNotGivenError: if the file names arm modules that ``arm_modules`` does not include.
    """
    path = Path(out) / CONFIG_NAME
    if not path.exists():
        raise ConfigError(
            f"{path}: no such file; balanced-l1 compare writes it before training: name the output folder of a "
            "compare run"
        )
    config = resolve([load_config_file(path)])
    missing = [name for name in config.arm_modules if name not in arm_modules]
    if missing:
        names = ",".join(missing)
        raise ArmModulesNotGivenError(
            f"{path} names arm modules that were not given: {', '.join(map(repr, missing))}; nothing an output "
            f"folder names is imported. If you trust them, give them: --arm-modules {names}"
        )
    import_arm_modules(arm_modules)
    config = replace(config, arm_modules=tuple(arm_modules))
    try:
        config.validate_settings()  # the checks a --config file's settings get, before any is used
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def _write_text(text: str, path: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def write_config(toml: str, out: str | os.PathLike[str]) -> Path:
    """Write the resolved settings, ``toml`` (the text of
    :func:`~balanced_l1.experiments.config.toml_files.to_toml`, ``--print-config``'s format), to ``OUT/config.toml``
    atomically."""
    return write_atomically(Path(out) / CONFIG_NAME, partial(_write_text, toml))


def write_results(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write ``results.json`` into ``out`` atomically.

    Returns:
        The path written.
    """
    return write_json_atomically(results, Path(out) / RESULTS_NAME)


def remove_results(out: str | os.PathLike[str]) -> None:
    """Remove the ``results.json`` an earlier run left, so that it cannot pass for this run's before it ends."""
    (Path(out) / RESULTS_NAME).unlink(missing_ok=True)
