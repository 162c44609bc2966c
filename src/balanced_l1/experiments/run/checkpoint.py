"""Checkpoints that load without running code: tensors, numbers, strings, lists and dicts only.

A checkpoint holds the model, the optimizer, the AMP grad scaler, every rank's random states (torch's CPU
generator, CUDA's generators, NumPy's and Python's, each turned into tensors and lists), the iteration,
the loss history and the run's fingerprint. :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``, so a crafted file in the output folder cannot run code on
``--resume``: anything but plain data is refused before it is used.

A checkpoint whose fingerprint matches may still have been edited or damaged, so nothing in it is trusted:
the file is read by :func:`~balanced_l1.experiments.output_folder.files.read_checkpoint_file` (a regular file of
bounded size, checked before it is opened), every key must be there with its type (:func:`load_checkpoint`), the
iteration must agree with the history and the run's length, and the tensors must fit the model and optimizer they
are loaded into (:func:`restore_checkpoint`). Run records are checked the same way by
:mod:`~balanced_l1.experiments.output_folder.schema`. Every refusal is a
:class:`~balanced_l1.experiments.output_folder.errors.CheckpointMismatchError` naming the file and the reason.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from balanced_l1.experiments.output_folder.errors import CheckpointMismatchError
from balanced_l1.experiments.output_folder.files import CHECKPOINT_ADVICE as _NEXT_STEP
from balanced_l1.experiments.output_folder.files import read_checkpoint_file, write_checkpoint_file
from balanced_l1.experiments.output_folder.schema import series_problem
from balanced_l1.experiments.output_folder.schema import short_repr as _short
from balanced_l1.experiments.output_folder.schema import stored_int as _stored_int
from balanced_l1.experiments.output_folder.schema import stored_real as _stored_real

CHECKPOINT_VERSION = 3

_NUMPY_KEYS = 624  # MT19937's state: 624 32-bit words and a position
_PYTHON_STATE = 625  # random.getstate()'s internal tuple: 624 words and the position


class Checkpoint(dict[str, Any]):
    """A checkpoint's dictionary as :func:`load_checkpoint` returns it, with the ``path`` it was read from."""

    def __init__(self, content: dict[str, Any], path: Path) -> None:
        super().__init__(content)
        self.path = path


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
    write_checkpoint_file({"version": CHECKPOINT_VERSION, **state}, path)


# --- what a well-formed checkpoint holds -------------------------------------------------------------------------


def _is_tensor(value: object, dtype: torch.dtype, shape: tuple[int, ...] | None = None) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.dtype == dtype
        and (tuple(value.shape) == shape if shape is not None else value.dim() == 1)
    )


def _rng_problem(state: object) -> str | None:
    if not isinstance(state, dict):
        return f"must be a dictionary, got {type(state).__name__}"
    if not _is_tensor(state.get("torch"), torch.uint8, tuple(torch.get_rng_state().shape)):
        return f"'torch' must be torch's generator state (uint8, 1-D), got {_short(state.get('torch'))}"
    numpy = state.get("numpy")
    if not (
        isinstance(numpy, dict)
        and numpy.get("kind") == "MT19937"
        and _is_tensor(numpy.get("keys"), torch.int64, (_NUMPY_KEYS,))
        and bool(((numpy["keys"] >= 0) & (numpy["keys"] < 1 << 32)).all())
        and _stored_int(numpy.get("pos"))
        and 0 <= numpy["pos"] <= _NUMPY_KEYS
    ):
        return f"'numpy' must be NumPy's MT19937 state (kind, 624 32-bit keys, pos), got {_short(numpy)}"
    gauss = state.get("numpy_gauss")
    if not (isinstance(gauss, list) and len(gauss) == 2 and gauss[0] in (0, 1) and _stored_int(gauss[0])):
        return f"'numpy_gauss' must be [0 or 1, number], got {_short(gauss)}"
    if not _stored_real(gauss[1]):
        return f"'numpy_gauss' must be [0 or 1, number], got {_short(gauss)}"
    python = state.get("python")
    if not (
        isinstance(python, list)
        and len(python) == 3
        and python[0] == random.getstate()[0]
        and _stored_int(python[0])
        and isinstance(python[1], list)
        and len(python[1]) == _PYTHON_STATE
        and all(_stored_int(v) and 0 <= v < 1 << 32 for v in python[1])
        and python[1][-1] <= _NUMPY_KEYS
        and (python[2] is None or type(python[2]) is float)
    ):
        return f"'python' must be Python's random state [version, 625 words, gauss], got {_short(python)}"
    cuda = state.get("cuda")
    if not (isinstance(cuda, list) and len(cuda) <= 1 and all(_is_tensor(t, torch.uint8) for t in cuda)):
        return f"'cuda' must be a list of at most one CUDA generator state (uint8, 1-D), got {_short(cuda)}"
    return None


