"""Measure the gradient balance Libra R-CNN argues about, in any torchvision detector, without changing it.

The paper's case for Balanced L1 is about gradients: under smooth L1 the *inliers* (positive samples
whose regression loss is below 1.0) "only contribute 30% gradients average per sample compared with
outliers", and Balanced L1 promotes them to balance classification and localisation.
:class:`GradientBalanceMonitor` records, per training iteration and per box-regression stage (the RoI
head and the RPN of an R-CNN; the one head of RetinaNet or SSD), over that stage's positive samples:

- ``inlier_fraction``: the share of positive samples that are inliers. The partition is the paper's
  and is the same whatever loss the model trains with: a sample is an inlier when the smooth L1 loss
  with beta 1 of its 4 encoded deltas, summed, is < 1.0.
- ``inlier_outlier_gradient_ratio``: the mean per-sample gradient magnitude of the inliers over that
  of the outliers (the paper's 30%). A sample's magnitude is the L1 norm over its 4 deltas of the
  gradient of the loss the model actually uses (read from the backward pass).
- ``inlier_gradient_share``: the inliers' share of the summed magnitudes of all positive samples.
- ``box_cls_gradient_ratio`` (the RoI head, or a one-stage head): the L2 norm of the gradient the box
  loss sends into the representation shared by both tasks (the RoI box head's output, which feeds both
  predictors; the feature maps a one-stage head reads) over the norm of the gradient from the
  classification loss. It needs one extra, gradient-only pass through the predictor, so it is measured
  every ``task_balance_every`` iterations (``None`` in between).

A statistic that is undefined in an iteration (no positives, no outliers, no gradient) is ``None``.

The monitor only *reads*: it registers tensor hooks that return nothing and records the samples the
model's own sampler drew, so losses, gradients and random streams are those of the unmonitored model
(tested bit for bit). Ratios do not depend on a common factor of the gradients, so a loss weight, AMP's
gradient scaling and DDP's averaging do not change them. Under ``torch.distributed`` :meth:`step`
sums the counts, magnitudes and squared norms over ranks, so the statistics are those of the global
batch; every rank must call it, once per iteration.

Attach it last, after ``use_balanced_l1``, ``use_libra`` or any sampler mixin: they replace the methods
it observes, and :meth:`step` raises if a training pass recorded nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetRegressionHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.ssd import SSD

from balanced_l1.detection._gradient_probes import (
    _SUMS,
    _counts,
    _magnitudes,
    _RecordingSampler,
    _Stage,
    _TaskBalance,
    is_inlier,
)
from balanced_l1.detection._mixins import _with_mixin
from balanced_l1.detection._model_kinds import two_stage_parts, wrapper_hint
from balanced_l1.params import check_number

__all__ = [
    "PAPER_INLIER_OUTLIER_RATIO",
    "SAMPLE_STATISTICS",
    "STATISTICS",
    "GradientBalanceMonitor",
    "box_gradient_statistics",
    "is_inlier",
]

#: The paper's figure: under smooth L1 an inlier gets about 30% of an outlier's gradient.
PAPER_INLIER_OUTLIER_RATIO = 0.3
#: Statistics computed from the positive samples of one stage.
SAMPLE_STATISTICS = ("inlier_fraction", "inlier_outlier_gradient_ratio", "inlier_gradient_share")
#: Every statistic of a stage, in report order.
STATISTICS = (*SAMPLE_STATISTICS, "box_cls_gradient_ratio")
_MONITOR_ATTRIBUTE = "_balanced_l1_gradient_monitor"


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 and math.isfinite(numerator / denominator) else None


def _statistics(sums: Sequence[float], with_task_balance: bool) -> dict[str, float | None]:
    inliers, outliers, g_in, g_out, box_sq, cls_sq = sums
    stats: dict[str, float | None] = {
        "inlier_fraction": _ratio(inliers, inliers + outliers),
        "inlier_outlier_gradient_ratio": (
            _ratio(g_in / inliers, g_out / outliers) if inliers > 0 and outliers > 0 else None
        ),
        "inlier_gradient_share": _ratio(g_in, g_in + g_out),
    }
    stats["box_cls_gradient_ratio"] = _ratio(math.sqrt(box_sq), math.sqrt(cls_sq)) if with_task_balance else None
    return stats


def box_gradient_statistics(pred: Tensor, target: Tensor, grad: Tensor) -> dict[str, float | None]:
    """The sample statistics of one set of positive samples, from their deltas and the loss's gradient.

    Args:
        pred: ``(P, 4)`` predicted encoded deltas of the positive samples.
        target: ``(P, 4)`` their targets.
        grad: ``(P, 4)`` the gradient of the training loss with respect to ``pred``.

    Returns:
        ``{"inlier_fraction", "inlier_outlier_gradient_ratio", "inlier_gradient_share"}``, each ``None``
            where undefined.

    Raises:
        ValueError: if the shapes differ or are not ``(P, 4)``.
    """
    if not (pred.shape == target.shape == grad.shape and pred.dim() == 2 and pred.shape[-1] == 4):
        raise ValueError(
            f"pred, target and grad must all be (P, 4), got {tuple(pred.shape)}, {tuple(target.shape)}, "
            f"{tuple(grad.shape)}"
        )
    inlier = is_inlier(pred, target)
    sums = torch.cat([_counts(inlier), _magnitudes(inlier, grad)])
    stats = _statistics([*sums.tolist(), 0.0, 0.0], with_task_balance=False)
    return {name: stats[name] for name in SAMPLE_STATISTICS}


def _monitor(module: Any) -> GradientBalanceMonitor | None:
    return module.__dict__.get(_MONITOR_ATTRIBUTE)


class _MonitorHook:
    """A forward (pre-)hook of the monitor: marked, so that a copied or pickled module leaves it behind."""

    def __init__(self, function: Callable[..., None]) -> None:
        self.function = function

    def __call__(self, *args: Any) -> None:
        self.function(*args)


class _Monitored:
    """Base of the monitor's mixins, and the mixin of a module it only hooks (the model, a predictor, a head).

    A monitor belongs to one model: a deep copy or a pickle (``torch.save(model)``) of a monitored module
    carries neither the monitor nor its hooks, and is rebuilt with the classes it had before the monitor
    (``mixin_transient``), so the copy trains as an unmonitored model and can get a monitor of its own.
    """

    mixin_label = "GradientBalance"
    mixin_transient = True

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(super().__getstate__())  # type: ignore[misc]
        state.pop(_MONITOR_ATTRIBUTE, None)
        for key in ("_forward_hooks", "_forward_pre_hooks"):
            hooks = state.get(key)
            if not hooks:
                continue
            dropped = {handle for handle, hook in hooks.items() if isinstance(hook, _MonitorHook)}
            if not dropped:
                continue
            state[key] = OrderedDict((h, hook) for h, hook in hooks.items() if h not in dropped)
            for extra in (f"{key}_with_kwargs", f"{key}_always_called"):
                if state.get(extra):
                    state[extra] = OrderedDict((h, v) for h, v in state[extra].items() if h not in dropped)
        return state


class _MonitoredRPN(_Monitored, RegionProposalNetwork):
    mixin_label = "GradientBalance"

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        monitor = _monitor(self)
        if monitor is None:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        recorder = _RecordingSampler(self.__dict__["fg_bg_sampler"])
        self.__dict__["fg_bg_sampler"] = recorder
        try:
            losses = super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        finally:
            self.__dict__["fg_bg_sampler"] = recorder.sampler
        positive = torch.where(torch.cat(recorder.positives, dim=0))[0]
        target = torch.cat(regression_targets, dim=0)[positive]
        monitor.stages["rpn"].record(pred_bbox_deltas, lambda t: t.reshape(-1, 4)[positive], target)
        return losses


class _MonitoredRoIHeads(_Monitored, RoIHeads):
    mixin_label = "GradientBalance"

    def select_training_samples(self, proposals: list[Tensor], targets: Any) -> Any:
        result = super().select_training_samples(proposals, targets)
        monitor = _monitor(self)
        if monitor is not None:
            sampled, _, labels, regression_targets = result
            monitor.roi_samples = (
                torch.cat(labels, dim=0),
                torch.cat(regression_targets, dim=0),
                torch.cat(sampled, dim=0),
            )
        return result


class _MonitoredOneStage(_Monitored):
    """Mixin for the module whose ``compute_loss`` computes a one-stage model's box loss.

    That is RetinaNet's regression head or the SSD itself; both take the same arguments.
    """

    mixin_label = "GradientBalance"

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> Any:  # fmt: skip
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)  # type: ignore[misc]
        monitor = _monitor(self)
        if monitor is not None:
            box_coder = self.box_coder  # type: ignore[attr-defined]
            monitor.record_one_stage(box_coder, targets, head_outputs["bbox_regression"], anchors, matched_idxs)
        return losses


def _dict_outputs(output: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    return output["cls_logits"], output["bbox_regression"]


def _tuple_outputs(output: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return output[0], output[1]


class GradientBalanceMonitor:
    """Record the inlier/outlier and box/classification gradient balance of a detector while it trains.

    Args:
        model: a torchvision Faster / Mask / Keypoint R-CNN, RetinaNet or SSD / SSDlite (switched by
            ``use_balanced_l1`` or ``use_libra`` or not), the bare model (not a DDP wrapper).
        task_balance_every: measure ``box_cls_gradient_ratio`` every this many iterations (>= 1),
            starting with the first; it costs a gradient-only pass through the predictor.

    Call :meth:`step` once per training iteration, after ``backward()`` (and before the optimizer
    changes the weights). :meth:`remove` detaches the monitor and leaves the model as it was. A model has
    one monitor at a time. A deep copy or a pickle of the model (``copy.deepcopy``, ``torch.save(model)``)
    carries no monitor: the copy trains unmonitored, without touching this monitor, and can be given its
    own. The monitor itself cannot be copied or pickled.

    Raises:
        TypeError: for a model this monitor does not know, or a ``task_balance_every`` that is not an
            integer (``bool`` and ``1.5`` are not; NumPy integers are).
        ValueError: for ``task_balance_every < 1``, or a model that already has a monitor (call that
            monitor's :meth:`remove` first).

    Example:
        >>> from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
        >>> model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
        >>> monitor = GradientBalanceMonitor(model)
        >>> sorted(monitor.stages)
        ['roi_heads', 'rpn']
        >>> monitor.remove()
    """

    def __init__(self, model: nn.Module, *, task_balance_every: int = 1) -> None:
        task_balance_every = check_number("task_balance_every", task_balance_every, minimum=1, integer=True)
        if isinstance(model, nn.Module) and any(_monitor(m) is not None for m in model.modules()):
            raise ValueError(
                "this model already has a GradientBalanceMonitor; a model has one at a time: call remove() on "
                "that monitor before attaching a new one"
            )
        self.task_balance_every = task_balance_every
        self.iteration = 0
        self.history: list[dict[str, dict[str, float | None]]] = []
        self.roi_samples: tuple[Tensor, Tensor, Tensor] | None = None
        #: Set to True to keep each iteration's RoI-head positives in :attr:`roi_pairs`.
        self.keep_roi_pairs = False
        #: The last training pass's RoI-head positives, ``(P, 12)`` float64 on the model's device: predicted
        #: deltas, target deltas and proposal boxes (``None`` unless :attr:`keep_roi_pairs`). See
        #: :func:`balanced_l1.detection.predict_box_gradient_balance`.
        self.roi_pairs: Tensor | None = None
        self._trained = False
        self._removed = False
        self._undo: list[Callable[[], None]] = []
        self.stages: dict[str, _Stage] = {}
        self._task: _TaskBalance | None = None
        parts = two_stage_parts(model)
        if parts is not None:
            rpn, roi_heads = parts
            self.stages = {"roi_heads": _Stage("roi_heads", True), "rpn": _Stage("rpn", False)}
            self._attach(rpn, _MonitoredRPN)
            self._attach(roi_heads, _MonitoredRoIHeads)
            self._task = _TaskBalance(roi_heads.box_predictor, _tuple_outputs)
            self._hook(roi_heads.box_predictor, self._roi_predictor_hook)
        elif isinstance(model, RetinaNet) and isinstance(model.head.regression_head, RetinaNetRegressionHead):
            self.stages = {"head": _Stage("head", True)}
            self._attach(model.head.regression_head, _MonitoredOneStage)
            self._task = _TaskBalance(model.head, _dict_outputs)
            self._hook(model.head, self._one_stage_head_hook)
        elif isinstance(model, SSD):
            self.stages = {"head": _Stage("head", True)}
            self._attach(model, _MonitoredOneStage)
            self._task = _TaskBalance(model.head, _dict_outputs)
            self._hook(model.head, self._one_stage_head_hook)
        else:
            raise TypeError(
                "GradientBalanceMonitor supports torchvision FasterRCNN, MaskRCNN, KeypointRCNN, RetinaNet and "
                f"SSD / SSDlite, as use_balanced_l1 does; got {type(model).__name__}{wrapper_hint(model)}"
            )
        self._hook_pre(model)
        self._arm()

    # --- attaching -------------------------------------------------------------------------------
    def _attach(self, module: nn.Module, mixin: type) -> None:
        original = type(module)
        module.__class__ = _with_mixin(original, mixin)
        module.__dict__[_MONITOR_ATTRIBUTE] = self

        def undo() -> None:
            module.__class__ = original
            module.__dict__.pop(_MONITOR_ATTRIBUTE, None)

        self._undo.append(undo)

    def _hook(self, module: nn.Module, hook: Callable[..., None]) -> None:
        self._attach(module, _Monitored)  # a copy of the module leaves the hook behind
        handle = module.register_forward_hook(_MonitorHook(hook))
        self._undo.append(handle.remove)

    def _hook_pre(self, model: nn.Module) -> None:
        def seen(module: nn.Module, args: Any) -> None:
            if module.training and torch.is_grad_enabled():
                self._trained = True

        self._attach(model, _Monitored)
        handle = model.register_forward_pre_hook(_MonitorHook(seen))
        self._undo.append(handle.remove)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "a GradientBalanceMonitor belongs to the model it is attached to and cannot be copied or pickled; "
            "copy or pickle the model (the copy carries no monitor) and attach a new monitor to the copy"
        )

    def resume_at(self, iteration: int) -> None:
        """Continue counting from ``iteration``, so a resumed run measures the task balance where a whole one does."""
        self.iteration = iteration
        self._arm()

    def remove(self) -> None:
        """Detach the monitor: the model's classes and hooks are those it had before."""
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        self._removed = True

    # --- recording -------------------------------------------------------------------------------
    def _arm(self) -> None:
        if self._task is not None:
            self._task.armed = self.iteration % self.task_balance_every == 0

    def _roi_predictor_hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        samples, self.roi_samples = self.roi_samples, None
        if samples is None or not torch.is_grad_enabled():
            return
        labels, targets, proposals = samples
        class_logits, box_regression = output
        positive = torch.where(labels > 0)[0]
        classes = labels[positive]
        rows = class_logits.shape[0]

        def select(t: Tensor) -> Tensor:
            return t.reshape(rows, -1, 4)[positive, classes]

        self.stages["roi_heads"].record(box_regression, select, targets[positive])
        if self.keep_roi_pairs:
            pairs = (select(box_regression).detach(), targets[positive], proposals[positive])
            self.roi_pairs = torch.cat([t.double() for t in pairs], dim=1)
        if self._task is not None:
            self._task.capture(inputs, output)

    def _one_stage_head_hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if self._task is not None and module.training:
            self._task.capture(inputs, output)

    def record_one_stage(
        self, box_coder: Any, targets: list[dict[str, Tensor]], bbox_regression: Tensor, anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> None:  # fmt: skip
        """Record the foreground anchors of a RetinaNet or SSD batch (called from its ``compute_loss``)."""
        foreground = [torch.where(m >= 0)[0] for m in matched_idxs]
        with torch.no_grad():
            encoded = [
                box_coder.encode_single(t["boxes"][m[f]], a[f])
                for t, a, m, f in zip(targets, anchors, matched_idxs, foreground, strict=True)
            ]
        target = torch.cat(encoded, dim=0) if encoded else bbox_regression.new_zeros((0, 4))

        def select(t: Tensor) -> Tensor:
            return torch.cat([t[i, f] for i, f in enumerate(foreground)], dim=0)

        self.stages["head"].record(bbox_regression, select, target)

    # --- each iteration --------------------------------------------------------------------------
    def step(self) -> dict[str, dict[str, float | None]]:
        """Close this iteration: reduce over ranks, append to :attr:`history` and return its statistics.

        Returns:
            ``{stage: {statistic: value or None}}`` with stages ``"roi_heads"`` and ``"rpn"`` (R-CNN) or
                ``"head"`` (RetinaNet, SSD).

        Raises:
            RuntimeError: if a training forward pass ran but no stage recorded samples (the monitor was
                attached before a mixin that replaced what it observes: attach it last), or if the monitor
                was removed.
        """
        if self._removed:
            raise RuntimeError("this GradientBalanceMonitor was removed from its model; attach a new one to measure")
        measured = self._task is not None and self._task.armed
        if measured:
            norms = self._task.norms()  # type: ignore[union-attr]
            if norms is not None:
                next(s for s in self.stages.values() if s.task_balance).add(norms, offset=4)
        device = next((s.sums.device for s in self.stages.values() if s.sums is not None), torch.device("cpu"))
        rows = [
            torch.zeros(_SUMS, dtype=torch.float64, device=device) if s.sums is None else s.sums.to(device)
            for s in self.stages.values()
        ]
        if self._trained and not any(s.recorded for s in self.stages.values()):
            raise RuntimeError(
                "GradientBalanceMonitor saw a training pass but no box-regression samples: attach it after "
                "use_balanced_l1, use_libra and the sampler mixins, which replace the methods it observes"
            )
        table = torch.stack(rows)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(table, op=dist.ReduceOp.SUM)
        values = table.cpu().tolist()
        record = {
            stage.name: _statistics(row, with_task_balance=measured and stage.task_balance)
            for stage, row in zip(self.stages.values(), values, strict=True)
        }
        for stage in self.stages.values():
            stage.sums, stage.recorded = None, False
        self._trained = False
        self.roi_samples = None
        self.history.append(record)
        self.iteration += 1
        self._arm()
        return record


def second_half_means(history: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, float | None]]:
    """Each statistic's mean over the second half of ``history`` (values that are ``None`` left out).

    Args:
        history: :attr:`GradientBalanceMonitor.history`, one record per iteration.

    Returns:
        ``{stage: {statistic: mean or None}}``; iterations ``len(history) // 2`` onwards are averaged.

    Example:
        >>> second_half_means([{"rpn": {"inlier_fraction": 0.0}}, {"rpn": {"inlier_fraction": 0.5}}])
        {'rpn': {'inlier_fraction': 0.5}}
    """
    half = history[len(history) // 2 :]
    stages = {stage for record in half for stage in record}
    means: dict[str, dict[str, float | None]] = {}
    for stage in sorted(stages):
        names = [n for n in STATISTICS if any(n in r.get(stage, {}) for r in half)]
        means[stage] = {}
        for name in names:
            values = [r[stage][name] for r in half if r.get(stage, {}).get(name) is not None]
            means[stage][name] = sum(values) / len(values) if values else None  # type: ignore[arg-type]
    return means
