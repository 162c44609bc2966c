"""``balanced-l1 compare``: train the same small Faster R-CNN once per arm and seed, evaluate, report.

For every seed, each arm starts from the same initial weights (``torch.manual_seed(seed)`` before the
model is built), sees the same images in the same order and draws from the same RNG streams; only
the arm's ``configure`` differs. Output folder ``--out``::

    results.json        config, per-arm metrics per seed, mean and std, paired differences
    loss_curves.png     training loss per arm
    ap_vs_iou.png       AP against IoU threshold 0.50..0.95 per arm
    runs/<arm>_seed<s>.json        one finished run: its settings, metrics and loss history
    checkpoints/<arm>_seed<s>.pt   the latest checkpoint of that run (for --resume)

Every file is written atomically; ``results.json`` is written last, and one left by an earlier run is
removed before training starts. ``--resume`` reuses finished runs and checkpoints only if their
settings match.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from balanced_l1._files import write_json_atomically
from balanced_l1.detection.models import build_small_faster_rcnn
from balanced_l1.experiments.arms import BASELINE_ARM, get_arm
from balanced_l1.experiments.coco_data import DetectionDataset, DetectionSplit, load_coco_folder
from balanced_l1.experiments.distributed import DistContext, barrier, setup_distributed, teardown_distributed
from balanced_l1.experiments.evaluate import evaluate_detector
from balanced_l1.experiments.report import format_table, save_figures, summarize, write_results
from balanced_l1.experiments.synthetic import make_synthetic_dataset
from balanced_l1.experiments.train import CheckpointMismatchError, TrainConfig, load_checkpoint, train

DEFAULT_ARMS = ("smooth_l1", "balanced_l1")


class ConfigError(ValueError):
    """A comparison setting is out of range; the message names it, its value and what is allowed."""


@dataclass(frozen=True)
class CompareConfig:
    """Everything one comparison depends on.

    Attributes:
        out: output folder.
        arms: arm names (see :mod:`balanced_l1.experiments.arms`).
        seeds: training seeds; each arm trains once per seed.
        iters: training iterations per run.
        batch_size: images per global batch.
        lr: peak learning rate.
        warmup_iters: linear warm-up iterations.
        checkpoint_every: iterations between checkpoints.
        image_size: side of the synthetic images, and the longer side the model resizes every image to.
        train_images: synthetic training images.
        val_images: synthetic held-out images.
        data_seed: seed of the synthetic data set.
        data: a COCO-format folder to use instead of the synthetic set.
        device: ``"cpu"`` or ``"cuda"``.
        resume: continue from the checkpoints and finished runs in ``out``.
    """

    out: Path
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0,)
    iters: int = 300
    batch_size: int = 8
    lr: float = 0.04
    warmup_iters: int = 50
    checkpoint_every: int = 20
    image_size: int = 128
    train_images: int = 1024
    val_images: int = 200
    data_seed: int = 0
    data: Path | None = None
    device: str = "cpu"
    resume: bool = False

    def validate(self, world_size: int = 1) -> None:
        """Check the settings that do not need the data.

        Args:
            world_size: number of processes the global batch is split over.

        Raises:
            ConfigError: naming the setting, its value and what is allowed.
        """
        try:
            for arm in self.arms:
                get_arm(arm)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms must be a non-empty list without repeats, got {list(self.arms)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be non-negative integers without repeats, got {list(self.seeds)}")
        for name in ("iters", "batch_size", "checkpoint_every", "train_images", "val_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be finite and > 0, got {self.lr}")
        if self.data_seed < 0:
            raise ConfigError(f"data_seed must be >= 0, got {self.data_seed}")
        if self.warmup_iters < 0:
            raise ConfigError(f"warmup_iters must be >= 0, got {self.warmup_iters}")
        if self.image_size < 64:
            raise ConfigError(f"image_size must be >= 64 pixels, got {self.image_size}")
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} must be divisible by the number of processes {world_size}")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"out {self.out} exists and is not a folder")


def _load_data(config: CompareConfig) -> dict[str, DetectionSplit]:
    if config.data is not None:
        return load_coco_folder(config.data)
    return make_synthetic_dataset(
        config.train_images, config.val_images, image_size=config.image_size, seed=config.data_seed
    )


def _fingerprint(config: CompareConfig, arm: str) -> dict[str, Any]:
    data = (
        str(config.data) if config.data else f"synthetic({config.train_images},{config.val_images},{config.data_seed})"
    )
    return {"arm": arm, "data": data, "image_size": config.image_size}


def _run_fingerprint(config: CompareConfig, arm: str, seed: int) -> dict[str, Any]:
    """The fingerprint :func:`~balanced_l1.experiments.train.train` stores: run settings, train settings, seed."""
    return {**_fingerprint(config, arm), "train": asdict(_train_config(config)), "seed": seed}


def _paths(config: CompareConfig, arm: str, seed: int) -> tuple[Path, Path]:
    return config.out / "runs" / f"{arm}_seed{seed}.json", config.out / "checkpoints" / f"{arm}_seed{seed}.pt"


def _check_resumable(config: CompareConfig, ctx: DistContext) -> None:
    for arm in config.arms:
        for seed in config.seeds:
            record, ckpt = _paths(config, arm, seed)
            fingerprint = _run_fingerprint(config, arm, seed)
            if record.exists():
                if json.loads(record.read_text(encoding="utf-8")).get("fingerprint") != fingerprint:
                    raise CheckpointMismatchError(
                        f"{record}: finished by a run with other settings; this run has {fingerprint}. "
                        "Use another --out or run without --resume to start over."
                    )
            elif ckpt.exists():
                load_checkpoint(ckpt, fingerprint, ctx.world_size)


def _train_config(config: CompareConfig) -> TrainConfig:
    return TrainConfig(
        iters=config.iters,
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_iters=min(config.warmup_iters, config.iters),
        checkpoint_every=config.checkpoint_every,
    )


def _run_one(
    config: CompareConfig,
    ctx: DistContext,
    splits: dict[str, DetectionSplit],
    train_set: DetectionDataset,
    arm: str,
    seed: int,
) -> dict[str, Any] | None:
    record_path, ckpt_path = _paths(config, arm, seed)
    if config.resume and record_path.exists():
        finished: dict[str, Any] = json.loads(record_path.read_text(encoding="utf-8"))
        return finished
    torch.manual_seed(seed)
    model = build_small_faster_rcnn(len(splits["train"].category_ids), image_size=config.image_size)
    get_arm(arm).configure(model)
    model.to(ctx.device)
    history = train(
        model,
        train_set,
        _train_config(config),
        seed=seed,
        ctx=ctx,
        checkpoint_path=ckpt_path,
        fingerprint=_fingerprint(config, arm),
        resume=config.resume,
        desc=f"{arm} seed {seed}",
    )
    record: dict[str, Any] | None = None
    if ctx.is_main:
        metrics = evaluate_detector(model, splits["val"], device=ctx.device)
        record = {
            "arm": arm,
            "seed": seed,
            "fingerprint": _run_fingerprint(config, arm, seed),
            "metrics": metrics,
            "history": history,
        }
        write_json_atomically(record, record_path)
    barrier(ctx)
    return record


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run the comparison described by ``config``; validate everything before any training.

    Args:
        config: the settings.
        log: where rank 0 prints its summary lines.

    Returns:
        The content of ``results.json`` on rank 0, ``None`` on other ranks.

    Raises:
        ConfigError: for a bad setting.
        balanced_l1.experiments.coco_data.DataError: for bad data (a ``ValueError``).
        balanced_l1.experiments.train.CheckpointMismatchError: when ``--resume`` finds another run's checkpoint
            or finished run record.
        balanced_l1.experiments.train.TrainingDivergedError: when a run's loss stops being finite.
    """
    started = time.perf_counter()
    ctx = setup_distributed(config.device)
    try:
        config.validate(ctx.world_size)
        splits = _load_data(config)
        if config.resume:
            _check_resumable(config, ctx)
        if ctx.is_main:  # a results.json left by an earlier run must not pass for this run's before it ends
            (config.out / "results.json").unlink(missing_ok=True)
        train_set = DetectionDataset(splits["train"])
        runs: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in config.arms}
        histories: dict[str, dict[int, list[dict[str, float]]]] = {arm: {} for arm in config.arms}
        for seed in config.seeds:
            for arm in config.arms:
                record = _run_one(config, ctx, splits, train_set, arm, seed)
                if record is not None:
                    runs[arm][seed] = record["metrics"]
                    histories[arm][seed] = record["history"]
        if not ctx.is_main:
            return None
        descriptions = {arm: get_arm(arm).description for arm in config.arms}
        summary = summarize(runs, BASELINE_ARM, descriptions)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
        results = {"config": {**settings, "world_size": ctx.world_size}, **summary}
        figures = save_figures(histories, summary, config.out)
        path = write_results(results, config.out)
        log(format_table(summary))
        log(f"wrote {path}, {', '.join(str(f) for f in figures)} in {time.perf_counter() - started:.0f} s")
        return results
    finally:
        teardown_distributed(ctx)
