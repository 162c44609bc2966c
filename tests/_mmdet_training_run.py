"""Train examples/mmdet/faster_rcnn_r18_balanced_l1_tiny.py in mmdetection's runner, once per box loss.

Run by tests/test_mmdet_training.py in a subprocess whose ``PYTHONPATH`` puts a full mmcv (with its
compiled ops) ahead of the installed mmcv-lite: ``python tests/_mmdet_training_run.py OUT DATA_ROOT``.
For each run in ``RUNS`` it builds a fresh ``Runner`` from the example config (seed 0, so the same
initial weights, image order, flips and RoI samples), trains, and records every iteration's logged
losses and the parameter gradients of the first iteration (tensor hooks on the parameters, which
see the gradient before the optimizer steps and zeroes it). It writes ``OUT/result.json``: the
losses, the runtime of each run, the loss names in the run's ``scalars.json`` log, and for each
compared pair of runs the per-parameter maximum absolute gradient difference and maximum gradient.
The test reads that file and makes the assertions.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "mmdet"))

from make_tiny_coco import make_tiny_coco  # noqa: E402
from train_tiny import load_config  # noqa: E402

LIBRA = {"alpha": 0.5, "gamma": 1.5, "loss_weight": 1.0}

#: name -> (box loss config, iterations). The first is the example config's loss (the config trains
#: 20 iterations; 5 here keep the test short on 2 CPU cores).
RUNS: dict[str, tuple[dict[str, Any], int]] = {
    "ours_beta1": ({"type": "balanced_l1.BalancedL1Loss", "beta": 1.0, **LIBRA}, 5),
    "mmdet_beta1": ({"type": "mmdet.BalancedL1Loss", "beta": 1.0, **LIBRA}, 2),
    "ours_mmdet_beta0.11": ({"type": "balanced_l1.BalancedL1Loss", "formulation": "mmdet", "beta": 0.11, **LIBRA}, 1),
    "mmdet_beta0.11": ({"type": "mmdet.BalancedL1Loss", "beta": 0.11, **LIBRA}, 1),
    "ours_scaled_beta0.11": ({"type": "balanced_l1.BalancedL1Loss", "beta": 0.11, **LIBRA}, 1),
}

#: (ours, theirs): the pairs whose first-step gradients are compared (the last one differs by design).
PAIRS = (
    ("ours_beta1", "mmdet_beta1"),
    ("ours_mmdet_beta0.11", "mmdet_beta0.11"),
    ("ours_scaled_beta0.11", "mmdet_beta0.11"),
)


def _recorder() -> Any:
    from mmengine.hooks import Hook

    class FirstStepRecorder(Hook):
        """Every iteration's logged losses; the parameter gradients of the first iteration."""

        priority = "VERY_LOW"

        def __init__(self) -> None:
            self.losses: list[dict[str, float]] = []
            self.grads: dict[str, torch.Tensor] = {}
            self.handles: list[Any] = []

        def before_train(self, runner: Any) -> None:
            for name, parameter in runner.model.named_parameters():
                if parameter.requires_grad:
                    self.handles.append(parameter.register_hook(self._keep(name)))

        def _keep(self, name: str) -> Any:
            def hook(grad: torch.Tensor) -> None:
                self.grads[name] = grad.detach().clone()

            return hook

        def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
            self.losses.append({key: float(value) for key, value in outputs.items()})
            for handle in self.handles:
                handle.remove()
            self.handles = []

    return FirstStepRecorder()


def _logged_loss_names(work_dir: Path) -> list[str]:
    names: set[str] = set()
    for path in work_dir.glob("*/vis_data/scalars.json"):
        for line in path.read_text().splitlines():
            names.update(key for key in json.loads(line) if key.startswith("loss"))
    return sorted(names)


def _compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, Any]:
    stats = {}
    for name in theirs:
        difference = (ours[name].double() - theirs[name].double()).abs()
        stats[name] = {
            "max_abs_diff": float(difference.max()),
            "max_abs_grad": float(theirs[name].abs().max()),
            "max_rel_diff": float((difference / theirs[name].double().abs().clamp_min(1e-30)).max()),
        }
    return {"same_parameters": sorted(ours) == sorted(theirs), "parameters": stats}


def main(out: Path, data_root: Path) -> None:
    from mmengine.runner import Runner

    if not (data_root / "annotations.json").exists():
        make_tiny_coco(data_root)
    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": {}}
    import mmcv
    import mmdet

    result.update(mmcv=mmcv.__version__, mmcv_file=mmcv.__file__, mmdet=mmdet.__version__)
    grads: dict[str, dict[str, torch.Tensor]] = {}
    for name, (loss_bbox, iters) in RUNS.items():
        start = time.perf_counter()
        cfg = load_config(data_root, out / name, iters=iters, loss_bbox=loss_bbox)
        # runners of one process must not share a logger, message hub or visualizer (a visualizer found
        # by name would write this run's scalars into an earlier run's work dir)
        cfg.experiment_name = cfg.visualizer.name = name
        runner = Runner.from_cfg(cfg)
        recorder = _recorder()
        runner.register_hook(recorder)
        runner.train()
        built = runner.model.roi_head.bbox_head.loss_bbox
        grads[name] = recorder.grads
        result["runs"][name] = {
            "loss_bbox_class": f"{type(built).__module__}.{type(built).__qualname__}",
            "loss_bbox_config": loss_bbox,
            "iterations": iters,
            "losses": recorder.losses,
            "logged_loss_names": _logged_loss_names(out / name),
            "num_grads": len(recorder.grads),
            "num_trainable": sum(p.requires_grad for p in runner.model.parameters()),
            "seconds": round(time.perf_counter() - start, 2),
        }
    result["pairs"] = {f"{a} vs {b}": _compare(grads[a], grads[b]) for a, b in PAIRS}
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
