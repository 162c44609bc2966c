"""The same inputs through PyTorch, JAX and Keras 3 (on its JAX and PyTorch backends) give the same loss.

Keras fixes its backend at import, so tests/_keras_backend_probe.py runs once per backend: here for
this process's backend (PyTorch unless KERAS_BACKEND says otherwise), in a subprocess for the other, both at
the same time; this module compares what they computed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
import torch

import balanced_l1
import balanced_l1.jax
from balanced_l1 import reference
from balanced_l1.params import BalancedL1Params
from tests.conformance import conformance_cases

BACKENDS = ("jax", "torch")
CASES = [(beta, formulation) for beta in (0.11, 1.0, 2.5) for formulation in ("scaled", "mmdet")]
CONFORMANCE = conformance_cases()  # docs/contract.md "4. Conformance values": (beta, formulation, x, L, dL/dx)
PROBE = Path(__file__).with_name("_keras_backend_probe.py")
RTOL, ATOL = 1e-6, 1e-7  # float32: a few ulps of the loss, and an absolute floor for losses near 0


def _inputs() -> dict[str, np.ndarray]:
    """float32 predictions and targets whose differences span 0.02 to ~20 in magnitude, both signs."""
    rng = np.random.default_rng(5)
    target = rng.normal(scale=0.5, size=(16, 4)).astype(np.float32)
    diff = rng.choice([-1.0, 1.0], size=(16, 4)) * np.exp(rng.uniform(np.log(0.02), np.log(20.0), size=(16, 4)))
    pred = (target + diff).astype(np.float32)
    sample_weight = rng.uniform(0.0, 2.0, size=16).astype(np.float32)
    return {"pred": pred, "target": target, "sample_weight": sample_weight}


INPUTS = _inputs()


def _probe_inputs() -> dict[str, Any]:
    payload: dict[str, Any] = {name: value.tolist() for name, value in INPUTS.items()}
    return payload | {"cases": CASES, "conformance": [row[:3] for row in CONFORMANCE]}


def _start_probe(backend: str, workdir: Path) -> subprocess.Popen[str]:
    (workdir / "inputs.json").write_text(json.dumps(_probe_inputs()))
    return subprocess.Popen(
        [sys.executable, str(PROBE), str(workdir)],
        env=os.environ | {"KERAS_BACKEND": backend},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_probe_here(workdir: Path) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("_keras_backend_probe", PROBE)
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return dict(json.loads(json.dumps(probe.run(_probe_inputs(), workdir))))


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """What the probe computed on each Keras backend, keyed by backend name.

    This process's own backend runs here; each other backend runs in a subprocess, started first so
    that the two work at the same time.
    """
    here = keras.backend.backend()
    workdirs = {backend: tmp_path_factory.mktemp(f"keras_{backend}") for backend in BACKENDS}
    processes = {backend: _start_probe(backend, workdirs[backend]) for backend in BACKENDS if backend != here}
    results = {here: _run_probe_here(workdirs[here])} if here in BACKENDS else {}
    for backend, process in processes.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"Keras probe on the {backend} backend failed:\n{output}"
        results[backend] = json.loads((workdirs[backend] / "result.json").read_text())
    assert {backend: result["backend"] for backend, result in results.items()} == {b: b for b in BACKENDS}
    return results


def _case(result: dict[str, Any], beta: float, formulation: str) -> dict[str, Any]:
    (case,) = [c for c in result["losses"] if (c["beta"], c["formulation"]) == (beta, formulation)]
    return case


def _torch_loss_and_grad(beta: float, formulation: str) -> tuple[np.ndarray, np.ndarray]:
    pred = torch.tensor(INPUTS["pred"], requires_grad=True)
    loss = balanced_l1.balanced_l1_loss(
        pred, torch.tensor(INPUTS["target"]), beta=beta, formulation=formulation, reduction="none"
    )
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    return loss.detach().numpy(), grad.numpy()


def _jax_loss_and_grad(beta: float, formulation: str) -> tuple[np.ndarray, np.ndarray]:
    def total(pred: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss = balanced_l1.jax.balanced_l1_loss(
            pred, jnp.asarray(INPUTS["target"]), beta=beta, formulation=formulation, reduction="none"
        )
        return jnp.sum(loss), loss

    (_, loss), grad = jax.value_and_grad(total, has_aux=True)(jnp.asarray(INPUTS["pred"]))
    return np.asarray(loss), np.asarray(grad)


@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_jax_loss_and_gradient_match_pytorch_in_float32(beta: float, formulation: str) -> None:
    torch_loss, torch_grad = _torch_loss_and_grad(beta, formulation)
    jax_loss, jax_grad = _jax_loss_and_grad(beta, formulation)
    np.testing.assert_allclose(jax_loss, torch_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(jax_grad, torch_grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_pytorch_matches_the_reference_on_these_inputs(beta: float, formulation: str) -> None:
    x = INPUTS["pred"].astype(np.float64) - INPUTS["target"]
    params = BalancedL1Params(beta=beta, formulation=formulation)
    torch_loss, torch_grad = _torch_loss_and_grad(beta, formulation)
    np.testing.assert_allclose(torch_loss, reference.balanced_l1(x, params), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch_grad, reference.balanced_l1_grad(x, params), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_keras_elementwise_loss_and_gradient_match_pytorch_in_float32(
    keras_results: dict[str, dict[str, Any]], backend: str, beta: float, formulation: str
) -> None:
    case = _case(keras_results[backend], beta, formulation)
    torch_loss, torch_grad = _torch_loss_and_grad(beta, formulation)
    np.testing.assert_allclose(np.reshape(case["elementwise"], (16, 4)), torch_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.reshape(case["grad"], (16, 4)), torch_grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_keras_per_sample_loss_is_pytorchs_mean_over_the_last_axis(
    keras_results: dict[str, dict[str, Any]], backend: str, beta: float, formulation: str
) -> None:
    case = _case(keras_results[backend], beta, formulation)
    torch_loss, _ = _torch_loss_and_grad(beta, formulation)
    np.testing.assert_allclose(case["per_sample"], torch_loss.mean(axis=-1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("beta", "formulation"), CASES)
def test_keras_sample_weighted_loss_is_pytorchs_weighted_mean(
    keras_results: dict[str, dict[str, Any]], backend: str, beta: float, formulation: str
) -> None:
    case = _case(keras_results[backend], beta, formulation)
    expected = balanced_l1.balanced_l1_loss(
        torch.tensor(INPUTS["pred"]),
        torch.tensor(INPUTS["target"]),
        beta=beta,
        formulation=formulation,
        weight=torch.tensor(INPUTS["sample_weight"])[:, None],
    )
    np.testing.assert_allclose(case["weighted_sum_over_batch_size"], float(expected), rtol=RTOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_reproduces_the_conformance_table_in_float64_to_1e_12(
    keras_results: dict[str, dict[str, Any]], backend: str
) -> None:
    conformance = keras_results[backend]["conformance"]
    assert set(conformance["dtype"]) == {"float64"}
    np.testing.assert_allclose(conformance["loss"], [row[3] for row in CONFORMANCE], rtol=1e-12)
    np.testing.assert_allclose(conformance["grad"], [row[4] for row in CONFORMANCE], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_model_reloaded_from_a_keras_file_keeps_its_balanced_l1_loss(
    keras_results: dict[str, dict[str, Any]], backend: str
) -> None:
    model = keras_results[backend]["model"]
    assert model["reloaded_class"] == "balanced_l1.keras.BalancedL1Loss"
    assert model["reloaded_config"] == model["config"]
    assert model["config"] | {"beta": 0.11, "formulation": "mmdet", "reduction": "sum"} == model["config"]
    np.testing.assert_allclose(model["reloaded_evaluate"], model["evaluate"], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_model_training_with_the_loss_lowers_it(keras_results: dict[str, dict[str, Any]], backend: str) -> None:
    history = keras_results[backend]["model"]["history"]
    assert np.all(np.isfinite(history))
    assert np.all(np.diff(history) < 0), history
