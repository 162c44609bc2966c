"""What a finished run's record (``runs/<arm>_seed<s>.json``) holds, checked before anything in it is used.

A record is an object with ``fingerprint`` (an object), ``metrics`` (``AP`` ... ``APl`` numbers and
``ap_per_iou``, 10 numbers), ``history`` and ``gradient_balance`` (see :func:`series_problem`; a checkpoint holds
the same two series). Stored values are the plain Python types this package writes, so a bool where a number
belongs, a NumPy scalar or a Fraction means the file was not written by this package.
"""

from __future__ import annotations

import math

import torch

from balanced_l1.experiments.metric_names import METRICS


def short_repr(value: object, limit: int = 120) -> str:
    """``value`` on one line of at most ``limit`` characters (a tensor by its dtype and shape), for a message."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    text = " ".join(repr(value).split())  # one line, even for a dictionary holding tensors
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def stored_int(value: object) -> bool:
    """Whether a value read back from a checkpoint or record has the exact type this package stores.

    Not a number rule (those are ``params.check_number``'s): stored data are plain Python ints and floats,
    so a bool, a NumPy scalar or a Fraction there means the file was not written by this package.
    """
    return type(value) is int


def stored_real(value: object) -> bool:
    """Like :func:`stored_int`, for a stored int or float."""
    return type(value) in (int, float)


def stored_finite(value: object) -> bool:
    """Whether a stored value is an int or float that converts to a finite float (no NaN, no infinity, no integer
    of 309 digits or more, which no loss, metric or statistic of a run can be)."""
    if not stored_real(value):
        return False
    try:
        return math.isfinite(value)  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float
        return False


def series_problem(history: object, balance: object) -> str | None:
    """Why a loss history and a gradient-balance series are ill-formed, or ``None`` if they are well-formed.

    Args:
        history: one ``{"loss": total, <component>: value, ...}`` per iteration (numbers).
        balance: one ``{stage: {statistic: number or None}}`` per iteration (or none at all).

    Returns:
        The reason as a phrase, or ``None``.
    """
    if not isinstance(history, list):
        return f"'history' must be a list, got {type(history).__name__}"
    for index, row in enumerate(history):
        if not (
            isinstance(row, dict) and "loss" in row and all(type(k) is str and stored_finite(v) for k, v in row.items())
        ):
            return f"'history' entry #{index} must map 'loss' and other names to finite numbers, got {short_repr(row)}"
    if not isinstance(balance, list):
        return f"'gradient_balance' must be a list, got {type(balance).__name__}"
    for index, row in enumerate(balance):
        if not (
            isinstance(row, dict)
            and all(
                type(stage) is str
                and isinstance(stats, dict)
                and all(type(k) is str and (v is None or stored_finite(v)) for k, v in stats.items())
                for stage, stats in row.items()
            )
        ):
            return (
                f"'gradient_balance' entry #{index} must map stages to {{statistic: finite number or null}}, "
                f"got {short_repr(row)}"
            )
    return None


def _metrics_problem(metrics: object) -> str | None:
    if not isinstance(metrics, dict):
        return f"'metrics' must be an object, got {type(metrics).__name__}"
    for name in METRICS:
        if not stored_finite(metrics.get(name)):
            return f"'metrics' needs {name!r} as a finite number, got {short_repr(metrics.get(name))}"
    curve = metrics.get("ap_per_iou")
    if not (isinstance(curve, list) and len(curve) == 10 and all(stored_finite(v) for v in curve)):
        return f"'metrics' needs 'ap_per_iou' as a list of 10 finite numbers, got {short_repr(curve)}"
    return None


def run_record_problem(record: object) -> str | None:
    """Why a finished-run record (``runs/<arm>_seed<s>.json``) is ill-formed, or ``None`` if it is well-formed.

    Args:
        record: the parsed JSON.

    Returns:
        The reason as a phrase, or ``None``.
    """
    if not isinstance(record, dict):
        return f"the top level must be an object, got {type(record).__name__}"
    missing = [key for key in ("fingerprint", "metrics", "history", "gradient_balance") if key not in record]
    if missing:
        return f"it has no {', '.join(repr(key) for key in missing)}"
    if not isinstance(record["fingerprint"], dict):
        return f"'fingerprint' must be an object, got {type(record['fingerprint']).__name__}"
    return _metrics_problem(record["metrics"]) or series_problem(record["history"], record["gradient_balance"])
