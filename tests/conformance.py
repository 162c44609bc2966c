"""docs/contract.md's "4. Conformance values" (float64, alpha = 0.5, gamma = 1.5), shared by every backend's tests."""

# (beta, formulation, x, L(x), dL/dx); formulation None means both.
CONFORMANCE: list[tuple[float, str | None, float, float, float]] = [
    (1.0, None, 0.05, 0.009303593818707302, 0.3350101126724271),
    (1.0, None, 0.5, 0.4005675069053246, 1.1777200855068983),
    (1.0, None, 1.0, 1.078593544736884, 1.5),
    (1.0, None, -3.0, 4.078593544736884, -1.5),
    (0.11, "scaled", 0.05, 0.03827962648650376, 1.1347852320117335),
    (0.11, "scaled", 0.5, 0.7036452899210572, 1.5),
    (0.11, "mmdet", 0.05, 0.09119712419983295, 1.5529095213879942),
    (0.11, "mmdet", 0.5, 0.7735935447368839, 1.5),
]


def conformance_cases() -> list[tuple[float, str, float, float, float]]:
    """The table with 'either' expanded into one row per formulation."""
    rows = []
    for beta, formulation, x, value, grad in CONFORMANCE:
        for f in (formulation,) if formulation else ("scaled", "mmdet"):
            rows.append((beta, f, x, value, grad))
    return rows


def _devices() -> list:
    """``cpu``, and ``cuda`` skipped (with its reason) where no GPU is available: the core tests' device axis."""
    import pytest
    import torch

    no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    return ["cpu", pytest.param("cuda", marks=no_gpu)]


#: The device axis: ``@pytest.mark.parametrize("device", DEVICES)``.
DEVICES: list = _devices()
