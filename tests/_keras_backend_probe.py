"""Run balanced_l1.keras on the backend named by ``KERAS_BACKEND`` and write what it computed as JSON.

Keras fixes its backend when it is first imported, so tests/test_cross_framework.py calls :func:`run`
in its own process for that process's backend and runs this script, in a subprocess, for the others::

    KERAS_BACKEND=torch python tests/_keras_backend_probe.py WORKDIR

The script reads ``WORKDIR/inputs.json`` (``pred``, ``target``: float32 matrices; ``sample_weight``: one weight
per row; ``cases``: ``[beta, formulation]`` pairs; ``conformance``: ``[beta, formulation, x]`` rows to
evaluate in float64), trains a small model with :class:`BalancedL1Loss`, saves it to
``WORKDIR/model.keras`` and reloads it, and writes ``WORKDIR/result.json``. It only computes; the test
compares.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import keras
import numpy as np


def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.jit(function)`` on the JAX backend: one compiled program instead of op-by-op dispatch."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    return function


def _loss_and_grad(y_true: np.ndarray, y_pred: np.ndarray, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss and the gradient of its sum with respect to ``y_pred``, with the backend's autodiff."""
    from balanced_l1.keras import balanced_l1_loss

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def total(pred: Any) -> tuple[Any, Any]:
            loss = balanced_l1_loss(y_true, pred, **params)
            return keras.ops.sum(loss), loss

        (_, loss), grad = _compiled(jax.value_and_grad(total, has_aux=True))(jax.numpy.asarray(y_pred))
        return np.asarray(loss), np.asarray(grad)
    if backend == "torch":
        import torch

        pred = torch.tensor(y_pred, requires_grad=True)
        loss = balanced_l1_loss(torch.tensor(y_true), pred, **params)
        (grad,) = torch.autograd.grad(loss.sum(), pred)
        return loss.detach().numpy(), grad.numpy()
    raise SystemExit(f"no gradient helper for the {backend!r} backend (jax and torch are supported)")


def _losses(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    from balanced_l1.keras import BalancedL1Loss, balanced_l1_loss

    pred = np.asarray(inputs["pred"], dtype=np.float32)
    target = np.asarray(inputs["target"], dtype=np.float32)
    sample_weight = np.asarray(inputs["sample_weight"], dtype=np.float32)
    results = []
    for beta, formulation in inputs["cases"]:
        params = {"beta": beta, "formulation": formulation}
        elementwise, grad = _loss_and_grad(target.reshape(-1, 1), pred.reshape(-1, 1), **params)
        per_sample = _compiled(partial(balanced_l1_loss, **params))(target, pred)
        weighted = _compiled(BalancedL1Loss(**params))(target, pred, sample_weight)
        results.append(
            {
                "beta": beta,
                "formulation": formulation,
                "elementwise": elementwise.tolist(),
                "grad": grad.ravel().tolist(),
                "per_sample": np.asarray(per_sample).tolist(),
                "weighted_sum_over_batch_size": float(weighted),
            }
        )
    return results


@contextmanager
def _float64() -> Iterator[None]:
    """Let the JAX backend compute in float64 (JAX needs x64 for that); other backends always can."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _conformance(rows: list[list[Any]]) -> dict[str, Any]:
    """Loss and gradient of every ``[beta, formulation, x]`` row (in row order), in float64.

    One call per ``(beta, formulation)`` pair, on all of its rows at once.
    """
    loss, grad, dtypes = np.empty(len(rows)), np.empty(len(rows)), set()
    with _float64():
        for beta, formulation in {(beta, formulation) for beta, formulation, _ in rows}:
            index = [i for i, row in enumerate(rows) if (row[0], row[1]) == (beta, formulation)]
            x = np.array([[rows[i][2]] for i in index], dtype=np.float64)
            group_loss, group_grad = _loss_and_grad(np.zeros_like(x), x, beta=beta, formulation=formulation)
            loss[index], grad[index] = group_loss, group_grad.ravel()
            dtypes.add(str(group_loss.dtype))
    return {"dtype": sorted(dtypes), "loss": loss.tolist(), "grad": grad.tolist()}


def _model_round_trip(workdir: Path) -> dict[str, Any]:
    from balanced_l1.keras import BalancedL1Loss

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 4)) * 0.5).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    loss = BalancedL1Loss(beta=0.11, formulation="mmdet", reduction="sum", name="box_loss")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss=loss)
    path = workdir / "model.keras"
    with warnings.catch_warnings():  # Keras' own tensors trip NumPy 2's __array__(copy=...) deprecation
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
        history = model.fit(x, y, epochs=4, batch_size=16, verbose=0).history["loss"]
        model.save(path)
        reloaded = keras.models.load_model(path)
        return {
            "history": [float(value) for value in history],
            "config": loss.get_config(),
            "reloaded_class": f"{type(reloaded.loss).__module__}.{type(reloaded.loss).__qualname__}",
            "reloaded_config": reloaded.loss.get_config(),
            "evaluate": float(model.evaluate(x, y, verbose=0)),
            "reloaded_evaluate": float(reloaded.evaluate(x, y, verbose=0)),
        }


def run(inputs: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Compute everything for ``inputs`` on this process's backend; the model is saved under ``workdir``."""
    return {
        "backend": keras.backend.backend(),
        "losses": _losses(inputs),
        "conformance": _conformance(inputs["conformance"]),
        "model": _model_round_trip(workdir),
    }


if __name__ == "__main__":
    workdir = Path(sys.argv[1])
    result = run(json.loads((workdir / "inputs.json").read_text()), workdir)
    (workdir / "result.json").write_text(json.dumps(result))
