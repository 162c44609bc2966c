"""Autograd contract: gradcheck, second derivatives, torch.func, saved tensors, torch.compile."""

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from balanced_l1 import BalancedL1Loss, balanced_l1_loss
from tests.conformance import DEVICES

FORMULATIONS = ["scaled", "mmdet"]


def _away_from_kinks(n: int, beta: float, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose |pred - target| stays clear of 0 and beta, where finite differences straddle a kink."""
    gen = torch.Generator().manual_seed(0)
    magnitude = torch.cat([torch.rand(n, generator=gen) * 0.8 + 0.1, torch.rand(n, generator=gen) * 2 + 1.2]) * beta
    sign = torch.where(torch.rand(2 * n, generator=gen) > 0.5, 1.0, -1.0)
    target = torch.randn(2 * n, generator=gen, dtype=torch.float64)
    pred = (target + sign * magnitude).double()
    return pred.to(device).requires_grad_(True), target.to(device).requires_grad_(True)


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("beta", [0.11, 1.0, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(formulation, beta, reduction, device):
    pred, target = _away_from_kinks(6, beta, device)
    weight = torch.rand(12, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p, t, w: balanced_l1_loss(p, t, weight=w, beta=beta, reduction=reduction, formulation=formulation),
        (pred, target, weight),
    )


def test_gradcheck_with_tensor_avg_factor():
    pred, target = _away_from_kinks(4, 1.0)
    avg = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, t, a: balanced_l1_loss(p, t, avg_factor=a), (pred, target, avg))


def test_second_derivative_raises_a_clear_error():
    pred = torch.randn(5, dtype=torch.float64, requires_grad=True)
    loss = balanced_l1_loss(pred, torch.zeros(5, dtype=torch.float64), reduction="sum")
    (grad,) = torch.autograd.grad(loss, pred, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support second derivatives"):
        grad.pow(2).sum().backward()


def test_nested_func_grad_raises_instead_of_returning_zero():
    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return balanced_l1_loss(x, torch.zeros_like(x), reduction="sum")

    with pytest.raises(RuntimeError, match="does not support second derivatives"):
        torch.func.grad(lambda x: torch.func.grad(loss_of)(x).sum())(torch.randn(4, dtype=torch.float64))


def test_create_graph_first_order_still_works():
    pred = torch.randn(5, dtype=torch.float64, requires_grad=True)
    loss = balanced_l1_loss(pred, torch.zeros(5, dtype=torch.float64), reduction="sum")
    (grad,) = torch.autograd.grad(loss, pred, create_graph=True)
    (plain,) = torch.autograd.grad(balanced_l1_loss(pred, torch.zeros_like(pred), reduction="sum"), pred)
    torch.testing.assert_close(grad, plain)


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_func_grad_matches_autograd(formulation):
    pred, target = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    via_func = torch.func.grad(lambda p: balanced_l1_loss(p, target, beta=0.5, formulation=formulation))(pred)
    leaf = pred.clone().requires_grad_(True)
    balanced_l1_loss(leaf, target, beta=0.5, formulation=formulation).backward()
    torch.testing.assert_close(via_func, leaf.grad)


def test_func_vmap_matches_a_loop():
    pred, target = torch.randn(3, 10, dtype=torch.float64), torch.randn(3, 10, dtype=torch.float64)
    batched = torch.func.vmap(lambda p, t: balanced_l1_loss(p, t, reduction="sum"))(pred, target)
    looped = torch.stack([balanced_l1_loss(p, t, reduction="sum") for p, t in zip(pred, target, strict=True)])
    torch.testing.assert_close(batched, looped)


def test_vmap_of_grad_gives_per_sample_gradients():
    pred, target = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    per_sample = torch.func.vmap(torch.func.grad(lambda p, t: balanced_l1_loss(p, t, reduction="sum")))(pred, target)
    leaf = pred.clone().requires_grad_(True)
    balanced_l1_loss(leaf, target, reduction="sum").backward()
    torch.testing.assert_close(per_sample, leaf.grad)


def test_at_most_one_tensor_is_saved_for_backward():
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    pred = torch.randn(1000, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = balanced_l1_loss(pred, torch.randn(1000), reduction="sum")
    loss.backward()
    assert len(saved) == 1 and saved[0].numel() == 1000


def test_module_applies_loss_weight_and_reduction_override():
    pred, target = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    module = BalancedL1Loss(beta=0.5, loss_weight=2.0, reduction="sum")
    torch.testing.assert_close(module(pred, target), 2.0 * balanced_l1_loss(pred, target, beta=0.5, reduction="sum"))
    torch.testing.assert_close(
        module(pred, target, reduction_override="none"),
        2.0 * balanced_l1_loss(pred, target, beta=0.5, reduction="none"),
    )
    torch.testing.assert_close(
        module(pred, target, avg_factor=2.0, reduction_override="mean"),
        2.0 * balanced_l1_loss(pred, target, beta=0.5, avg_factor=2.0),
    )


def test_module_repr_names_its_parameters():
    assert "beta=0.11" in repr(BalancedL1Loss(beta=0.11)) and "formulation='scaled'" in repr(BalancedL1Loss())


@pytest.mark.compile
@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_torch_compile_fullgraph_matches_eager_in_one_kernel_each_way(formulation):
    torch._dynamo.reset()
    pred, target = torch.randn(64, 4), torch.randn(64, 4)
    weight = torch.rand(64, 1)

    def fn(p: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return balanced_l1_loss(p, t, weight=w, beta=0.11, avg_factor=10.0, formulation=formulation)

    compiled = torch.compile(fn, fullgraph=True)
    eager_pred, compiled_pred = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    eager = fn(eager_pred, target, weight)
    eager.backward()

    def step() -> torch.Tensor:
        loss = compiled(compiled_pred, target, weight)
        loss.backward()
        return loss

    got, (forward_code, backward_code) = run_and_get_code(step)
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(compiled_pred.grad, eager_pred.grad)
    assert forward_code.count('extern "C"') == 1
    assert backward_code.count('extern "C"') == 1
    assert torch._dynamo.explain(fn)(pred, target, weight).graph_break_count == 0
