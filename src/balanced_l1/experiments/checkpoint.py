"""Checkpoints that load without running code: tensors, numbers, strings, lists and dicts only.

A checkpoint holds the model, the optimizer, the AMP grad scaler, every rank's random states (torch's CPU
generator, CUDA's generators, NumPy's and Python's, each turned into tensors and lists), the iteration,
the loss history and the run's fingerprint. :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``, so a crafted file in the output folder cannot run code on
``--resume``: anything but plain data is refused before it is used.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from balanced_l1._files import write_atomically

CHECKPOINT_VERSION = 3


class CheckpointMismatchError(ValueError):
    """A checkpoint or run record was written by a run with other settings, or cannot be read."""


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random states as plain data (tensors, lists and numbers)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos)},
        "numpy_gauss": [int(has_gauss), float(gauss)],
        "python": [int(version), list(internal), python_gauss],
        "cuda": [],
    }
    if device.type == "cuda":
        state["cuda"] = [torch.cuda.get_rng_state(device)]
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    has_gauss, gauss = state["numpy_gauss"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], has_gauss, gauss))
    version, internal, python_gauss = state["python"]
    random.setstate((version, tuple(internal), python_gauss))
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], device)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (owner-only permissions: checkpoints may hold private weights)."""
    write_atomically(path, partial(torch.save, {"version": CHECKPOINT_VERSION, **state}), owner_only=True)


def _unpickling_reason(message: str) -> str:
    """The one informative line of torch's weights-only refusal (it wraps it in several lines of advice)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line
    return lines[-1] if lines else "unreadable pickle"


def load_checkpoint(path: Path, fingerprint: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Read a checkpoint without running code and check it belongs to this run.

    Args:
        path: the checkpoint file.
        fingerprint: the settings of the run that wants to resume.
        world_size: the number of processes of the run that wants to resume.

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointMismatchError: if the file is truncated, empty, not a checkpoint, holds anything but plain
            data (a pickle that would run code), or was written with other settings or another number of processes.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickling_reason(str(err))
        if "GLOBAL" in reason or "global" in reason:
            raise CheckpointMismatchError(
                f"{path}: refused: it is not a plain-data checkpoint ({reason}); nothing in it was run. "
                "Delete it (or use another --out) to start this run over."
            ) from None
        raise CheckpointMismatchError(
            f"{path}: cannot read the checkpoint ({reason}); it is truncated or not a checkpoint. "
            "Delete it (or use another --out) to start this run over."
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointMismatchError(
            f"{path}: cannot read the checkpoint ({type(err).__name__}: {err}); it is truncated or not a checkpoint. "
            "Delete it (or use another --out) to start this run over."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        version = ckpt.get("version") if isinstance(ckpt, dict) else None
        raise CheckpointMismatchError(
            f"{path}: not a checkpoint of this version ({version!r}, expected {CHECKPOINT_VERSION}); "
            "delete it or use another --out"
        )
    if ckpt.get("fingerprint") != fingerprint:
        raise CheckpointMismatchError(
            f"{path}: written by a run with other settings ({ckpt.get('fingerprint')}); this run has {fingerprint}. "
            "Use another --out or run without --resume to start over."
        )
    if len(ckpt["rng"]) != world_size:
        raise CheckpointMismatchError(
            f"{path}: written by {len(ckpt['rng'])} process(es); resume it with the same number, not {world_size}"
        )
    return ckpt
