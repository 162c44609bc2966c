"""The probes behind :class:`~balanced_l1.detection.GradientBalanceMonitor`: they read tensors, never change them.

- :class:`_Stage` keeps one box-regression stage's per-iteration sums (inlier and outlier counts and
  gradient magnitudes) on the model's device, and registers a hook on the predicted deltas that adds the
  magnitudes when the backward pass reaches them;
- :class:`_TaskBalance` captures a representation shared by classification and box regression and the
  gradients of the two outputs, and afterwards separates the two contributions by a vector-Jacobian
  product through a re-run of the module (buffers restored, parameters untouched);
- :class:`_RecordingSampler` stands in for an RPN's sampler during one call and keeps what it drew.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

_SUMS = 6  # per stage: inliers, outliers, inlier magnitude, outlier magnitude, box |g|^2, cls |g|^2


def is_inlier(pred: Tensor, target: Tensor) -> Tensor:
    """The paper's partition: smooth L1 (beta 1) of a sample's deltas, summed over its last dim, is < 1.0.

    Args:
        pred: ``(P, 4)`` predicted encoded deltas.
        target: ``(P, 4)`` target encoded deltas.

    Returns:
        ``(P,)`` bool tensor, computed in float64.

    Example:
        >>> is_inlier(torch.tensor([[0.1, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]), torch.zeros(2, 4)).tolist()
        [True, False]
    """
    x = (pred.detach().double() - target.detach().double()).abs()
    loss = torch.where(x < 1.0, 0.5 * x * x, x - 0.5).sum(dim=-1)
    return loss < 1.0


def _counts(inlier: Tensor) -> Tensor:
    """``[inliers, outliers]`` in float64."""
    return torch.stack([inlier.sum(), (~inlier).sum()]).double()


def _magnitudes(inlier: Tensor, grad: Tensor) -> Tensor:
    """``[inlier magnitude, outlier magnitude]``: the per-sample L1 norms of ``grad``, summed by group."""
    magnitude = grad.detach().double().abs().sum(dim=-1)
    inlier = inlier.to(magnitude.device)
    return torch.stack([magnitude[inlier].sum(), magnitude[~inlier].sum()])


class _Stage:
    """The per-iteration sums of one box-regression stage (kept on the model's device: no host sync).

    ``sums`` holds, in order, the inlier and outlier counts (added in the forward pass), their gradient
    magnitudes (added by the hook in the backward pass) and the squared box and classification norms
    of the task balance (added by the monitor after the backward pass); ``None`` until a first record.
    """

    def __init__(self, name: str, task_balance: bool) -> None:
        self.name = name
        self.task_balance = task_balance
        self.sums: Tensor | None = None
        self.recorded = False

    def add(self, values: Tensor, offset: int) -> None:
        """Add ``values`` to ``sums[offset : offset + len(values)]``."""
        if self.sums is None:
            self.sums = torch.zeros(_SUMS, dtype=torch.float64, device=values.device)
        self.sums[offset : offset + values.numel()] += values.to(self.sums.device)

    def record(self, pred: Tensor, select: Callable[[Tensor], Tensor], target: Tensor) -> None:
        """Record positives ``select(pred)`` against ``target``; their gradient magnitudes arrive in backward."""
        self.recorded = True
        inlier = is_inlier(select(pred), target)
        self.add(_counts(inlier), offset=0)
        if pred.requires_grad:
            pred.register_hook(lambda grad: self.add(_magnitudes(inlier, select(grad)), offset=2))


class _TaskBalance:
    """Captures a shared representation and the gradients of the two task outputs computed from it.

    After the backward pass, :meth:`norms` re-runs ``module`` on a detached copy of its input (buffers
    restored afterwards, parameters untouched) and takes the vector-Jacobian product of each output
    with the gradient it received, which separates the two contributions to the representation's gradient.
    """

    def __init__(self, module: nn.Module, outputs: Callable[[Any], tuple[Tensor, Tensor]]) -> None:
        self.module = module
        self.outputs = outputs  # module output -> (classification output, box output)
        self.armed = False
        self.inputs: tuple[Any, ...] | None = None
        self.autocast: tuple[str, bool, torch.dtype] = ("cpu", False, torch.bfloat16)
        self.grads: list[Tensor | None] = [None, None]

    def capture(self, inputs: tuple[Any, ...], output: Any) -> None:
        if not self.armed or not torch.is_grad_enabled():
            return
        cls_out, box_out = self.outputs(output)
        self.inputs = tuple(_detached(x) for x in inputs)
        device = box_out.device.type
        # the re-run happens after backward, outside any autocast region: it re-enters the forward's one
        self.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        self.grads = [None, None]
        for index, tensor in enumerate((cls_out, box_out)):
            if tensor.requires_grad:
                tensor.register_hook(self._keeper(index))

    def _keeper(self, index: int) -> Callable[[Tensor], None]:
        def keep(grad: Tensor) -> None:
            self.grads[index] = grad.detach()

        return keep

    def norms(self) -> Tensor | None:
        """``[|g_box|^2, |g_cls|^2]`` at the representation, or None if nothing was captured."""
        if self.inputs is None:
            return None
        inputs, grads = self.inputs, self.grads
        self.inputs, self.grads = None, [None, None]
        leaves = [t for t in _tensors(inputs) if t.is_floating_point()]
        buffers = [b.detach().clone() for b in self.module.buffers()]
        try:
            device, enabled, dtype = self.autocast
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                for leaf in leaves:
                    leaf.requires_grad_(True)
                outputs = self.outputs(self.module(*inputs))
                squared = []
                for output, grad in zip(outputs, grads, strict=True):
                    total = torch.zeros((), dtype=torch.float64, device=output.device)
                    if grad is not None and output.requires_grad:
                        parts = torch.autograd.grad(
                            output, leaves, grad.to(output.dtype), retain_graph=True, allow_unused=True
                        )
                        for part in parts:
                            if part is not None:
                                total = total + part.double().square().sum()
                    squared.append(total)
        finally:
            with torch.no_grad():
                for buffer, saved in zip(self.module.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
        cls_sq, box_sq = squared
        return torch.stack([box_sq, cls_sq.to(box_sq.device)])


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _RecordingSampler:
    """Stands in for an RPN's ``fg_bg_sampler`` during one ``compute_loss`` call and keeps what it drew."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.positives: list[Tensor] = []

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        positives, negatives = self.sampler(labels)
        self.positives = positives
        return positives, negatives
