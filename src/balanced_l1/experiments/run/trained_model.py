"""Finished runs as trained models: :func:`load_trained_model` rebuilds a run's detector and loads its weights.

Each finished run of ``balanced-l1 compare`` writes its final weights beside its record, as a plain ``state_dict``
(``runs/<arm>_seed<s>_model.pt``, tensors on the CPU; ``torch.load(path, weights_only=True)`` reads it), and the
record names the number of classes and their COCO category ids. The settings are in ``OUT/config.toml``, written
before training starts. :func:`load_trained_model` rebuilds a run's detector from those two (TOML and JSON only;
the weights are read with ``weights_only=True``, so nothing in ``OUT`` can run code) and returns it in eval mode::

    from balanced_l1.experiments import load_trained_model

    model = load_trained_model("compare_out", "balanced_l1", seed=0)
    detections = model([image])  # image: float (3, H, W) in [0, 1]; labels are 1-based contiguous
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.config import CompareConfig, arm_spec
from balanced_l1.experiments.output_folder.errors import RunMismatchError, RunsNotFoundError, UnreadableRunFileError
from balanced_l1.experiments.output_folder.files import read_record, read_weights, saved_config
from balanced_l1.experiments.output_folder.layout import CONFIG_NAME, RunFiles
from balanced_l1.experiments.run.checkpoint import state_dict_problem
from balanced_l1.experiments.run.runner import build_arm_model, run_fingerprint

MAX_CLASSES = 10_000
"""The most object classes a run record may name: a model of them is built before its weights are read. LVIS,
among the largest detection vocabularies, has 1203; a Faster R-CNN box head for 10 000 classes already holds
51 M parameters (1024 x 5 per class)."""


def _num_classes(record: dict[str, Any], path: Path) -> int:
    value = record.get("num_classes")
    if type(value) is not int or value < 1:
        raise UnreadableRunFileError(f"{path}: the record names no number of classes; delete it to train the run again")
    if value > MAX_CLASSES:
        raise UnreadableRunFileError(
            f"{path}: the record names {value} classes, over the limit of {MAX_CLASSES} (a model of them is built "
            "before its weights are read; see MAX_CLASSES); delete the record to train the run again"
        )
    return value


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """The keys where two fingerprints differ, as ``key (run: x, config.toml: y)``."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current), key=str):
            found += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return found
    if saved != current:
        return [f"{prefix[:-1]} (run: {json.dumps(saved)}, {CONFIG_NAME}: {json.dumps(current)})"]
    return []


def check_fingerprint(record: dict[str, Any], expected: dict[str, Any], path: Path, *, data: bool = True) -> None:
    """Raise RunMismatchError unless the record's fingerprint is ``expected`` (the data's part only if ``data``)."""
    saved = dict(record["fingerprint"])
    if not data:
        saved.pop("data", None)
        expected = {k: v for k, v in expected.items() if k != "data"}
    differences = _differences(saved, expected)
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise RunMismatchError(
            f"{path}: a run of other settings or data than {path.parent.parent / CONFIG_NAME}: {shown}. "
            "Evaluate it with the settings it was trained with, or move it out of the folder"
        )


def rebuild_model(config: CompareConfig, spec: ArmSpec, num_classes: int) -> nn.Module:
    """The untrained detector of ``config`` with ``spec``'s arm, with the architecture the run trained (nothing is
    downloaded: a backbone started from ImageNet weights gets its frozen BatchNorm layers as torchvision's has)."""
    from balanced_l1.detection import models

    model = build_arm_model(config, num_classes, spec, weights_backbone="none")
    if config.weights_backbone != "none" and config.model in models._FROZEN_BN:
        backbone: nn.Module = model.backbone  # type: ignore[assignment]  # every model here is a Faster R-CNN
        models._freeze_batch_norm(backbone.body)  # type: ignore[arg-type]
    return model


def load_run_model(
    config: CompareConfig, spec: ArmSpec, record: dict[str, Any], record_path: Path, device: torch.device
) -> nn.Module:
    """The detector of the finished run whose record is ``record`` (read from ``record_path``), with its final
    weights, on ``device`` in eval mode; the caller's torch random stream is left as it was.

    Raises:
        UnreadableRunFileError: if the record names no number of classes, or the weights cannot be read or do not
            fit the model.
    """
    state = torch.get_rng_state()  # building a model draws its random initial weights: leave the caller's stream
    try:
        model = rebuild_model(config, spec, _num_classes(record, record_path))
    finally:
        torch.set_rng_state(state)
    weights = RunFiles.of_record(record_path).model
    saved = read_weights(weights, "cpu")
    problem = state_dict_problem(saved, model, "the weights")
    if problem is not None:
        raise UnreadableRunFileError(f"{weights}: does not fit the run's model: {problem}")
    try:
        model.load_state_dict(saved)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise UnreadableRunFileError(f"{weights}: does not fit the run's model ({first})") from None
    return model.to(device).eval()


def load_trained_model(
    out: str | os.PathLike[str],
    arm: str,
    seed: int,
    *,
    device: str | torch.device = "cpu",
    arm_modules: tuple[str, ...] = (),
) -> nn.Module:
    """Rebuild a finished run's detector with its arm and load its final weights, ready for inference.

    The settings are read from ``OUT/config.toml`` and checked against the run record's fingerprint (the data are
    not hashed again here; ``balanced-l1 evaluate`` does that). Only TOML and JSON are parsed and the weights are
    read with ``torch.load(weights_only=True)``: nothing in ``OUT`` is executed, and nothing it names is imported
    (the modules that register arms of your own are given by you, as ``arm_modules``).

    Args:
        out: the output folder of ``balanced-l1 compare``.
        arm: the arm's name, e.g. ``"balanced_l1"`` or ``"balanced_l1(alpha=0.3)"``.
        seed: the run's seed.
        device: where the model is put.
        arm_modules: the modules that register the run's own arms, if ``OUT/config.toml`` names any; each must
            be given here, since nothing an output folder names is imported.

    Returns:
        The torchvision detector in eval mode; its labels are 1-based indices into the run's category ids
            (``runs/<arm>_seed<s>.json``, ``"category_ids"``).

    Raises:
        ConfigError: for a folder without ``config.toml``, or an arm that is not one.
        ArmModulesNotGivenError: if ``config.toml`` names arm modules not in ``arm_modules``.
        RunsNotFoundError: if the run has no record (it did not finish).
        RunMismatchError: if the run belongs to other settings.
        UnreadableRunFileError: if its record or weights cannot be read.
    """
    root = Path(out)
    config = saved_config(root, arm_modules)
    spec = arm_spec(arm)
    path = RunFiles.of(root, spec, seed).record
    if not path.exists():
        raise RunsNotFoundError(f"{path}: no finished run of arm {spec.name!r} and seed {seed} in {root}")
    record = read_record(path)
    check_fingerprint(record, run_fingerprint(config, {}, spec, seed), path, data=False)
    return load_run_model(config, spec, record, path, torch.device(device))
