"""Finished runs as trained models: their weights, :func:`load_trained_model`, and ``balanced-l1 evaluate``.

Each finished run of ``balanced-l1 compare`` writes its final weights beside its record, as a plain ``state_dict``
(``runs/<arm>_seed<s>_model.pt``, tensors on the CPU; ``torch.load(path, weights_only=True)`` reads it), and the
record names the number of classes and their COCO category ids. The settings are in ``OUT/config.toml``, written
before training starts. :func:`load_trained_model` rebuilds a run's detector from those two (TOML and JSON only;
the weights are read with ``weights_only=True``, so nothing in ``OUT`` can run code) and returns it in eval mode::

    from balanced_l1.experiments import load_trained_model

    model = load_trained_model("compare_out", "balanced_l1", seed=0)
    detections = model([image])  # image: float (3, H, W) in [0, 1]; labels are 1-based contiguous

:func:`evaluate_out` is ``balanced-l1 evaluate``: it scores every finished run of ``OUT`` again, on its held-out
split or on another one, after checking that each run is one of ``OUT/config.toml``'s settings and data (its
fingerprint, as ``--resume`` checks it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balanced_l1._files import UnreadableFileError, load_error_reason, open_regular_file, write_json_atomically
from balanced_l1.experiments.arm_specs import ArmSpec, ArmSpecError, expand_arms
from balanced_l1.experiments.config import (
    CompareConfig,
    ConfigError,
    check_out_folder,
    import_arm_modules,
    load_config_file,
    resolve,
)
from balanced_l1.experiments.data.coco_data import DataError
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.output_folder import check_outside_owned
from balanced_l1.experiments.run.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointMismatchError, state_dict_problem
from balanced_l1.experiments.run.runner import (
    build_arm_model,
    load_data,
    model_path,
    read_record,
    run_fingerprint,
)

CONFIG_NAME = "config.toml"


class RunsNotFoundError(ValueError):
    """``OUT`` has no finished run to load or evaluate (a bad argument: exit status 2)."""


class ArmModulesNotGivenError(ConfigError):
    """``OUT/config.toml`` names arm modules that the caller did not give (a bad argument: exit status 2).

    An output folder is data: it is shared, downloaded and unpacked from archives, so nothing it names is ever
    imported. The modules that register a run's own arms come from the caller (``--arm-modules``).
    """


def saved_config(out: str | os.PathLike[str], arm_modules: tuple[str, ...] = ()) -> CompareConfig:
    """The settings ``balanced-l1 compare`` wrote to ``OUT/config.toml`` (read as TOML, never executed).

    Nothing that the file names is imported: the modules that register the runs' own arms are the caller's
    ``arm_modules``, which must include every module the file names; they are imported here.

    Args:
        out: the output folder.
        arm_modules: the modules the caller trusts to register arms (``--arm-modules``).

    Returns:
        The settings, with ``arm_modules`` set to the caller's.

    Raises:
        ConfigError: if the file is missing or is not a settings file, a setting is out of its bounds (the checks of
            :meth:`~balanced_l1.experiments.config.CompareConfig.validate_settings`), or a given module fails to
            import.
        ArmModulesNotGivenError: if the file names arm modules that ``arm_modules`` does not include.
    """
    path = Path(out) / CONFIG_NAME
    if not path.exists():
        raise ConfigError(
            f"{path}: no such file; balanced-l1 compare writes it before training (runs of an older version "
            "have none: train them again)"
        )
    config = resolve([load_config_file(path)])
    missing = [name for name in config.arm_modules if name not in arm_modules]
    if missing:
        names = ",".join(missing)
        raise ArmModulesNotGivenError(
            f"{path} names arm modules that were not given: {', '.join(map(repr, missing))}; nothing an output "
            f"folder names is imported. If you trust them, give them: --arm-modules {names}"
        )
    import_arm_modules(arm_modules)
    config = replace(config, arm_modules=tuple(arm_modules))
    try:
        config.validate_settings()  # the checks a --config file's settings get, before any is used
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def arm_spec(name: str) -> ArmSpec:
    """The one arm ``name`` stands for (``balanced_l1``, ``balanced_l1(alpha=0.3)``; no grid).

    Raises:
        ConfigError: for an unknown arm, a bad spec or a grid.
    """
    try:
        specs = expand_arms((name,))
    except ArmSpecError as err:
        raise ConfigError(f"arm {name!r}: {err}") from None
    if len(specs) != 1:
        raise ConfigError(f"arm {name!r} is a grid of {len(specs)} arms; name one of them")
    return specs[0]


def _record_path(out: Path, spec: ArmSpec, seed: int) -> Path:
    return out / "runs" / f"{spec.file_stem}_seed{seed}.json"


MAX_CLASSES = 10_000
"""The most object classes a run record may name: a model of them is built before its weights are read. LVIS,
among the largest detection vocabularies, has 1203; a Faster R-CNN box head for 10 000 classes already holds
51 M parameters (1024 x 5 per class)."""


def _num_classes(record: dict[str, Any], path: Path) -> int:
    value = record.get("num_classes")
    if type(value) is not int or value < 1:
        raise CheckpointMismatchError(
            f"{path}: the record names no number of classes (written by a version that saved no model); "
            "train the run again"
        )
    if value > MAX_CLASSES:
        raise CheckpointMismatchError(
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
    """Raise CheckpointMismatchError unless the record's fingerprint is ``expected`` (the data's part only if
    ``data``)."""
    saved = dict(record["fingerprint"])
    if not data:
        saved.pop("data", None)
        expected = {k: v for k, v in expected.items() if k != "data"}
    differences = _differences(saved, expected)
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise CheckpointMismatchError(
            f"{path}: a run of other settings or data than {path.parent.parent / CONFIG_NAME}: {shown}. "
            "Evaluate it with the settings it was trained with, or move it out of the folder"
        )


def read_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A run's saved ``state_dict``, read with ``torch.load(weights_only=True)`` (a regular file of bounded size).

    Raises:
        CheckpointMismatchError: if it is missing, unreadable or not a mapping of names to tensors.
    """
    if not path.exists():
        raise CheckpointMismatchError(
            f"{path}: no such file; the run's weights are written when it finishes (a run finished by an older "
            "version has none: train it again)"
        )
    try:
        with open_regular_file(path, MAX_CHECKPOINT_BYTES, "model file", why="see MAX_CHECKPOINT_BYTES") as handle:
            state = torch.load(handle, map_location=device, weights_only=True)
    except UnreadableFileError as err:
        raise CheckpointMismatchError(str(err)) from None
    except Exception as err:  # torch raises many types for a damaged or crafted file; each becomes one error
        raise CheckpointMismatchError(f"{path}: not a readable state_dict ({load_error_reason(err)})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointMismatchError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return state


def rebuild_model(config: CompareConfig, spec: ArmSpec, num_classes: int) -> nn.Module:
    """The untrained detector of ``config`` with ``spec``'s arm, with the architecture the run trained (nothing is
    downloaded: a backbone started from ImageNet weights gets its frozen BatchNorm layers as torchvision's has)."""
    from balanced_l1.detection import models

    model = build_arm_model(config, num_classes, spec, weights_backbone="none")
    if config.weights_backbone != "none" and config.model in models._FROZEN_BN:
        backbone: nn.Module = model.backbone  # type: ignore[assignment]  # every model here is a Faster R-CNN
        models._freeze_batch_norm(backbone.body)  # type: ignore[arg-type]
    return model


def _load(
    config: CompareConfig, spec: ArmSpec, record: dict[str, Any], record_path: Path, device: torch.device
) -> nn.Module:
    state = torch.get_rng_state()  # building a model draws its random initial weights: leave the caller's stream
    try:
        model = rebuild_model(config, spec, _num_classes(record, record_path))
    finally:
        torch.set_rng_state(state)
    weights = model_path(record_path)
    saved = read_weights(weights, "cpu")
    problem = state_dict_problem(saved, model, "the weights")
    if problem is not None:
        raise CheckpointMismatchError(f"{weights}: does not fit the run's model: {problem}")
    try:
        model.load_state_dict(saved)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise CheckpointMismatchError(f"{weights}: does not fit the run's model ({first})") from None
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
        RunsNotFoundError: if the run has no record (it did not finish).
        CheckpointMismatchError: if the run belongs to other settings, or its record or weights cannot be read.
    """

    root = Path(out)
    config = saved_config(root, arm_modules)
    spec = arm_spec(arm)
    path = _record_path(root, spec, seed)
    if not path.exists():
        raise RunsNotFoundError(f"{path}: no finished run of arm {spec.name!r} and seed {seed} in {root}")
    record = read_record(path)
    check_fingerprint(record, run_fingerprint(config, {}, spec, seed), path, data=False)
    return _load(config, spec, record, path, torch.device(device))


def finished_runs(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every run record in ``OUT/runs`` (``*.json``), read and checked, in name order."""

    folder = out / "runs"
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [(path, read_record(path)) for path in paths]


def _run_key(record: dict[str, Any], path: Path) -> tuple[str, int]:
    arm, seed = record.get("arm"), record.get("seed")
    if not isinstance(arm, str) or type(seed) is not int:
        raise CheckpointMismatchError(f"{path}: the record names no arm and seed")
    return arm, seed


def _held_out(
    config: CompareConfig, splits: dict[str, DetectionSplit], val_ann: str | None, val_root: str | None
) -> tuple[DetectionSplit, str]:
    if val_ann is None:
        return splits["val"], "the runs' held-out split"
    from balanced_l1.experiments.data.coco_data import load_coco_split

    split = load_coco_split(val_ann, val_root, "val", follow_symlinks=config.follow_symlinks)  # type: ignore[arg-type]
    if split.category_ids != splits["train"].category_ids:
        raise DataError(
            f"{val_ann}: its category ids {split.category_ids} differ from the training split's "
            f"{splits['train'].category_ids}; the models predict the training split's categories"
        )
    return split, f"{val_ann} (images in {val_root})"


def check_destination(out: Path, dest: Path, config: CompareConfig, val_root: str | None = None) -> None:
    """Raise ConfigError unless ``evaluate`` may write into ``dest``: a folder (or one it can create) with a name
    that fits, outside the data folders (the runs' and ``val_root``) and outside what the comparison keeps in
    ``out`` (see :func:`~balanced_l1.experiments.output_folder.check_outside_owned`).

    Args:
        out: the comparison's output folder.
        dest: where ``evaluate`` writes.
        config: the comparison's settings (for its data folders).
        val_root: another held-out split's image folder, if one is given.

    Raises:
        ConfigError: naming ``--out`` and the reason.
    """
    check_out_folder("--out", str(dest), (*config.data_folders(), val_root), inside=len("/show"))
    check_outside_owned(out, dest)


def evaluate_out(
    out: str | os.PathLike[str],
    *,
    val_ann: str | None = None,
    val_root: str | None = None,
    show: int = 0,
    dest: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    arm_modules: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``balanced-l1 evaluate``: score every finished run of ``out`` again from its saved weights.

    Every run record in ``OUT/runs`` must carry the fingerprint that ``OUT/config.toml``'s settings and data give
    its arm and seed. Results go to ``dest/results.json`` (default ``OUT/evaluate/``), never to ``OUT/results.json``
    or a run record; the tables are those of ``compare``. With ``show`` > 0, ``dest/show/image<id>.png`` shows
    each of the first ``show`` images of the split with the ground truth and each arm's detections (its lowest
    finished seed).

    Args:
        out: the output folder of ``balanced-l1 compare``.
        val_ann: another held-out split's COCO annotation file (with ``val_root``); default: the runs' own.
        val_root: that split's image folder.
        show: how many images to draw.
        dest: where to write (default ``OUT/evaluate``).
        device: where the models run.
        progress: show a progress bar while predicting.
        log: where the tables go.
        arm_modules: the modules that register the runs' own arms (see :func:`saved_config`).

    Returns:
        The content of ``dest/results.json``.

    Raises:
        ConfigError: for a missing or bad ``config.toml``, or one naming arm modules not in ``arm_modules``; for a
            ``dest`` that is a file, lies under one, has too long a name, lies inside a data folder, is ``out`` itself
            or lies among the comparison's own files (checked before any work).
        RunsNotFoundError: when ``OUT`` holds no finished run.
        CheckpointMismatchError: for a run of other settings or data, or one whose record or weights cannot be read.
        DataError: for bad data (a ``ValueError``), or another split whose categories differ.
    """
    from balanced_l1.experiments.config import as_dict
    from balanced_l1.experiments.report.balance import format_balance_table, run_summary
    from balanced_l1.experiments.report.summary import ap_points, format_table, summarize
    from balanced_l1.experiments.report.verdict import compare_to_baseline, verdict_lines
    from balanced_l1.experiments.run.evaluate import evaluate_detector

    root = Path(out)
    target = Path(dest) if dest is not None else root / "evaluate"
    config = saved_config(root, arm_modules)
    check_destination(root, target, config, val_root)
    records = finished_runs(root)
    if not records:
        raise RunsNotFoundError(f"{root}: no finished run (no runs/*.json); train with balanced-l1 compare first")
    splits = load_data(config)
    runs: list[tuple[ArmSpec, int, Path, dict[str, Any]]] = []
    for path, record in records:
        name, seed = _run_key(record, path)
        try:
            spec = arm_spec(name)
        except ConfigError as err:
            raise CheckpointMismatchError(f"{path}: {err}") from None
        check_fingerprint(record, run_fingerprint(config, splits, spec, seed), path)
        if not model_path(path).exists():
            read_weights(model_path(path))  # names the missing file
        runs.append((spec, seed, path, record))
    order = [spec.name for spec in config.arm_specs()]
    runs.sort(key=lambda r: (order.index(r[0].name) if r[0].name in order else len(order), r[0].name, r[1]))
    split, where = _held_out(config, splits, val_ann, val_root)
    torch_device = torch.device(device)
    per_arm: dict[str, dict[int, dict[str, Any]]] = {}
    described: dict[str, str] = {}
    by_run: dict[str, Any] = {}
    first_models: dict[str, nn.Module] = {}
    for spec, seed, path, record in runs:
        model = _load(config, spec, record, path, torch_device)
        metrics = evaluate_detector(model, split, device=torch_device, workers=config.workers, show_progress=progress)
        assert metrics is not None  # one process
        per_arm.setdefault(spec.name, {})[seed] = {**metrics, **run_summary(record["gradient_balance"])}
        described[spec.name] = spec.description
        by_run[path.stem] = {
            "arm": spec.name,
            "seed": seed,
            "metrics": metrics,
            "metrics_recorded_by_training": record["metrics"] if val_ann is None else None,
        }
        if show > 0 and spec.name not in first_models:
            first_models[spec.name] = model
    baseline = next(iter(per_arm))
    summary = summarize(per_arm, baseline, described)
    verdicts = compare_to_baseline(ap_points(summary["arms"]), baseline)
    results = {
        "out": str(root),
        "split": where,
        "data": split.report,
        "config": as_dict(config),
        **summary,
        "verdict": [v.as_dict() for v in verdicts],
        "runs": by_run,
    }
    target.mkdir(parents=True, exist_ok=True)
    written = [write_json_atomically(results, target / "results.json")]
    if show > 0:
        from balanced_l1.experiments.report.pictures import save_image_pictures

        written += save_image_pictures(split, first_models, target / "show", torch_device, show)
    log(f"evaluated {len(runs)} finished run(s) of {root} on {where}:")
    log("\n".join([format_table(summary), *verdict_lines(verdicts)]))
    log("gradient balance, second half of training (mean over seeds):\n" + format_balance_table(summary["arms"]))
    shown = ", ".join(str(p) for p in written[:3]) + (f" and {len(written) - 3} more" if len(written) > 3 else "")
    log(f"wrote {shown}")
    return results