def _structure_problem(ckpt: dict[str, Any], world_size: int, iters: int | None) -> str | None:
    kinds = {
        "iteration": int,
        "model": dict,
        "optimizer": dict,
        "scaler": dict,
        "rng": list,
        "history": list,
        "gradient_balance": list,
    }
    for key, kind in kinds.items():
        if key not in ckpt:
            return f"it has no {key!r}"
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            return f"{key!r} must be a {kind.__name__}, got {type(ckpt[key]).__name__}"
    model = ckpt["model"]
    bad = next((k for k, v in model.items() if type(k) is not str or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        return f"'model' must map parameter names to tensors, got {_short(bad)}: {_short(model[bad])}"
    optimizer = ckpt["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        return "'optimizer' must hold a 'state' dictionary and a 'param_groups' list"
    if len(ckpt["rng"]) != world_size:
        return None  # told apart by load_checkpoint: another number of processes
    for rank, state in enumerate(ckpt["rng"]):
        problem = _rng_problem(state)
        if problem is not None:
            return f"the random state of rank {rank}: {problem}"
    problem = series_problem(ckpt["history"], ckpt["gradient_balance"])
    if problem is not None:
        return problem
    sample = ckpt.get("roi_sample")  # optional: the RoI head's positives kept so far, one row of 12 numbers each
    if sample is not None and not (
        isinstance(sample, torch.Tensor)
        and sample.dtype == torch.float64
        and sample.dim() == 2
        and sample.shape[1] == 12
    ):
        return f"'roi_sample' must be a float64 tensor of 12 columns, got {_short(sample)}"
    if sample is not None and not bool(torch.isfinite(sample).all()):
        return "'roi_sample' holds NaN or infinite numbers; a run keeps only finite boxes"
    iteration = ckpt["iteration"]
    if iteration < 0 or (iters is not None and iteration > iters):
        bound = f"0 to {iters}" if iters is not None else ">= 0"
        return f"'iteration' must be {bound} (this run's length), got {iteration}"
    if len(ckpt["history"]) != iteration:
        return f"'iteration' is {iteration} but 'history' has {len(ckpt['history'])} entries"
    if len(ckpt["gradient_balance"]) not in (0, iteration):
        return f"'iteration' is {iteration} but 'gradient_balance' has {len(ckpt['gradient_balance'])} entries"
    return None


def _run_length(fingerprint: dict[str, Any]) -> int | None:
    settings = fingerprint.get("settings") if isinstance(fingerprint, dict) else None
    if isinstance(settings, dict) and settings.get("epochs") is None and _stored_int(settings.get("iters")):
        return int(settings["iters"])
    return None  # set in epochs: the length depends on the number of images, which the fingerprint does not hold


def load_checkpoint(
    path: Path, fingerprint: dict[str, Any], world_size: int, *, iters: int | None = None
) -> Checkpoint:
    """Read a checkpoint without running code and check it belongs to this run and is well-formed.

    Args:
        path: the checkpoint file.
        fingerprint: the settings of the run that wants to resume.
        world_size: the number of processes of the run that wants to resume.
        iters: the run's length in iterations, the largest ``iteration`` accepted; by default the fingerprint's
            ``iters`` setting when the run's length is set in iterations.

    Returns:
        The checkpoint dictionary, with the ``path`` it was read from.

    Raises:
        CheckpointMismatchError: if the file cannot be read (see
            :func:`~balanced_l1.experiments.output_folder.files.read_checkpoint_file`), was written with other
            settings or another number of processes, or lacks a key or holds one of the wrong type, an iteration
            out of range or a history of another length.
    """
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        version = ckpt.get("version") if isinstance(ckpt, dict) else None
        raise CheckpointMismatchError(
            f"{path}: not a checkpoint of this version ({_short(version)}, expected {CHECKPOINT_VERSION}); "
            "delete it or use another --out"
        )
    if ckpt.get("fingerprint") != fingerprint:
        raise CheckpointMismatchError(
            f"{path}: written by a run with other settings ({ckpt.get('fingerprint')}); this run has {fingerprint}. "
            "Use another --out or run without --resume to start over."
        )
    problem = _structure_problem(ckpt, world_size, _run_length(fingerprint) if iters is None else iters)
    if problem is not None:
        raise CheckpointMismatchError(f"{path}: not a well-formed checkpoint: {problem}. {_NEXT_STEP}")
    if len(ckpt["rng"]) != world_size:
        raise CheckpointMismatchError(
            f"{path}: written by {len(ckpt['rng'])} process(es); resume it with the same number, not {world_size}"
        )
    return Checkpoint(ckpt, path)


# --- loading it into a run ------------------------------------------------------------------------------------------


def state_dict_problem(saved: dict[str, torch.Tensor], model: torch.nn.Module, name: str = "'model'") -> str | None:
    """Why stored weights do not fit ``model``, or ``None`` if they do: every name of the model's ``state_dict``
    and no other, each tensor of its dtype and shape (see :func:`tensor_problem`).

    Args:
        saved: the stored ``state_dict``.
        model: the model it is loaded into.
        name: what the weights are, for the message.

    Returns:
        The reason as a phrase, or ``None``.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    if missing:
        return f"{name} has no {missing[0]!r}" + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
    unexpected = [k for k in saved if k not in expected]
    if unexpected:
        return f"{name} has {unexpected[0]!r}, which this model has not"
    for key, tensor in expected.items():
        problem = tensor_problem(f"{name} {key!r}", saved[key], tensor)
        if problem is not None:
            return problem
    return None


def tensor_problem(name: str, value: torch.Tensor, expected: torch.Tensor) -> str | None:
    """Why a stored tensor cannot stand for ``expected`` (another dtype or shape), or ``None`` if it can.

    A tensor of another dtype would be converted silently when it is loaded (a complex weight loses its imaginary
    part, an int64 one its fractions), so the dtype must be the one the run holds, as the shape must.

    Args:
        name: what the tensor is, for the message (``"'model' 'head.weight'"``).
        value: the stored tensor.
        expected: the tensor it is loaded into.

    Returns:
        The reason as a phrase, or ``None``.
    """
    if value.dtype != expected.dtype or value.shape != expected.shape:
        return (
            f"{name} is a {value.dtype} tensor of shape {list(value.shape)}, where this run holds a "
            f"{expected.dtype} tensor of shape {list(expected.shape)}"
        )
    return None


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


def _optimizer_problem(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> str | None:
    fresh = optimizer.state_dict()["param_groups"]
    groups = saved["param_groups"]
    if len(groups) != len(fresh):
        return f"'optimizer' has {len(groups)} parameter group(s), this run's has {len(fresh)}"
    parameters: dict[int, torch.Tensor] = {}
    for index, (group, mine) in enumerate(zip(groups, fresh, strict=True)):
        if not isinstance(group, dict) or not _same(group.get("params"), mine["params"]):
            return f"'optimizer' parameter group {index} is not this run's ({_short(group)})"
        lr = group.get("lr")
        if not (isinstance(lr, (int, float)) and _stored_real(lr) and math.isfinite(lr) and lr >= 0):
            return f"'optimizer' parameter group {index} has learning rate {_short(lr)}"
        for key, value in group.items():  # the hyperparameters come from the settings, which the fingerprint holds
            if key not in ("lr", "params") and key in mine and not _same(value, mine[key]):
                return f"'optimizer' parameter group {index} has {key} = {_short(value)}, this run's is {mine[key]!r}"
        params = [p for p in optimizer.param_groups[index]["params"]]
        parameters.update(zip(mine["params"], params, strict=True))
    for key, state in saved["state"].items():
        if key not in parameters or not isinstance(state, dict):
            return f"'optimizer' holds a state for {_short(key)}, which is no parameter of this run"
        for name, value in state.items():  # SGD's one tensor, momentum_buffer, has its parameter's shape and dtype
            problem = (
                tensor_problem(f"'optimizer' {name} of parameter {key}", value, parameters[key])
                if isinstance(value, torch.Tensor)
                else None
            )
            if problem is not None:
                return problem
            if not (value is None or isinstance(value, torch.Tensor) or _stored_real(value)):
                return f"'optimizer' {name} of parameter {key} is {_short(value)}"
    return None


def _scaler_problem(saved: dict[str, Any], scaler: torch.amp.GradScaler) -> str | None:
    if not scaler.is_enabled():
        return None  # a disabled scaler ignores its state
    expected = scaler.state_dict()
    if set(saved) != set(expected):
        return f"'scaler' has keys {sorted(saved)}, an enabled grad scaler's are {sorted(expected)}"
    bad = next((k for k, v in saved.items() if not (_stored_real(v) and math.isfinite(v) and v >= 0)), None)
    if bad is not None:
        return f"'scaler' {bad} is {_short(saved[bad])}"
    return None


def restore_checkpoint(
    ckpt: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int,
    device: torch.device,
) -> None:
    """Load a checkpoint from :func:`load_checkpoint` into a run: weights, optimizer, grad scaler, random states.

    Each part is checked against what it is loaded into before anything is loaded (the model's parameter names,
    dtypes and shapes, the optimizer's groups, hyperparameters and state dtypes and shapes, the scaler's keys);
    an error while loading is reported the same way.

    Args:
        ckpt: the checkpoint (its ``path``, when it has one, names it in messages).
        model: the run's model.
        optimizer: the run's optimizer, over the model's parameters.
        scaler: the run's grad scaler.
        rank: this process's rank, whose random states are restored.
        device: this process's device.

    Raises:
        CheckpointMismatchError: naming the file and what does not fit.
    """
    path = getattr(ckpt, "path", "checkpoint")
    problem = (
        state_dict_problem(ckpt["model"], model)
        or _optimizer_problem(ckpt["optimizer"], optimizer)
        or _scaler_problem(ckpt["scaler"], scaler)
    )
    if problem is not None:
        raise CheckpointMismatchError(f"{path}: does not fit this run: {problem}. {_NEXT_STEP}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"][rank], device)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as err:
        raise CheckpointMismatchError(
            f"{path}: does not fit this run ({type(err).__name__}: {err}). {_NEXT_STEP}"
        ) from None
